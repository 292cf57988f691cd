"""Protection rules (manager.protection) and stripe spread (manager.stripes.spread): plain data in,
verdicts out. No sockets, no catalog."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memstage.chunks import ChunkKey
from memstage.manager import protection as p
from memstage.manager.stripes import Copies, Stripe, beyond, recoverable, spread
from memstage.redundancy import Redundancy

R2 = Redundancy.parse("replicate:2")
RS = Redundancy.parse("rs:2+1")
NONE = Redundancy.parse("none")


def test_a_drained_chunk_needs_nothing_more():
    assert not p.chunk_short(R2, True, 0, [])
    assert not p.chunk_short(RS, True, 0, [False])


def test_replicas_count_live_copies():
    assert p.chunk_short(R2, False, 1, [])
    assert not p.chunk_short(R2, False, 2, [])
    assert not p.chunk_short(NONE, False, 1, [])


def test_parity_asks_for_one_whole_stripe_and_reads_stripes_lazily():
    assert p.chunk_short(RS, False, 5, [])
    assert p.chunk_short(RS, False, 5, [False, False])

    def stripes():
        yield False
        yield True
        raise AssertionError("read past the first whole stripe")

    assert not p.chunk_short(RS, False, 0, stripes())


def test_version_states_and_tally():
    assert p.version_state(True, True, False) == p.LOST
    assert p.version_state(False, True, True) == p.PROTECTED
    assert p.version_state(False, False, True) == p.DEGRADED
    assert p.settled(False, False) is None
    assert p.tally([p.LOST, p.DEGRADED, p.PROTECTED, p.PROTECTED]) == (2, 1, 1)


def test_checkpoint_states():
    assert p.checkpoint_state(True, True, True, True) == p.LOST
    assert p.checkpoint_state(False, True, True, False) == p.PERSISTED
    assert p.checkpoint_state(False, False, True, True) == p.DRAINING
    assert p.checkpoint_state(False, False, False, True) == p.IN_MEMORY
    assert p.checkpoint_state(False, False, False, False) == p.DROPPED
    assert p.may_be_protected(p.IN_MEMORY, R2)
    assert not p.may_be_protected(p.IN_MEMORY, NONE)
    assert not p.may_be_protected(p.DRAINING, RS)


def test_spread_counts_absent_and_drained_data_members_readable():
    members = [Copies(False, True, ()), Copies(True, False, ()), Copies(False, True, ())]  # k=2: 3rd is parity
    assert spread(2, members, {"a"}) == (2, [2])


def test_spread_rebuilds_a_member_sharing_its_only_benefactor():
    members = [Copies(False, False, {"a"}), Copies(False, False, {"a"}), Copies(False, False, {"b", "dead"})]
    assert spread(2, members, {"a", "b"}) == (3, [1])


def test_beyond_and_recoverable():
    key = ChunkKey(b"\1" * 16, 10)
    stripe = Stripe(1, "ns", 2, 1, 10, (key, key, key))
    assert recoverable(stripe, 2) and not recoverable(stripe, 1)
    assert "has 1 of its 3 members left, 2 are needed" in beyond(stripe, key, 1)


BFS = ["a", "b", "c", "d"]
member = st.builds(Copies, st.booleans(), st.booleans(), st.sets(st.sampled_from(BFS), max_size=3))


@settings(max_examples=300, deadline=None)
@given(k=st.integers(1, 4), members=st.lists(member, min_size=1, max_size=7), alive=st.sets(st.sampled_from(BFS)))
def test_spread_against_a_reference(k, members, alive):
    """Every member is readable or to rebuild (some both: readable but sharing a benefactor), and
    the members kept are on pairwise distinct live benefactors."""
    readable, rebuild = spread(k, members, alive)
    off = [i for i, m in enumerate(members) if m.absent or (i < k and m.drained)]
    live = [i for i, m in enumerate(members) if i not in off and set(m.holders) & alive]
    assert readable == len(off) + len(live)
    dead = [i for i in range(len(members)) if i not in off and i not in live]
    assert set(dead) <= set(rebuild) and not set(off) & set(rebuild)
    kept = [i for i in live if i not in rebuild]
    # A greedy matching of kept members to distinct benefactors exists (the one spread made).
    used: set[str] = set()
    for i in kept:
        free = (set(members[i].holders) & alive) - used
        assert free
        used.add(min(free))
