"""Placement: striping maps from the registry's heap against a brute-force reference (sort every
eligible benefactor by room left after reservations), over random sequences of registrations,
maps with and without reservations, sessions ending, memory changes, heartbeats, deaths,
departures and removals. Plus the property the heap is for: concurrent writers spread, also when
their sessions bring their first maps."""

from __future__ import annotations

import os

import pytest
from conftest import ServicerContext
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from prometheus_client import CollectorRegistry

from memstage.errors import DeploymentFull
from memstage.manager.catalog import Catalog
from memstage.manager.registry import Registry, Stats
from memstage.manager.service import ManagerService
from memstage.proto import manager_pb2
from memstage.settings import ManagerSettings

MiB = 1024 * 1024
IDS = [f"b{i}" for i in range(6)]
CAPACITY = 64 * MiB


class Placement(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.registry = Registry(heartbeat_interval=1.0)
        self.reserved: dict[str, int] = {}  # reference
        self.sessions: list[dict[str, int]] = []

    def _eligible(self, exclude: set[str], min_free: int) -> list[str]:
        out = []
        for bf in IDS:
            rec = self.registry.get(bf)
            if rec is None or bf in exclude or rec.leaving or not self.registry.is_alive(bf, self.now):
                continue
            if rec.stats.free >= min_free:  # eligible by memory; reservations only order the choice
                out.append((self.reserved.get(bf, 0) - rec.stats.free, bf))
        return [bf for _, bf in sorted(out)]

    @rule(bf=st.sampled_from(IDS), used=st.integers(0, CAPACITY))
    def register(self, bf: str, used: int) -> None:
        self.registry.register(bf, "h:1", Stats(CAPACITY, used), self.now, incarnation=1)

    @rule(bf=st.sampled_from(IDS), used=st.integers(0, CAPACITY))
    def heartbeat(self, bf: str, used: int) -> None:
        self.registry.heartbeat(bf, Stats(CAPACITY, used), self.now)

    @rule(bf=st.sampled_from(IDS), delta=st.integers(-8 * MiB, 8 * MiB))
    def stored_or_freed(self, bf: str, delta: int) -> None:
        self.registry.note_used(bf, delta)

    @rule(width=st.integers(1, 4), exclude=st.sets(st.sampled_from(IDS), max_size=2),
          min_free=st.sampled_from([1, MiB, 16 * MiB]), reserve=st.sampled_from([0, MiB, 8 * MiB]))
    def striping_map(self, width: int, exclude: set[str], min_free: int, reserve: int) -> None:
        expected = self._eligible(exclude, min_free)[:width]
        got = [p.id for p in self.registry.striping_map(width, exclude, min_free, self.now, reserve)]
        assert got == expected
        if reserve:
            session = {bf: reserve for bf in got}
            for bf in got:
                self.reserved[bf] = self.reserved.get(bf, 0) + reserve
            self.sessions.append(session)

    @rule(data=st.data())
    def session_ends(self, data: st.DataObject) -> None:
        if not self.sessions:
            return
        session = self.sessions.pop(data.draw(st.integers(0, len(self.sessions) - 1)))
        self.registry.release(session)
        for bf, n in session.items():
            self.reserved[bf] -= n
            if self.reserved[bf] <= 0:
                del self.reserved[bf]

    @rule(dt=st.floats(0.0, 2.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    def sweep(self) -> None:
        self.registry.newly_dead(self.now)

    @rule(bf=st.sampled_from(IDS))
    def leaves(self, bf: str) -> None:
        rec = self.registry.get(bf)
        if rec is not None:
            rec.leaving = True

    @rule(bf=st.sampled_from(IDS))
    def removed(self, bf: str) -> None:
        self.registry.remove(bf)
        self.reserved.pop(bf, None)
        for session in self.sessions:
            session.pop(bf, None)

    @invariant()
    def live_ids_are_the_registered_not_declared_dead(self) -> None:
        expected = {bf for bf in IDS if (r := self.registry.get(bf)) is not None and not r.dead_reported}
        assert self.registry.live_ids() == expected
        assert sorted(self.registry.live_list()) == sorted(expected)


TestPlacement = Placement.TestCase
TestPlacement.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_concurrent_writers_spread_over_the_pool():
    """Equal benefactors: without reservations every writer got the same top 4. With them, 64
    writers asking at once (before any has stored anything) use every benefactor of 256, evenly."""
    r = Registry(heartbeat_interval=30.0)
    for i in range(256):
        r.register(f"b{i:03d}", "h:1", Stats(64 * 1024 * MiB, 0), 0.0, incarnation=1)
    used: dict[str, int] = {}
    for _ in range(64):
        for p in r.striping_map(4, set(), MiB, 1.0, reserve=8 * MiB):
            used[p.id] = used.get(p.id, 0) + 1
    assert len(used) == 256 and set(used.values()) == {1}



def test_a_session_opened_with_a_striping_request_brings_its_first_map(tmp_path):
    """OpenSession with `striping` hands out the map GetStripingMap would, with the same
    reservations (sessions opened at once spread); when nobody has room it gives the session
    without a map, and GetStripingMap says why. No sockets."""
    svc = ManagerService(ManagerSettings(state=str(tmp_path)), Catalog(str(tmp_path)), CollectorRegistry())
    ctx = ServicerContext()
    for i in range(8):
        svc.Register(manager_pb2.RegisterRequest(benefactor_id=f"b{i}", address=f"127.0.0.1:{i + 1}", incarnation=1,
                                                 receipt_key=os.urandom(32),
                                                 stats=manager_pb2.BenefactorStats(memory_capacity=CAPACITY)), ctx)
    ask = manager_pb2.StripingRequest(width=4, chunk_size=MiB)
    first, second = (svc.OpenSession(manager_pb2.OpenSessionRequest(namespace="ns", path=f"/{n}", striping=ask), ctx)
                     for n in "ab")
    one, two = ([loc.benefactor_id for loc in s.map.benefactors] for s in (first, second))
    assert len(one) == len(two) == 4 and set(one).isdisjoint(two), "reserved: the second session goes elsewhere"
    assert all(loc.address for loc in first.map.benefactors)
    session = svc.sessions.get(first.session)
    assert session is not None and session.benefactors == set(one) and set(session.reserved) == set(one)

    plain = svc.OpenSession(manager_pb2.OpenSessionRequest(namespace="ns", path="/c"), ctx)
    assert plain.session and not plain.HasField("map"), "no map unless asked for"

    huge = manager_pb2.StripingRequest(chunk_size=2 * CAPACITY)  # room on nobody
    full = svc.OpenSession(manager_pb2.OpenSessionRequest(namespace="ns", path="/d", striping=huge), ctx)
    assert full.session and not full.map.benefactors
    with pytest.raises(DeploymentFull, match="deployment full"):
        svc.GetStripingMap(manager_pb2.StripingRequest(namespace="ns", chunk_size=2 * CAPACITY,
                                                       session=full.session), ctx)
