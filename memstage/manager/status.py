"""The status reply: what `memstage status` prints and /metrics exports, and the part of it a
namespace token may see."""

from __future__ import annotations

import time

from memstage.manager.access import Caller
from memstage.manager.state import State
from memstage.proto import manager_pb2
from memstage.redundancy import Redundancy


class Status:
    def __init__(self, state: State) -> None:
        self.s = state

    def seen_by(self, caller: Caller) -> manager_pb2.StatusReply:
        reply = self.reply()
        if not caller.admin:
            # A namespace token sees its own namespaces, and of the deployment only the totals it
            # needs (room left): no benefactor addresses, no paths, no deployment id.
            for name in ("namespaces", "lost", "drain_failed"):
                kept = [x for x in getattr(reply, name) if caller.sees(x.namespace)]
                del getattr(reply, name)[:]
                getattr(reply, name).extend(kept)
            del reply.benefactors[:]
            reply.state_dir = reply.deployment = ""
        return reply

    def reply(self) -> manager_pb2.StatusReply:
        """What `memstage status` prints and /metrics exports, read from live state: what the manager
        itself knows as of now (chunks committed there, backlog, bytes drained since it started),
        the benefactor's last heartbeat for the rest (capacity, uncommitted data, PFS errors)."""
        backlog = self.s.catalog.backlog()
        held = self.s.catalog.held_stats()
        wall = time.time()
        with self.s.lock:
            now = self.s.clock()
            live = self.s.registry.live_ids()  # as commits and lookups see it (a death counts once swept)
            rows = []
            for r in sorted(self.s.registry.records(), key=lambda r: r.id):
                b = backlog.get(r.id)
                chunks, nbytes = held.get(r.id, (0, 0))
                rows.append(manager_pb2.BenefactorStatus(
                    id=r.id, address=r.address, alive=r.id in live,
                    stats=manager_pb2.BenefactorStats(
                        memory_capacity=r.stats.memory_capacity, memory_used=max(r.stats.memory_used, nbytes),
                        drain_backlog=b.bytes if b else 0, chunk_count=chunks,
                        drain_error=r.stats.drain_error, drained_bytes=self.s.drained.get(r.id, 0)),
                    last_heartbeat_age_seconds=now - r.last_seen,
                    drain_backlog_bytes=b.bytes if b else 0,
                    oldest_undrained_age_seconds=wall - b.oldest_queued_at if b and b.oldest_queued_at else 0.0))
        alive_ids = {r.id for r in rows if r.alive}
        namespaces = []
        draining = self.s.catalog.backlog_by_namespace()
        for n in self.s.catalog.namespaces():
            redundancy = self.s.catalog.policy(n.namespace).redundancy
            protected, degraded, lost_versions = self.s.catalog.protection(
                n.namespace, Redundancy.parse(redundancy), alive_ids)
            namespaces.append(manager_pb2.NamespaceStatus(
                namespace=n.namespace, files=n.files, versions=n.versions, bytes_committed=n.bytes_committed,
                bytes_stored=n.bytes_stored, bytes_on_pfs=n.bytes_on_pfs, redundancy=redundancy,
                quota_memory=self.s.catalog.policy(n.namespace).quota_memory,
                memory_used=self.s.catalog.memory_bytes(n.namespace),
                versions_protected=protected,
                versions_degraded=degraded, versions_lost=lost_versions,
                drain_backlog_bytes=draining.get(n.namespace, 0)))
        lost = [manager_pb2.VersionRef(namespace=ns, path=p, version=v, reason=r)
                for ns, p, v, r in self.s.catalog.lost_versions()]
        undrainable = [manager_pb2.VersionRef(namespace=ns, path=p, version=v, reason=r)
                       for ns, p, v, r in self.s.catalog.undrainable_versions()]
        with self.s.lock:
            w = self.s.stripe_work
            repair = manager_pb2.RepairStatus(
                chunks_unprotected=self.s.unprotected + w.unprotected, stripes=self.s.catalog.stripe_count(),
                members_missing=w.missing, in_flight=self.s.replicator.in_flight + w.in_flight,
                copies_made=self.s.replicator.copies_made, members_encoded=w.encoded, members_rebuilt=w.rebuilt,
                bytes_made=w.bytes_made + self.s.copied_bytes, stripe_cpu_seconds=w.cpu_seconds)
        alive_rows = [r for r in rows if r.alive]
        return manager_pb2.StatusReply(benefactors=rows, namespaces=namespaces, lost=lost, repair=repair,
                                       insecure=self.s.access.insecure, benefactors_alive=len(alive_rows),
                                       memory_capacity=sum(r.stats.memory_capacity for r in alive_rows),
                                       memory_used=sum(r.stats.memory_used for r in alive_rows),
                                       heartbeat_interval_seconds=self.s.registry.interval(),
                                       state_dir=self.s.settings.state, deployment=self.s.catalog.deployment_id,
                                       drain_failed=undrainable)
