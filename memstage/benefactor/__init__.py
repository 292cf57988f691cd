"""The benefactor: donates a fixed amount of memory, stores immutable chunks, serves them over gRPC."""
