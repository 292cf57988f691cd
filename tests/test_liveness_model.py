"""The registry's liveness judgment against a simple reference model, over random sequences of
heartbeat arrivals, heartbeats processed late (behind a busy lock), sweeps, manager stalls and
re-registrations. No sockets, no clock: time is an argument.

What must hold: a benefactor is declared dead exactly when, at a sweep, nothing from it arrived
for longer than the TTL while the manager was running; a heartbeat counts from its arrival, however
late it is processed; a declared-dead benefactor must register again; after a stall every benefactor
gets a full TTL."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from memstage.manager.registry import Registry, Stats

INTERVAL = 1.0
TTL = 3 * INTERVAL
IDS = ["a", "b", "c"]


class Liveness(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.registry = Registry(heartbeat_interval=INTERVAL)
        self.incarnation = dict.fromkeys(IDS, 1)
        self.heard = dict.fromkeys(IDS, 0.0)  # model: last arrival (or registration)
        self.dead: set[str] = set()  # model: declared dead, not registered since
        self.awake = float("-inf")
        self.queue: list[tuple[str, int, float]] = []  # heartbeats that arrived, not processed yet
        for bf in IDS:
            self.registry.register(bf, "h:1", Stats(100, 0), 0.0, incarnation=1)

    @rule(dt=st.floats(0.0, 2.5))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(bf=st.sampled_from(IDS))
    def heartbeat_arrives(self, bf: str) -> None:
        inc = self.incarnation[bf]
        self.registry.heard(bf, inc, self.now)
        self.queue.append((bf, inc, self.now))
        if bf not in self.dead:
            self.heard[bf] = self.now

    @rule()
    def heartbeat_processed(self) -> None:
        if not self.queue:
            return
        bf, inc, arrived = self.queue.pop(0)
        known = self.registry.heartbeat(bf, Stats(100, 0), arrived)
        assert known == (bf not in self.dead and arrived - max(self.heard[bf], self.awake) <= TTL)
        if not known:  # the benefactor registers again (same process)
            self.registry.register(bf, "h:1", Stats(100, 0), self.now, incarnation=inc)
            self.dead.discard(bf)
            self.heard[bf] = self.now

    @rule(bf=st.sampled_from(IDS))
    def restarts(self, bf: str) -> None:
        self.incarnation[bf] += 1
        self.registry.register(bf, "h:2", Stats(100, 0), self.now, incarnation=self.incarnation[bf])
        self.dead.discard(bf)
        self.heard[bf] = self.now

    @rule(away=st.floats(0.0, 20.0))
    def manager_stalls(self, away: float) -> None:
        self.now += away
        self.registry.resumed(self.now)
        self.awake = self.now

    @rule()
    def sweep(self) -> None:
        declared = {r.id for r in self.registry.newly_dead(self.now)}
        expected = {bf for bf in IDS if bf not in self.dead and self.now - max(self.heard[bf], self.awake) > TTL}
        assert declared == expected
        self.dead |= declared

    @invariant()
    def alive_set_matches(self) -> None:
        alive = {r.id for r in self.registry.alive(self.now)}
        assert alive == {bf for bf in IDS if bf not in self.dead
                         and self.now - max(self.heard[bf], self.awake) <= TTL}


TestLiveness = Liveness.TestCase
TestLiveness.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_the_heartbeat_period_stretches_with_the_deployment_and_the_ttl_follows():
    """At most max_rate heartbeats per second: 100 benefactors at 10/s beat every 10 s (not 1 s),
    and are dead after 30 s. When the deployment shrinks, the TTL stays long until every benefactor
    had a beat to hear the shorter period."""
    r = Registry(heartbeat_interval=1.0, max_rate=10.0)
    for i in range(5):
        r.register(f"b{i}", "h:1", Stats(100, 0), 0.0, incarnation=1)
    assert r.announce(0.0) == 1.0 and r.ttl == 3.0  # small: the configured period
    for i in range(5, 100):
        r.register(f"b{i}", "h:1", Stats(100, 0), 0.0, incarnation=1)
    assert r.announce(0.0) == 10.0 and r.ttl == 30.0
    assert r.is_alive("b0", 29.0) and not r.is_alive("b0", 31.0)
    for i in range(50, 100):
        r.remove(f"b{i}")
    assert r.interval() == 5.0
    assert r.announce(1.0) == 5.0 and r.ttl == 30.0  # some still beat every 10 s
    assert r.announce(12.0) == 5.0 and r.ttl == 15.0  # 10 s later all have heard 5 s
