"""The manager's metrics: what clients report at commit, plus the deployment's live state.

Histograms and client byte counters are updated at each commit (label `namespace`, never a per-file
label); benefactor liveness, memory, drain backlog and lost versions are read at scrape time from
the same snapshot `memstage status` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from memstage.metrics import BANDWIDTH_BUCKETS
from memstage.proto import manager_pb2


class ManagerMetrics:
    def __init__(self, registry: CollectorRegistry, status: Callable[[], manager_pb2.StatusReply],
                 per_benefactor: int = 256) -> None:
        self.oab = Histogram("memstage_oab_bytes_per_second",
                             "Observed application bandwidth per committed file: size / open..close",
                             ["namespace"], buckets=BANDWIDTH_BUCKETS, registry=registry)
        self.asb = Histogram("memstage_asb_bytes_per_second",
                             "Achieved storage bandwidth per committed file: size / open..all data acknowledged",
                             ["namespace"], buckets=BANDWIDTH_BUCKETS, registry=registry)
        self.written = Counter("memstage_client_bytes_written", "Bytes written by clients into committed files",
                               ["namespace"], registry=registry)
        self.sent = Counter("memstage_client_bytes_sent", "Chunk bytes clients sent to benefactors", ["namespace"],
                            registry=registry)
        self.deduplicated = Counter("memstage_client_bytes_deduplicated",
                                    "Chunk bytes clients did not send because the namespace held them",
                                    ["namespace"], registry=registry)
        self.commits = Counter("memstage_commits", "Versions committed", ["namespace"], registry=registry)
        self.errors = Counter("memstage_rpc_errors", "Manager calls that failed, by method and status code",
                              ["method", "code"], registry=registry)
        self.calls = Counter("memstage_rpc_calls", "Manager calls served, by method", ["method"], registry=registry)
        self.control_refused = Counter("memstage_control_refused",
                                       "Connections the control port refused, by reason (peer_uid: a process of "
                                       "another user on its Unix socket)", ["reason"], registry=registry)
        self.sessions_expired = Counter("memstage_write_sessions_expired",
                                        "Write sessions whose lease ran out (the writer died or lost the manager)",
                                        registry=registry)
        self.sessions_aborted = Counter("memstage_write_sessions_aborted", "Write sessions ended without a commit",
                                        registry=registry)
        self.drain_failures = Counter("memstage_drain_failures",
                                      "Versions whose drain was refused for good (e.g. a path the PFS refuses); "
                                      "they stay in memory", registry=registry)
        self.orphans = Counter("memstage_orphan_chunks_found",
                               "Chunks the safety-net reconcile found held with no version locating them (a bug "
                               "if it grows)", registry=registry)
        self.commits_refused = Counter("memstage_commits_refused",
                                       "Commits refused: a location without a valid receipt, or an ended session",
                                       ["namespace"], registry=registry)
        self.commit_conflicts = Counter("memstage_commit_conflicts",
                                        "Commits of a file by one of several writers that found a newer version "
                                        "than the one they built on (the writer merges and commits again)",
                                        ["namespace"], registry=registry)
        self.watching = Gauge("memstage_mounts_watching",
                              "Mounts caching attributes and names under the manager's lease (each change of "
                              "their namespace waits until they dropped what they cached of it)", registry=registry)
        self.unprotected = Gauge("memstage_chunks_unprotected",
                                 "Chunks still needed in memory with fewer live copies than their namespace's "
                                 "redundancy asks (being copied or rebuilt)", registry=registry)
        self.shared_domains = Gauge("memstage_copies_sharing_a_domain",
                                    "Copies ordered in the last repair round onto a failure domain that already "
                                    "holds the chunk, for lack of other domains with room", registry=registry)
        self.wakes = Counter("memstage_benefactor_wakes",
                             "Wake calls to benefactors whose orders or drain tasks wait, by result (failed: "
                             "the benefactor's work waits for its heartbeat instead; see the manager's log)",
                             ["result"], registry=registry)
        self.copies = Counter("memstage_chunk_copies", "Chunk copies made for replicas and rebuild, by result",
                              ["result"], registry=registry)
        self.prefetched = Counter("memstage_prefetch_bytes",
                                  "Bytes of persisted checkpoints loaded back into memory from the PFS (prefetch), "
                                  "by result", ["result"], registry=registry)
        self.quota_refused = Counter("memstage_quota_refused",
                                     "Write sessions and striping maps refused because a namespace is at its "
                                     "quota, by namespace and quota (memory, sessions)", ["namespace", "quota"],
                                     registry=registry)
        self.pfs_removed = Counter("memstage_pfs_bytes_removed",
                                   "Bytes freed on the PFS by removing chunk files of deleted versions, of "
                                   "checkpoints beyond pfs_keep, and of orphans (memstage gc)", registry=registry)
        self.stripes = Gauge("memstage_stripes", "Reed-Solomon stripes protecting chunks in memory (rs:K+M)",
                             registry=registry)
        self.stripe_members = Counter("memstage_stripe_members",
                                      "Stripe members computed by benefactors: new parity (encoded) or members "
                                      "rebuilt after a loss, by result", ["work", "result"], registry=registry)
        self.stripe_cpu = Counter("memstage_stripe_cpu_seconds",
                                  "CPU seconds benefactors spent encoding and rebuilding stripe members",
                                  registry=registry)
        self.stripe_missing = Gauge("memstage_stripe_members_missing",
                                    "Members of stripes still needed that have no live copy (the rebuild backlog)",
                                    registry=registry)
        registry.register(_LiveState(status, per_benefactor))

    def committed(self, namespace: str, size: int, stats: manager_pb2.ClientStats) -> None:
        self.commits.labels(namespace).inc()
        self.written.labels(namespace).inc(stats.bytes_written)
        self.sent.labels(namespace).inc(stats.bytes_sent)
        self.deduplicated.labels(namespace).inc(stats.bytes_deduplicated)
        if size > 0 and stats.oab_seconds > 0:
            self.oab.labels(namespace).observe(size / stats.oab_seconds)
        if size > 0 and stats.asb_seconds > 0:
            self.asb.labels(namespace).observe(size / stats.asb_seconds)


OTHERS = "(others)"  # the benefactor label of the series summing those beyond the per-benefactor bound


class _LiveState(Collector):
    """Live state read at scrape time. Per-benefactor series exist for at most `per_benefactor`
    benefactors, those that need looking at first (drain stuck, largest drain backlog, most memory
    in use); the others are summed into one series labelled benefactor="(others)" (the age of the
    oldest undrained chunk: its maximum), so sums over the label stay right at any scale."""

    def __init__(self, status: Callable[[], manager_pb2.StatusReply], per_benefactor: int = 256) -> None:
        self._status = status
        self._per_benefactor = per_benefactor

    def collect(self) -> Iterator[Metric]:
        reply = self._status()
        live = [b for b in reply.benefactors if b.alive]
        alive = GaugeMetricFamily("memstage_benefactors_alive", "Benefactors heartbeating within 3 intervals")
        alive.add_metric([], len(live))
        yield alive
        live.sort(key=lambda b: (not b.stats.drain_error, -b.drain_backlog_bytes, -b.stats.memory_used, b.id))
        shown, others = live[:self._per_benefactor], live[self._per_benefactor:]
        per_benefactor: list[tuple[str, str, Callable[[Any], float], Callable[[list[float]], float]]] = [
            ("memstage_memory_capacity_bytes", "Memory donated by a live benefactor",
             lambda b: b.stats.memory_capacity, sum),
            ("memstage_memory_used_bytes", "Donated memory in use on a live benefactor",
             lambda b: b.stats.memory_used, sum),
            ("memstage_drain_backlog_bytes", "Chunk bytes waiting to be drained to the PFS",
             lambda b: b.drain_backlog_bytes, sum),
            ("memstage_drain_oldest_undrained_seconds", "Age of the oldest chunk waiting to be drained",
             lambda b: b.oldest_undrained_age_seconds, max),
            ("memstage_drain_stuck", "1 while a benefactor cannot write to the PFS (full, read-only, ...)",
             lambda b: 1.0 if b.stats.drain_error else 0.0, sum),
        ]
        for name, help_text, value, combine in per_benefactor:
            family = GaugeMetricFamily(name, help_text, labels=["benefactor"])
            for b in shown:
                family.add_metric([b.id], float(value(b)))
            if others:
                family.add_metric([OTHERS], float(combine([value(b) for b in others])))
            yield family
        drained = CounterMetricFamily("memstage_drained_bytes", "Bytes a benefactor wrote to the PFS since it started",
                                      labels=["benefactor"])
        for b in shown:
            drained.add_metric([b.id], float(b.stats.drained_bytes))
        if others:
            drained.add_metric([OTHERS], float(sum(b.stats.drained_bytes for b in others)))
        yield drained
        lost = GaugeMetricFamily("memstage_versions_lost", "Versions a benefactor took with it before they drained")
        lost.add_metric([], len(reply.lost))
        yield lost
        stored = GaugeMetricFamily("memstage_namespace_stored_bytes", "Distinct chunk bytes held in memory",
                                   labels=["namespace"])
        on_pfs = GaugeMetricFamily("memstage_namespace_pfs_bytes", "Distinct chunk bytes of kept versions on the PFS",
                                   labels=["namespace"])
        committed = GaugeMetricFamily("memstage_namespace_versions", "Committed versions", labels=["namespace"])
        quota = GaugeMetricFamily("memstage_namespace_quota_memory_bytes", "A namespace's memory quota (namespaces "
                                  "with one)", labels=["namespace"])
        used = GaugeMetricFamily("memstage_namespace_quota_used_bytes", "What counts against a namespace's memory "
                                 "quota: distinct chunk bytes its in-memory versions need", labels=["namespace"])
        for n in reply.namespaces:
            stored.add_metric([n.namespace], float(n.bytes_stored))
            on_pfs.add_metric([n.namespace], float(n.bytes_on_pfs))
            committed.add_metric([n.namespace], float(n.versions))
            if n.quota_memory:
                quota.add_metric([n.namespace], float(n.quota_memory))
                used.add_metric([n.namespace], float(n.memory_used))
        yield stored
        yield on_pfs
        yield committed
        yield quota
        yield used
        states = GaugeMetricFamily("memstage_namespace_versions_by_protection",
                                   "Versions in memory by protection: protected (every chunk at its namespace's "
                                   "copies, or on the PFS), degraded (being rebuilt), lost",
                                   labels=["namespace", "state"])
        for n in reply.namespaces:
            states.add_metric([n.namespace, "protected"], float(n.versions_protected))
            states.add_metric([n.namespace, "degraded"], float(n.versions_degraded))
            states.add_metric([n.namespace, "lost"], float(n.versions_lost))
        yield states
