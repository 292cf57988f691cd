"""The writer's state machine without threads or sockets: random sequences of hand-overs, answers,
maps, acks, stream ends, releases, finish and failures against a reference model of where every
chunk is and what the write buffer holds."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memstage.chunks import ChunkKey
from memstage.client.writestate import (
    Ask,
    CloseStreams,
    Failed,
    NeedMap,
    Placement,
    Release,
    Resolved,
    Send,
    StreamEnd,
    WriteState,
)
from memstage.errors import ChunkRejected, DataLost, MemstageError

KEYS = [ChunkKey(bytes([n]) * 16, 100 + n) for n in range(6)]
BFS = ["a", "b", "c"]


class WriteStateModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = WriteState("/f", query_batch=3, query_bytes=10_000, release_batch=2, known={KEYS[5]},
                                 small_write=250)
        self.length: dict[int, int] = {}  # seq -> bytes of the write buffer it holds, until resolved
        self.at: dict[int, str] = {}  # seq -> where the model believes it is
        self.asks: list[Ask] = []
        self.need_map: NeedMap | None = None
        self.excluded: set[str] = set()
        self.failed: MemstageError | None = None
        self.acked: dict[str, int] = {}
        self.released: list[ChunkKey] = []
        self.puts: dict[ChunkKey, int] = {}  # handovers of chunks this write sent, not released
        self.unasked_ok: tuple[str, ...] = ()

    # -- carrying out instructions as the I/O layer would ---------------------------------------
    def run(self, instructions: list) -> None:
        for ins in instructions:
            if isinstance(ins, Send):
                assert self.failed is None, "no send after a failure"
                assert ins.placement.id not in self.excluded, "sent to an excluded benefactor"
                # Sent once asked about, or without asking at the finish of a small write.
                assert self.at.get(ins.seq) in ("asking", "unplaced", *self.unasked_ok), (ins.seq, self.at.get(ins.seq))
                self.at[ins.seq] = ins.placement.id
            elif isinstance(ins, Resolved):
                for seq in ins.seqs:
                    assert seq in self.length, f"seq {seq} resolved twice"
                assert ins.nbytes == sum(self.length[s] for s in ins.seqs)
                for seq in ins.seqs:
                    del self.length[seq]
                    self.at.pop(seq, None)
            elif isinstance(ins, Ask):
                for seq in ins.seqs:
                    assert self.at[seq] == "unasked"
                    self.at[seq] = "asking"
                self.asks.append(ins)
            elif isinstance(ins, NeedMap):
                assert self.need_map is None, "one map request at a time"
                self.need_map = ins
            elif isinstance(ins, Release):
                for key, _ in ins.chunks:
                    assert key not in self.puts, "released a chunk that is still needed"
                    self.released.append(key)
            elif isinstance(ins, Failed):
                self.failed = ins.error
            else:
                assert isinstance(ins, CloseStreams)
        for seq, where in list(self.at.items()):
            if where in ("asking", *self.unasked_ok) and self.state.where(seq) == "unplaced":
                self.at[seq] = "unplaced"

    # -- events ------------------------------------------------------------------------------
    @rule(k=st.integers(0, 5), ask=st.booleans())
    def put(self, k: int, ask: bool) -> None:
        key = KEYS[k]
        try:
            seq = self.state.put(key)
        except MemstageError:
            assert self.failed is not None
            return
        assert self.failed is None
        if seq is None:
            if key in self.puts:
                self.puts[key] += 1
            return
        self.puts[key] = 1
        self.length[seq] = key.length
        self.at[seq] = "unasked"
        if ask:
            self.run(self.state.submit(seq, key))
            return
        saved, self.unasked_ok = self.unasked_ok, ("unasked",)  # a chunk changed in place: sent unasked
        try:
            self.run(self.state.submit(seq, key, ask=False))
        finally:
            self.unasked_ok = saved

    @precondition(lambda self: self.asks)
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        ask = self.asks.pop(data.draw(st.integers(0, len(self.asks) - 1)))
        present = data.draw(st.lists(st.booleans(), min_size=len(ask.seqs), max_size=len(ask.seqs)))
        for seq, p, key in zip(ask.seqs, present, ask.keys, strict=True):
            if p and seq in self.length:
                self.puts.pop(key, None)  # the namespace's now: nothing to release
        self.run(self.state.found(ask.seqs, present))

    @precondition(lambda self: self.need_map is not None)
    @rule(bfs=st.lists(st.sampled_from(BFS), unique=True), retried=st.booleans())
    def give_map(self, bfs: list[str], retried: bool) -> None:
        assert self.need_map is not None
        if retried:
            self.excluded -= set(self.need_map.full)
        self.need_map = None
        self.run(self.state.map_received([Placement(b, f"{b}:1") for b in bfs], retried))

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        sent = [s for s, w in self.at.items() if w in BFS]
        if not sent:
            return
        seq = data.draw(st.sampled_from(sorted(sent)))
        bf = self.at[seq]
        self.acked[bf] = self.acked.get(bf, 0) + 1
        self.run(self.state.acked(bf, seq, b"receipt-" + bf.encode()))

    @rule(bf=st.sampled_from(BFS), reason=st.sampled_from(list(StreamEnd)))
    def end_stream(self, bf: str, reason: StreamEnd) -> None:
        leftover = [s for s, w in self.at.items() if w == bf]
        was_failed = self.failed is not None
        instructions = self.state.stream_ended(bf, reason, "gone", leftover)
        if not was_failed and (leftover or reason is not StreamEnd.DONE):
            if reason is StreamEnd.REJECTED:
                assert any(isinstance(i, Failed) and isinstance(i.error, ChunkRejected) for i in instructions)
            elif reason is not StreamEnd.FULL and self.acked.get(bf):
                assert any(isinstance(i, Failed) and isinstance(i.error, DataLost) for i in instructions)
            else:
                self.excluded.add(bf)
                for seq in leftover:
                    self.at[seq] = "unplaced"
        self.run(instructions)

    @rule(k=st.integers(0, 5))
    def release(self, k: int) -> None:
        key = KEYS[k]
        if key in self.puts:
            self.puts[key] -= 1
            if not self.puts[key]:
                del self.puts[key]
        self.run(self.state.release(key))

    @rule()
    def finish(self) -> None:
        self.unasked_ok = ("unasked",) if self.state.size <= self.state.small_write else ()
        try:
            self.run(self.state.finish())
        except MemstageError:
            assert self.failed is not None
        finally:
            self.unasked_ok = ()

    @rule()
    def fail(self) -> None:
        self.run(self.state.fail(MemstageError("aborted")))

    # -- what must always hold -----------------------------------------------------------------
    @invariant()
    def every_chunk_is_somewhere_once(self) -> None:
        unresolved = self.state.unresolved()
        assert set(unresolved) == set(self.length), "the write buffer accounts for exactly the unresolved chunks"
        assert self.state.in_flight == len(self.length)
        for seq, where in self.at.items():
            assert self.state.where(seq) == where, (seq, where, self.state.where(seq))
        if self.failed is not None:
            assert not self.length, "a failed write holds none of the write buffer"
        waiting = [s for s, w in self.at.items() if w == "unplaced"]
        if waiting and self.failed is None:
            assert self.need_map is not None, "chunks wait for a map nobody asked for"

    @invariant()
    def receipts_come_from_acks(self) -> None:
        for holders in self.state.locations.values():
            for bf, receipt in holders.items():
                assert receipt == b"receipt-" + bf.encode() and self.acked.get(bf)


TestWriteStateModel = WriteStateModel.TestCase
TestWriteStateModel.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)


def test_a_benefactor_failing_after_acks_fails_the_write_and_frees_the_buffer():
    state = WriteState("/f", query_batch=1)
    seq = state.put(KEYS[0])
    assert seq is not None
    (ask,) = state.submit(seq, KEYS[0])
    assert isinstance(ask, Ask)
    (need,) = state.found(ask.seqs, [False])
    assert isinstance(need, NeedMap)
    (send,) = state.map_received([Placement("a", "a:1")])
    assert isinstance(send, Send) and send.placement.id == "a"
    assert state.acked("a", seq, b"r")[0] == Resolved((seq,), KEYS[0].length)
    seq2 = state.put(KEYS[1])
    assert seq2 is not None
    state.found(*[(a.seqs, [False]) for a in state.submit(seq2, KEYS[1]) if isinstance(a, Ask)][0])
    failed, resolved = state.stream_ended("a", StreamEnd.FAILED, "UNAVAILABLE", [seq2])
    assert isinstance(failed, Failed) and isinstance(failed.error, DataLost) and "a failed after" in str(failed.error)
    assert resolved == Resolved((seq2,), KEYS[1].length)
    assert state.stream_ended("a", StreamEnd.FAILED, "", []) == []  # once failed, nothing more happens


def test_a_full_benefactor_is_asked_again_only_after_a_wait():
    state = WriteState("/f", query_batch=1)
    seq = state.put(KEYS[0])
    assert seq is not None
    (ask,) = state.submit(seq, KEYS[0])
    state.found(ask.seqs, [False])
    state.map_received([Placement("a", "a:1")])
    (need,) = state.stream_ended("a", StreamEnd.FULL, "full", [seq])
    assert isinstance(need, NeedMap) and need.exclude == ("a",) and need.full == ("a",)
    assert state.map_received([Placement("a", "a:1")]) == [NeedMap(("a",), ("a",))]  # still excluded
    (send,) = state.map_received([Placement("a", "a:1")], full_retried=True)
    assert isinstance(send, Send) and send.placement.id == "a"
