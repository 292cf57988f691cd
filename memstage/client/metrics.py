"""The client's Prometheus counters (the names the README lists), on a registry the caller owns.

Served on the client's /metrics endpoint where one exists (the FUSE mount); a library user can
read them from Client.metrics_registry or register them with their own exporter.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from memstage.client.writer import WriteStats


class ClientMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter("memstage_client_bytes_written", "Bytes the application wrote into committed files",
                               ["namespace"], registry=registry)
        self.sent = Counter("memstage_client_bytes_sent", "Chunk bytes sent to benefactors", ["namespace"],
                            registry=registry)
        self.deduplicated = Counter("memstage_client_bytes_deduplicated",
                                    "Chunk bytes not sent because the namespace already held them", ["namespace"],
                                    registry=registry)
        self.degraded = Counter("memstage_client_degraded_reads",
                                "Chunk reads served by another copy or the PFS because the first location failed "
                                "or returned bytes that do not match the hash", ["namespace"], registry=registry)

    def record(self, namespace: str, stats: WriteStats) -> None:
        self.written.labels(namespace).inc(stats.bytes_written)
        self.sent.labels(namespace).inc(stats.bytes_sent)
        self.deduplicated.labels(namespace).inc(stats.bytes_deduplicated)
