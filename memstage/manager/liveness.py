"""Benefactor liveness: registration, leaving, heartbeats (direct, or applied from the heartbeat
process: beats_arrived, acks_arrived, beat_flags), order fetches, and the sweep that declares the
silent dead and voids what they held."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from memstage.chunks import ChunkKey
from memstage.errors import InvalidArgument, NotFound, PermissionDenied
from memstage.manager.beatlink import BeatLink
from memstage.manager.chunkindex import IndexKey
from memstage.manager.codec import Held
from memstage.manager.registry import MISSED_HEARTBEATS, Stats
from memstage.manager.state import State
from memstage.manager.wakes import Ack, Flags, Wake, wake_of
from memstage.proto import manager_pb2

log = logging.getLogger(__name__)

# Deaths wait while the heartbeat link has not gone round for this long (it may hold beats not applied).
BEAT_LINK_STALL = 5.0


class Joined(NamedTuple):
    interval: float
    heartbeat_port: int


class Left(NamedTuple):
    backlog_bytes: int = 0
    backlog_chunks: int = 0
    versions_lost: int = 0
    memory_only_dropped: int = 0


class Beat(NamedTuple):
    known: bool  # False: it was declared dead (it registers again)
    interval: float
    orders_waiting: int
    drain_waiting: bool
    heartbeat_port: int
    orders_last: int


def by_namespace(items: Sequence[tuple[IndexKey, int]]) -> dict[str, list[tuple[ChunkKey, int]]]:
    out: dict[str, list[tuple[ChunkKey, int]]] = defaultdict(list)
    for (ns, key), gen in items:
        out[ns].append((key, gen))
    return out


class Liveness:
    def __init__(self, state: State, repair: Callable[[], None]) -> None:
        self.s = state
        self.repair = repair  # a round of replication and stripe repair (see sweep)
        # Benefactors known before a restart get one TTL to register again; one that does not is
        # dead, and what only it held is lost (unless its drain finished on the PFS).
        self.started = state.clock()
        self.unheard: set[str] = set()
        catalog = state.catalog
        owners = catalog.drain_owners()
        state.drain_waiting |= owners - {""}  # tasks queued before a restart: their owners are told
        held = catalog.held_stats()
        for bf, _, _ in catalog.known_benefactors():
            if held.get(bf, (0, 0))[0] or bf in owners:
                self.unheard.add(bf)
            else:
                catalog.forget_benefactor(bf)

    def register(self, bf: str, address: str, incarnation: int, stats: Stats, capacity: int, receipt_key: bytes,
                 domain: str, held: Held, peer: str) -> Joined:
        if not bf or not address or not incarnation:
            raise InvalidArgument("register: benefactor_id, address and incarnation are required")
        with self.s.lock:
            rec = self.s.registry.get(bf)
            if rec is not None and rec.incarnation != incarnation and self.s.registry.is_alive(bf, self.s.clock()):
                # Its id belongs to the process that holds it while that one is alive: a second one
                # (a hijack, or two benefactors given one --id) waits until it stops or is declared dead.
                heard = self.s.clock() - rec.last_seen
                log.warning("registration of benefactor %s from %s refused: the id is alive at %s (heard %.1fs ago)",
                            bf, peer, rec.address, heard)
                raise PermissionDenied(f"benefactor id {bf} belongs to a live process at {rec.address} (heard "
                                       f"{heard:.1f}s ago); another may take it once that one stops or misses "
                                       f"{MISSED_HEARTBEATS} heartbeats")
        previous = rec.incarnation if rec is not None else self.s.catalog.incarnation(bf)
        if previous and previous != incarnation:
            self.void(bf, f"benefactor {bf} restarted before the version was drained; its memory was lost")
        with self.s.lock:
            self.s.registry.register(bf, address, stats, self.s.clock(), incarnation, receipt_key, domain)
            if previous != incarnation:
                self.s.orders.reset(bf)
            if self.s.beats is not None:
                self.s.beats.known(bf, incarnation, address, receipt_key)
            self.s.drain_flag_changed(bf)  # its flags follow (it starts with none there)
        self.s.catalog.remember_benefactor(bf, address, capacity, incarnation)
        self.s.known_addresses[bf] = address
        orphans = self.settle_held(bf, held)
        log.info("benefactor %s registered at %s (capacity %d, %d chunks held, %d of them orphans)",
                 bf, address, capacity, len(held), orphans)
        with self.s.lock:
            interval = self.s.registry.announce(self.s.clock())
        return Joined(interval, self._beat_port(interval))

    def _beat_port(self, interval: float) -> int:
        """The heartbeat process's port, for a reply that tells a benefactor `interval` (the process
        is told that period too). 0: none; benefactors beat to this port."""
        if self.s.beats is None:
            return 0
        self.s.beats.interval(interval)
        return self.s.beats.port

    def void(self, bf: str, reason: str, check_pfs: bool = True, leaving: bool = False
             ) -> tuple[list[tuple[str, str, int]], int]:
        """A benefactor died, left or came back as a new process: what it held is gone. Returns the
        versions lost, and how many of them the policy kept in memory only (counted when `leaving`:
        a benefactor stopped on purpose takes those with it as expected, so they are not reported
        one by one as losses)."""
        lost = self.s.catalog.void_benefactor(bf, self.s.alive_ids(), reason, check_pfs)
        with self.s.lock:
            self.s.loads.gone(bf)
        dropped = {v for v in lost if not self.s.catalog.persist_selected(*v)} if leaving else set()
        real = [v for v in lost if v not in dropped]
        # A warning only when something was lost: a normal stop voids what is drained or held elsewhere.
        log.log(logging.WARNING if real else logging.INFO, "benefactor %s: what it held is void (%s); %d versions "
                "lost%s", bf, reason, len(real), f", {len(dropped)} kept in memory only dropped" if dropped else "")
        for ns, path, version in real:
            log.error("%s:%s version %d is lost: %s", ns, path, version, reason)
        if lost:
            self.s.protection_changed()  # waiters for their protection are answered now
        return lost, len(dropped)

    def leave(self, bf: str, incarnation: int, done: bool) -> Left:
        with self.s.lock:
            rec = self.s.registry.get(bf)
            if rec is None or rec.incarnation != incarnation:
                raise NotFound(f"leave: benefactor {bf} is not registered as this process")
            rec.leaving = True
        if not done:
            nbytes, chunks = self.s.catalog.backlog_of(bf)
            return Left(backlog_bytes=nbytes, backlog_chunks=chunks)
        lost, memory_only = self.void(bf, f"benefactor {bf} was stopped before the version was drained",
                                      check_pfs=False, leaving=True)
        with self.s.lock:
            self.s.registry.remove(bf)
            self.s.orders.reset(bf)
        if self.s.beats is not None:
            self.s.beats.gone([bf])
        self.s.catalog.forget_benefactor(bf)
        log.info("benefactor %s left (%d versions lost, %d memory-only versions dropped)", bf,
                 len(lost) - memory_only, memory_only)
        return Left(versions_lost=len(lost) - memory_only, memory_only_dropped=memory_only)

    def settle_held(self, bf: str, held: Held) -> int:
        """Orders that make what a benefactor reports holding agree with the index: holds it missed
        (at the index's generation), then the end of sessions no longer open, then frees of copies
        no version locates there. Returns how many chunks were orphans."""
        hold, free = self.s.catalog.check_held(bf, [(ik, gen) for ik, gen, _ in held])
        sessions = {sid for _, _, sids in held for sid in sids}
        with self.s.lock:
            for ns, items in by_namespace(hold).items():
                self.s.orders.push(bf, ns, hold=items)
            self._end_sessions_over(bf, sessions)
            for ns, items in by_namespace(free).items():
                self.s.orders.push(bf, ns, free=items)
        return len(free)

    def _end_sessions_over(self, bf: str, sessions: Iterable[int]) -> None:
        """(under the lock) Chunks of sessions that are over (their end order got lost, or a
        straggler arrived later): the benefactor is told they ended."""
        for sid in sessions:
            if not self.s.sessions.is_open(sid):
                self.s.orders.push(bf, "", session=sid, end_session=True)

    def heartbeat(self, bf: str, incarnation: int, stats: Stats, sessions: Sequence[int]) -> Beat | None:
        """A heartbeat; None when the benefactor is not registered as this process."""
        arrived = self.s.clock()
        self.s.registry.heard(bf, incarnation, arrived)  # before waiting for the lock
        with self.s.lock:
            rec = self.s.registry.get(bf)
            if rec is None or rec.incarnation != incarnation:
                return None
            known = self.s.registry.heartbeat(bf, stats, arrived)
            interval = self.s.registry.announce(arrived)
            if known:
                self._end_sessions_over(bf, sessions)
            hint = self.s.orders.hint(bf)
            drains = bf in self.s.drain_waiting
        return Beat(known, interval, hint.waiting, drains, self._beat_port(interval), hint.last)

    # -- the heartbeat process (see beatlink) --------------------------------------------------
    def attach_beats(self, link: BeatLink) -> None:
        """From now on heartbeats may arrive through the heartbeat process, which is told where work waits."""
        with self.s.lock:
            self.s.beats = link
        self.follow_flags()
    def follow_flags(self) -> None:
        """Flags of work waiting are followed from now on: for the heartbeat process, or, without
        one, for the manager, which then wakes benefactors itself (see wakes_for)."""
        with self.s.lock:
            self.s.orders.follow()
            self.s.following = True

    def wakes_for(self, flags: list[Flags]) -> list[Wake]:
        """The wakes for flags beat_flags returned: benefactors given work, at their addresses."""
        with self.s.lock:
            out = []
            for flag in flags:
                rec = self.s.registry.get(flag[0])
                wake = wake_of(flag, rec.incarnation, rec.address, rec.receipt_key) if rec is not None else None
                if wake is not None:
                    out.append(wake)
            return out

    def beats_arrived(self, beats: Sequence[tuple[Any, ...]]) -> None:
        """Heartbeats the heartbeat process answered: as Heartbeat does, from when each arrived."""
        with self.s.lock:
            for bf, incarnation, arrived, stats, sessions in beats:
                rec = self.s.registry.get(bf)
                if rec is None or rec.incarnation != incarnation:
                    continue
                self.s.registry.heard(bf, incarnation, arrived)
                if self.s.registry.heartbeat(bf, Stats(*stats), arrived):
                    self._end_sessions_over(bf, sessions)
            interval = self.s.registry.announce(self.s.clock())
        self.s.metrics.calls.labels("Heartbeat").inc(len(beats))
        if self.s.beats is not None:
            self.s.beats.interval(interval)

    def beat_flags(self) -> list[Flags]:
        """Work waiting, for benefactors whose flags changed since the last call; with the orders
        waiting for those given orders since (the wake brings them)."""
        with self.s.lock:
            changed, pushed = self.s.orders.take_changes()
            changed |= self.s.drain_changed
            self.s.drain_changed, self.s.drain_new, new = set(), set(), pushed | self.s.drain_new
            return self._flags_of(changed, new, pushed)

    def _flags_of(self, benefactors: Iterable[str], new: set[str] | None = None,
                  pushed: set[str] | None = None) -> list[Flags]:
        """new: benefactors given work since the flags were last told; pushed: those given orders
        (None: all of them, both)."""
        out = []
        for bf in benefactors:
            rec = self.s.registry.get(bf)
            if rec is not None:
                notice = self.s.orders.notice(bf, pushed is None or bf in pushed)
                batch = b"" if notice.batch is None else manager_pb2.OrdersReply(
                    known=True, epoch=self.s.orders.epoch, orders=notice.batch).SerializeToString()
                out.append((bf, rec.incarnation, notice.waiting, bf in self.s.drain_waiting, new is None or bf in new,
                            batch, notice.last))
        return out

    def acks_arrived(self, acks: Sequence[Ack], sent: int = 0, failed: int = 0) -> None:
        """Orders benefactors carried out when a wake brought them: as the acknowledgement of a fetch.
        sent, failed: wakes since the last call."""
        if sent:
            self.s.metrics.wakes.labels("sent").inc(sent)
        if failed:
            self.s.metrics.wakes.labels("failed").inc(failed)
        with self.s.lock:
            for bf, incarnation, epoch, acked in acks:
                rec = self.s.registry.get(bf)
                if rec is not None and rec.incarnation == incarnation:
                    self.s.orders.ack(bf, epoch, acked)  # void unless numbered by this manager process

    def beat_snapshot(self) -> tuple[float, list[tuple[str, int, str, bytes]], list[Flags]]:
        """Everything a (re)started heartbeat process must know: the period, the live incarnations,
        and where work waits."""
        with self.s.lock:
            live = self.s.registry.live_ids()
            known = [(r.id, r.incarnation, r.address, r.receipt_key) for r in self.s.registry.records() if r.id in live]
            waiting = [bf for bf, _, _, _ in known if self.s.orders.waiting(bf) or bf in self.s.drain_waiting]
            return self.s.registry.announce(self.s.clock()), known, self._flags_of(waiting)

    def reconcile(self, bf: str, incarnation: int, held: Held) -> int:
        """The safety net: chunks a benefactor holds that no version locates are freed. Returns how many."""
        with self.s.lock:
            rec = self.s.registry.get(bf)
            if rec is None or rec.incarnation != incarnation:
                return 0
        orphans = self.settle_held(bf, held)
        if orphans:
            self.s.metrics.orphans.inc(orphans)
            log.warning("safety net: %d chunks on %s were held with no version locating them; freeing them",
                        orphans, bf)
        return orphans

    def fetch_orders(self, bf: str, incarnation: int, epoch: int, acked: int, memory_used: int | None
                     ) -> list[Any] | None:
        """The orders waiting for a benefactor, those it acknowledged (in this epoch) taken off;
        None when it is not registered as this process."""
        with self.s.lock:
            rec = self.s.registry.get(bf)
            if rec is None or rec.incarnation != incarnation:
                return None
            if memory_used is not None:
                self.s.registry.note_memory(bf, memory_used)
            return self.s.orders.fetch(bf, epoch, acked)

    def resumed(self, away: float) -> None:
        """The manager could not run for `away` seconds: no benefactor is judged by that silence."""
        with self.s.lock:
            self.s.registry.resumed(self.s.clock())
        log.warning("the manager could not run for %.1fs (paused or starved of CPU): benefactors get %.1fs "
                    "from now to be heard before any is declared dead", away, self.s.registry.ttl)

    def sweep(self) -> None:
        """Log benefactors that just passed their TTL, and end sessions whose lease ran out."""
        with self.s.lock:
            now = self.s.clock()
            # Beats the heartbeat process answered but the link has not applied yet would be missed.
            stalled = self.s.beats is not None and time.monotonic() - self.s.beats.last_pass > BEAT_LINK_STALL
            dead = [] if stalled else self.s.registry.newly_dead(now)
            expired = self.s.sessions.expired(now)
            for session in expired:
                self.s.end_orders(session, {})
        for session in expired:
            self.s.metrics.sessions_expired.inc()
            log.warning("write session of %s:%s expired (not renewed for %.0fs): its chunks are freed",
                        session.namespace, session.path, self.s.settings.session_lease)
        if dead and self.s.beats is not None:
            self.s.beats.gone([rec.id for rec in dead])
        for rec in dead:
            log.warning("benefactor %s (%s) missed %d heartbeats: declared dead", rec.id, rec.address, 3)
            self.void(rec.id, f"benefactor {rec.id} died (no heartbeat for {self.s.registry.ttl:.0f}s) before "
                              "the version was drained")
        if self.unheard and self.s.clock() - self.started > self.s.registry.ttl:
            with self.s.lock:
                gone, self.unheard = {bf for bf in self.unheard if self.s.registry.get(bf) is None}, set()
            for bf in gone:
                self.void(bf, f"benefactor {bf} did not come back after the manager restarted, before the "
                              "version was drained")
        if self.s.clock() - self.started <= self.s.registry.ttl:
            return  # benefactors are still registering again after a manager restart
        self.repair()
        # Drain tasks of benefactors that are gone (or that nobody could take) go to a live one.
        alive = self.s.alive_ids()
        if alive:
            for owner in self.s.catalog.drain_owners() - alive:
                if owner == "" or not self.s.is_alive(owner):
                    self.s.catalog.reassign_drains(owner, alive, "")

