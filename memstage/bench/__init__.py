"""`memstage bench`: throughput of a local deployment against baselines measured in the same run."""
