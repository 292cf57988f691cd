"""Write sessions: opening (within the namespace's session quota), renewing, aborting, releasing
chunks a writer no longer needs, and striping maps that reserve room on benefactors."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from memstage.chunks import ChunkKey
from memstage.errors import DeploymentFull, QuotaExceeded, Unavailable
from memstage.manager.access import Caller
from memstage.manager.registry import Placement
from memstage.manager.sessions import Session
from memstage.manager.state import State
from memstage.units import format_size

log = logging.getLogger(__name__)

# A striping map reserves room for this many chunks on each benefactor it names, until its session
# ends: enough that the next writers get other benefactors while this one fills its own.
RESERVED_CHUNKS = 8


class Ask(NamedTuple):
    """What a writer asks of a striping map."""

    chunk_size: int
    width: int = 0  # 0: the deployment's stripe width
    exclude: frozenset[str] = frozenset()


class Opened(NamedTuple):
    session: int
    lease: float
    grant: str
    placements: list[Placement]


class Writes:
    def __init__(self, state: State) -> None:
        self.s = state

    def open(self, namespace: str, path: str, ask: Ask | None, caller: Caller) -> Opened:
        placements: list[Placement] = []
        policy = self.s.catalog.policy(namespace)
        with self.s.lock:
            if policy.quota_sessions and len(self.s.sessions.of(namespace)) >= policy.quota_sessions:
                self.s.metrics.quota_refused.labels(namespace, "sessions").inc()
                raise QuotaExceeded(f"namespace {namespace} has {policy.quota_sessions} write sessions open, its "
                                    "quota (quota_sessions): close files before opening more")
            session = self.s.sessions.open(namespace, path, self.s.clock())
            if ask is not None:  # the first map with the session: a call less per file
                try:
                    placements, _ = self._place(session, ask)
                except QuotaExceeded:
                    self.s.sessions.end(session.id)
                    raise
        grant = self.s.access.grant(namespace, True, caller, self._session_cap(namespace))
        return Opened(session.id, self.s.sessions.lease, grant, placements)

    def renew(self, sids: Sequence[int], caller: Caller) -> tuple[list[bool], list[str]]:
        """Which sessions are still open, and a fresh grant for each ("" for one that is not)."""
        with self.s.lock:
            now = self.s.clock()
            alive = [self.s.sessions.renew(sid, now) for sid in sids]
            spaces = [s.namespace if (s := self.s.sessions.get(sid)) is not None else "" for sid in sids]
        return alive, [self.s.access.grant(ns, True, caller, self._session_cap(ns)) if ns else "" for ns in spaces]

    def abort(self, sid: int) -> None:
        with self.s.lock:
            session = self.s.sessions.end(sid)
            if session is not None:
                self.s.end_orders(session, {})
        if session is not None:
            self.s.metrics.sessions_aborted.inc()
            log.info("write of %s:%s aborted: its chunks are freed", session.namespace, session.path)

    def release(self, sid: int, namespace: str, by_bf: Mapping[str, list[ChunkKey]]) -> None:
        """Chunks the session stored that its writer no longer needs are freed where it put them."""
        with self.s.lock:
            session = self.s.sessions.get(sid)
            if session is not None and session.namespace == namespace:  # else its end freed them already
                for bf, keys in by_bf.items():
                    if bf in session.benefactors:
                        self.s.orders.push(bf, namespace, session=session.id, release=keys)

    def striping_map(self, sid: int, namespace: str, ask: Ask) -> list[Placement]:
        with self.s.lock:
            placements, alive = self._place(self.s.session(sid, namespace), ask)
        if not placements:
            if alive == 0:
                raise Unavailable("no live benefactors are registered with the manager")
            raise DeploymentFull(f"deployment full: none of the {alive} live benefactors has room "
                                 f"for a {ask.chunk_size}-byte chunk (excluded: {len(ask.exclude)})")
        return placements

    def _place(self, session: Session, ask: Ask) -> tuple[list[Placement], int]:
        """(under the lock) A striping map for the session, with room reserved on its benefactors;
        and how many benefactors are alive. QuotaExceeded if the namespace's memory quota has no room
        for the reservation: what its in-memory versions need plus what its open sessions reserved."""
        reserve = ask.chunk_size * RESERVED_CHUNKS
        quota = self.s.catalog.policy(session.namespace).quota_memory
        if quota and (used := self.s.catalog.memory_bytes(session.namespace)) >= quota:
            self.s.metrics.quota_refused.labels(session.namespace, "memory").inc()
            raise QuotaExceeded(f"namespace {session.namespace} is at its memory quota: {format_size(used)} of "
                                f"{format_size(quota)} (quota_memory) in memory; older checkpoints leave memory as "
                                "they drain (keep_versions)")
        placements = self.s.registry.striping_map(ask.width or self.s.settings.stripe_width, set(ask.exclude),
                                                  ask.chunk_size, self.s.clock(), reserve)
        session.benefactors.update(p.id for p in placements)
        for p in placements:
            session.reserved[p.id] = session.reserved.get(p.id, 0) + reserve
        return placements, self.s.registry.live_count()

    def _session_cap(self, namespace: str) -> int:
        """What a write session of the namespace may hold uncommitted on each benefactor: the room
        its memory quota has left (0: no quota). Benefactors refuse a Put beyond it, so sessions
        that are renewed and never committed cannot fill the deployment."""
        quota = self.s.catalog.policy(namespace).quota_memory
        return max(quota - self.s.catalog.memory_bytes(namespace), 1) if quota else 0
