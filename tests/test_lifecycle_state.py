"""Socket-free tests of the chunk lifecycle's state: the benefactor's ChunkStore ownership, the
manager's ChunkIndex, SessionTable and OrderQueues; model-based tests run random event sequences
against a simple reference model."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from memstage.benefactor.arena import BLOCK_SIZE
from memstage.benefactor.orders import apply_order
from memstage.benefactor.store import ChunkStore
from memstage.chunks import ChunkKey
from memstage.manager.chunkindex import ChunkIndex
from memstage.manager.orders import OrderQueues
from memstage.manager.sessions import SessionTable

CHUNKS = [os.urandom(BLOCK_SIZE) for _ in range(4)]
KEYS = [("ns", ChunkKey.of(c)) for c in CHUNKS]


class ChunkStoreOwnership(RuleBasedStateMachine):
    """Events as a benefactor sees them: puts by sessions, and the manager's orders in any order.
    The model: a chunk stays while some session has an unreleased put of it or a hold is on it."""

    def __init__(self) -> None:
        super().__init__()
        self.store = ChunkStore((len(CHUNKS) + 1) * BLOCK_SIZE, prefault=False)  # room to receive a duplicate
        self.pins: dict[int, dict[int, int]] = {i: {} for i in range(len(KEYS))}  # chunk -> session -> puts
        self.gen: dict[int, int] = {i: 0 for i in range(len(KEYS))}

    def present(self, i: int) -> bool:
        return bool(self.pins[i]) or bool(self.gen[i])

    @rule(i=st.integers(0, 3), session=st.integers(1, 3))
    def put(self, i: int, session: int) -> None:
        assert self.store.reserve(len(CHUNKS[i]))
        self.store.put_reserved(KEYS[i], CHUNKS[i], session)
        self.pins[i][session] = self.pins[i].get(session, 0) + 1

    @rule(i=st.integers(0, 3), gen=st.integers(1, 6))
    def hold(self, i: int, gen: int) -> None:
        self.store.hold([(KEYS[i], gen)])
        if self.present(i) and gen > self.gen[i]:
            self.gen[i] = gen

    @rule(i=st.integers(0, 3), session=st.integers(1, 3))
    def release(self, i: int, session: int) -> None:
        self.store.unpin(session, [KEYS[i]])
        if session in self.pins[i]:
            self.pins[i][session] -= 1
            if not self.pins[i][session]:
                del self.pins[i][session]
        if not self.present(i):
            self.gen[i] = 0

    @rule(session=st.integers(1, 3))
    def end_session(self, session: int) -> None:
        self.store.end_session(session)
        for i in self.pins:
            self.pins[i].pop(session, None)
            if not self.present(i):
                self.gen[i] = 0

    @rule(i=st.integers(0, 3), gen=st.integers(1, 6))
    def free(self, i: int, gen: int) -> None:
        self.store.free([(KEYS[i], gen)])
        if self.present(i) and self.gen[i] == gen:
            self.gen[i] = 0  # the hold ends; a pin keeps the chunk

    @invariant()
    def agrees_with_model(self) -> None:
        for i, key in enumerate(KEYS):
            assert self.store.has(key) == self.present(i), (i, self.pins[i], self.gen[i])
            if self.present(i):
                assert self.store.read(key) == CHUNKS[i]
        assert self.store.used == sum(BLOCK_SIZE for i in range(len(KEYS)) if self.present(i))
        assert set(self.store.sessions()) == {s for p in self.pins.values() for s in p}

    def teardown(self) -> None:
        self.store.close()


TestChunkStoreOwnership = ChunkStoreOwnership.TestCase
TestChunkStoreOwnership.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_a_late_free_never_takes_a_copy_held_again_or_stored_again():
    store = ChunkStore(2 * BLOCK_SIZE, prefault=False)
    key, data = KEYS[0], CHUNKS[0]
    assert store.reserve(len(data))
    store.put_reserved(key, data, session=7)
    store.hold([(key, 10)])  # committed by session 7 at generation 10
    store.end_session(7)
    assert store.reserve(len(data))
    store.put_reserved(key, data, session=8)  # a new write stores the same bytes again
    assert store.free([(key, 10)]) == 0  # the version at generation 10 is freed: session 8 still needs it
    store.hold([(key, 11)])  # session 8 commits it
    store.end_session(8)
    assert store.free([(key, 10)]) == 0 and store.has(key)  # a repeated, late free of generation 10
    assert store.free([(key, 11)]) == BLOCK_SIZE and not store.has(key)


def test_a_chunk_freed_while_it_is_being_sent_keeps_its_blocks_until_the_send_is_done():
    store = ChunkStore(BLOCK_SIZE, prefault=False)
    key, data = KEYS[0], CHUNKS[0]
    assert store.reserve(len(data))
    store.put_reserved(key, data, session=7)
    with store.lend(key) as views:
        assert views is not None and b"".join(views) == data
        store.end_session(7)  # freed under the send
        assert not store.has(key)
        assert not store.reserve(len(data)), "its block is not handed out while it is sent from"
        assert b"".join(views) == data
    assert store.reserve(len(data)), "given back once the send is done"
    with store.lend(key) as views:
        assert views is None


def test_landed_blocks_become_the_chunk_or_go_back():
    store = ChunkStore(2 * BLOCK_SIZE, prefault=False)
    key, data = KEYS[0], CHUNKS[0]
    for _ in range(2):  # the second landing of the same chunk is a duplicate: its blocks go back
        assert store.reserve(len(data))
        runs, views = store.land(len(data))
        views[0][: len(data)] = data
        store.put_landed(key, runs, session=7)
    assert store.reserve(len(data)) and store.reserve(len(data)) is False
    store.release(len(data))
    assert store.reserve(len(data))
    runs, _ = store.land(len(data))
    store.drop_landed(runs)  # a chunk cut short
    with store.lend(key) as views:
        assert views is not None and b"".join(views) == data
    store.end_session(7)
    assert store.reserve(2 * len(data))


def test_a_release_crossing_a_later_put_of_the_same_chunk_keeps_that_put():
    store = ChunkStore(2 * BLOCK_SIZE, prefault=False)
    key, data = KEYS[0], CHUNKS[0]
    for _ in range(2):
        assert store.reserve(len(data))
        store.put_reserved(key, data, session=5)  # put, rewritten, put again before the release arrived
    store.unpin(5, [key])
    assert store.has(key)
    store.unpin(5, [key])
    assert not store.has(key) and store.sessions() == []


def test_orders_apply_holds_before_the_session_ends():
    store = ChunkStore(2 * BLOCK_SIZE, prefault=False)
    for i in range(2):
        assert store.reserve(BLOCK_SIZE)
        store.put_reserved(KEYS[i], CHUNKS[i], session=3)
    queues = OrderQueues()
    queues.push("bf", "ns", session=3, hold=[(KEYS[0][1], 42)], end_session=True)
    (order,) = queues.take("bf", 0)
    assert apply_order(store, order) == BLOCK_SIZE  # the uncommitted chunk goes, the committed one stays
    assert store.has(KEYS[0]) and not store.has(KEYS[1])
    assert queues.take("bf", order.seq) == []


def test_order_queue_redelivers_until_acknowledged_and_restarts_per_incarnation():
    q = OrderQueues()
    for n in range(3):
        q.push("bf", "ns", session=n + 1, end_session=True)
    first = q.take("bf", 0)
    assert [o.seq for o in first] == [1, 2, 3]
    assert [o.seq for o in q.take("bf", 0)] == [1, 2, 3]  # reply lost: the same again
    assert [o.seq for o in q.take("bf", 2)] == [3]
    q.reset("bf")
    q.push("bf", "ns", session=9, end_session=True)
    assert [o.seq for o in q.take("bf", 0)] == [1]


def test_sessions_expire_unless_renewed_or_committing():
    table = SessionTable(lease=10.0)
    a = table.open("ns", "/a", now=0.0)
    b = table.open("ns", "/b", now=0.0)
    c = table.open("ns", "/c", now=0.0)
    assert len({a.id, b.id, c.id}) == 3 and all(s.id for s in (a, b, c))
    assert table.renew(b.id, now=8.0)
    c.committing = True
    assert [s.id for s in table.expired(now=11.0)] == [a.id]
    assert not table.is_open(a.id) and not table.renew(a.id, now=11.0)
    assert table.is_open(b.id) and table.is_open(c.id)
    assert [s.id for s in table.expired(now=19.0)] == [b.id]
    assert table.end(c.id) is c and table.end(c.id) is None


def test_a_session_whose_commit_waits_for_its_turn_does_not_expire_and_ends_give_back_reservations():
    ended = []
    table = SessionTable(lease=10.0, on_end=ended.append)
    queued = table.open("ns", "/q", now=0.0)
    queued.queued = True  # its commit waits behind others in a storm
    other = table.open("ns", "/o", now=0.0)
    assert [s.id for s in table.expired(now=11.0)] == [other.id]
    queued.queued = False  # refused before it was taken up: it expires as any other
    assert [s.id for s in table.expired(now=11.0)] == [queued.id]
    assert ended == [other, queued]  # each ending session is handed over (its reservations go back)


class ChunkIndexModel(RuleBasedStateMachine):
    """Versions committed (with confirmed copies), evicted from memory and deleted, against a model
    that recounts everything from the list of versions."""

    def __init__(self) -> None:
        super().__init__()
        self.index = ChunkIndex()
        self.versions: list[tuple[list[int], bool]] = []  # chunk numbers, in memory
        self.holders: dict[int, dict[str, int]] = {}
        self.freed: list[tuple[int, str, int]] = []
        self.gen = 0

    def _drop(self, dropped: dict[str, int], i: int) -> None:
        for bf, g in dropped.items():
            self.freed.append((i, bf, g))
        self.holders.pop(i, None)

    @rule(chunks=st.lists(st.integers(0, 3), min_size=1, max_size=4), where=st.sampled_from(["bf0", "bf1", ""]))
    def commit(self, chunks: list[int], where: str) -> None:
        for i in set(chunks):
            _, dropped = self.index.bump(KEYS[i], 1, 1)
            assert not dropped
            if where:
                self.gen += 1
                assert self.index.add_location(KEYS[i], where, self.gen)
                self.holders.setdefault(i, {})[where] = self.gen
        self.versions.append((chunks, True))

    @rule(data=st.data())
    def evict(self, data: st.DataObject) -> None:
        live = [n for n, (_, mem) in enumerate(self.versions) if mem]
        if not live:
            return
        n = data.draw(st.sampled_from(live))
        chunks, _ = self.versions[n]
        self.versions[n] = (chunks, False)
        for i in set(chunks):
            _, dropped = self.index.bump(KEYS[i], 0, -1)
            if dropped:
                self._drop(dropped, i)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        if not self.versions:
            return
        n = data.draw(st.integers(0, len(self.versions) - 1))
        chunks, mem = self.versions.pop(n)
        for i in set(chunks):
            _, dropped = self.index.bump(KEYS[i], -1, -1 if mem else 0)
            if dropped:
                self._drop(dropped, i)

    @invariant()
    def counts_match(self) -> None:
        for i, key in enumerate(KEYS):
            refs = sum(1 for chunks, _ in self.versions if i in chunks)
            mem = sum(1 for chunks, m in self.versions if m and i in chunks)
            assert self.index.refs(key) == refs and self.index.mem_refs(key) == mem
            assert (key in self.index) == (refs > 0)
            # A chunk no in-memory version needs has no location left: each was returned to be freed.
            expected = self.holders.get(i, {}) if mem else {}
            assert self.index.locations(key) == expected
            assert self.index.readable(key, {"bf0", "bf1"}) == bool(expected)
        # Every copy freed was freed at the generation it was recorded at.
        for _i, bf, g in self.freed:
            assert g > 0 and bf in ("bf0", "bf1")


TestChunkIndexModel = ChunkIndexModel.TestCase
TestChunkIndexModel.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


class _HoldLog:
    """Records what an order asks a store to hold (the order's decoding, without a store)."""

    def __init__(self) -> None:
        self.held: list[tuple[tuple[str, ChunkKey], int]] = []

    def hold(self, items) -> None:  # type: ignore[no-untyped-def]
        self.held += list(items)


@settings(max_examples=200, deadline=None)
@given(hold=st.lists(st.tuples(st.tuples(st.binary(min_size=16, max_size=16), st.sampled_from([4096, 1 << 20])),
                               st.sampled_from([7, 8])), min_size=1, max_size=20))
def test_holds_reach_the_benefactor_as_pushed_in_either_packed_form(hold):
    """A commit's holds travel as 16 bytes per chunk when they share a length and a generation,
    else as 32; either way the benefactor holds exactly those chunks at those generations."""
    hold = [(ChunkKey(h, n), gen) for (h, n), gen in hold]
    queues = OrderQueues()
    queues.push("bf", "ns", session=3, hold=hold)
    (order,) = queues.take("bf", 0)
    shared = len({k.length for k, _ in hold}) == 1 and len({g for _, g in hold}) == 1
    assert bool(order.hold_hashes) == shared and bool(order.hold_packed) != shared
    log = _HoldLog()
    apply_order(log, order)  # type: ignore[arg-type]
    assert log.held == [(("ns", k), g) for k, g in hold]
