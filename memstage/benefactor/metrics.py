"""A benefactor's own metrics: its memory, what it received and refused, what it drained."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from memstage.benefactor.store import ChunkStore


class BenefactorMetrics:
    def __init__(self, registry: CollectorRegistry, store: ChunkStore, drained: Callable[[], tuple[int, bool]]) -> None:
        self.received = Counter("memstage_benefactor_received_bytes", "Chunk bytes received and stored",
                                registry=registry)
        self.served = Counter("memstage_benefactor_served_bytes", "Chunk bytes read from this benefactor's memory "
                              "(by clients, and by benefactors copying or encoding)", registry=registry)
        self.refused = Counter("memstage_benefactor_refused_chunks", "Chunks refused, by reason", ["reason"],
                               registry=registry)
        registry.register(_Live(store, drained))


class _Live(Collector):
    def __init__(self, store: ChunkStore, drained: Callable[[], tuple[int, bool]]) -> None:
        self._store = store
        self._drained = drained

    def collect(self) -> Iterator[Metric]:
        drained, stuck = self._drained()
        for name, help_text, value in (
            ("memstage_memory_capacity_bytes", "Memory this benefactor donates", self._store.capacity),
            ("memstage_memory_used_bytes", "Donated memory in use", self._store.used),
            ("memstage_chunks", "Chunks held in memory", len(self._store)),
            ("memstage_drain_stuck", "1 while draining to the PFS fails (full, read-only, ...)", int(stuck)),
        ):
            family = GaugeMetricFamily(name, help_text)
            family.add_metric([], float(value))
            yield family
        total = CounterMetricFamily("memstage_drained_bytes", "Bytes written to the PFS since start")
        total.add_metric([], float(drained))
        yield total
