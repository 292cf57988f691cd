"""Loads (prefetch bookkeeping) against a simple model, socket-free: random sequences of prefetch
rounds, reports (on time, late, failed), deadlines and benefactor deaths. Invariants: a chunk is
never ordered while a load of it is pending, no benefactor is given more than its room in one
round, every chunk ends loaded or failed once its reports are in, and a late report counts for
nothing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memstage.chunks import ChunkKey
from memstage.manager.loads import DEADLINE_S, Loads

CHUNKS = [("ns", ChunkKey(bytes([i]) * 16, 1 + i)) for i in range(8)]
BENEFACTORS = ["a", "b", "c"]

events = st.lists(st.one_of(
    st.tuples(st.just("plan"), st.dictionaries(st.sampled_from(BENEFACTORS), st.integers(0, 20), min_size=1)),
    st.tuples(st.just("report"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("late"), st.integers(0, 7)),
    st.tuples(st.just("tick"), st.floats(0, 2 * DEADLINE_S)),
    st.tuples(st.just("dies"), st.sampled_from(BENEFACTORS)),
    st.tuples(st.just("retry"),),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(events)
def test_loads_follow_the_model(script):
    loads = Loads()
    now = 0.0
    gen = 0
    pending: dict = {}  # model: chunk -> (benefactor, gen, deadline)
    failed: set = set()
    loaded: set = set()
    orders: list = []  # every order given: (chunk, benefactor, gen)
    for event in script:
        kind = event[0]
        if kind == "plan":
            free = event[1]
            for ik in [ik for ik, (_, _, d) in pending.items() if d <= now]:
                del pending[ik]
            loads.expire(now)
            wanted = [(ik, "f") for ik in CHUNKS if ik not in loaded]
            plan = loads.plan(wanted, free, now)
            given_bytes: dict[str, int] = {}
            for ik, target, _ in plan:
                assert ik not in pending and ik not in failed, "ordered twice or after failing"
                given_bytes[target] = given_bytes.get(target, 0) + ik[1].length
                gen += 1
                loads.started(ik, target, gen, now)
                pending[ik] = (target, gen, now + DEADLINE_S)
                orders.append((ik, target, gen))
            for target, used in given_bytes.items():
                assert used <= free[target], "more given than the room a benefactor has"
            for ik, _ in wanted:
                if ik not in pending and ik not in failed and ik not in {p[0] for p in plan}:
                    # not planned: no single benefactor had room for it, and that is said
                    assert ik in loads.failed
                    failed.add(ik)
        elif kind == "report" and pending:
            ik = sorted(pending, key=CHUNKS.index)[event[1] % len(pending)]
            target, g, _ = pending.pop(ik)
            assert loads.finished(ik, target, g, "" if event[2] else "disk error")
            (loaded if event[2] else failed).add(ik)
        elif kind == "late" and orders:
            ik, target, g = orders[event[1] % len(orders)]
            if pending.get(ik, ("", 0))[:2] != (target, g):
                assert not loads.finished(ik, target, g, ""), "a late report was counted"
        elif kind == "tick":
            now += event[1]
        elif kind == "dies":
            loads.gone(event[1])
            pending = {ik: p for ik, p in pending.items() if p[0] != event[1]}
        elif kind == "retry":
            loads.retry(CHUNKS)
            failed.clear()
        assert set(loads.pending) == set(pending)
        assert set(loads.failed) == failed
    assert loads.loaded_bytes == sum(ik[1].length for ik in loaded)
