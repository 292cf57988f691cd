"""Retention rules (manager.retention): persist_every selection, keep_versions and pfs_keep, on
plain rows; a stateful model checks them over random runs of a step series. No sockets."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from memstage.manager import retention as r


def test_persist_every_selects_the_first_and_every_nth():
    assert [s for s in range(1, 11) if r.selected(s, 4)] == [1, 4, 8]
    assert [s for s in range(1, 4) if r.selected(s, 1)] == [1, 2, 3]
    assert not any(r.selected(s, 0) for s in range(1, 10))


def test_a_version_past_keep_leaves_memory_by_its_drain_state():
    assert r.leaving(persist=True, persisted=True) == r.EVICT
    assert r.leaving(persist=False, persisted=False) == r.DELETE
    assert r.leaving(persist=True, persisted=False) == r.WAIT
    assert r.leaves_whole([(True, True), (False, False)])
    assert not r.leaves_whole([(True, True), (True, False)])
    assert list(r.past_keep([5, 4, 3, 2], 2)) == [3, 2]
    assert r.series_cutoff(10, 2) == 8


def test_pfs_keep_counts_only_checkpoints_wholly_on_the_pfs():
    steps = [(40, 1, 3), (30, 0, 2), (20, 0, 0), (10, 0, 1), (5, 0, 4)]  # newest first
    assert r.pfs_expired(steps, 1) == [10, 5]
    assert r.pfs_expired(steps, 0) == []
    assert r.chunk_file_goes(1, True) and not r.chunk_file_goes(2, True) and not r.chunk_file_goes(1, False)


class SeriesModel(RuleBasedStateMachine):
    """A step series written checkpoint after checkpoint, drains finishing in any order. The rules
    decide what leaves memory and the PFS; the reference says it directly: memory holds the
    newest `keep` + 1 checkpoints and every one selected and not yet drained; the PFS holds the
    drained ones of which at most `pfs_keep` are older than any kept."""

    def __init__(self) -> None:
        super().__init__()
        self.every, self.keep, self.pfs_keep = 3, 2, 2
        self.seq = 0
        self.selected: set[int] = set()
        self.drained: set[int] = set()
        self.memory: set[int] = set()
        self.pfs: set[int] = set()
        self.deleted: set[int] = set()

    @rule(every=st.integers(0, 4), keep=st.integers(1, 3), pfs_keep=st.integers(0, 3))
    def configure(self, every: int, keep: int, pfs_keep: int) -> None:
        if self.seq == 0:
            self.every, self.keep, self.pfs_keep = every, keep, pfs_keep

    @rule()
    def commit(self) -> None:
        self.seq += 1
        self.memory.add(self.seq)
        if r.selected(self.seq, self.every):
            self.selected.add(self.seq)
        self.retain()

    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        waiting = sorted(self.selected - self.drained)
        if waiting:
            seq = data.draw(st.sampled_from(waiting))
            self.drained.add(seq)
            self.pfs.add(seq)
            self.retain()

    def retain(self) -> None:
        cutoff = r.series_cutoff(self.seq, self.keep)
        for seq in sorted(self.memory):
            if seq >= cutoff:
                continue
            action = r.leaving(seq in self.selected, seq in self.drained)
            if action != r.WAIT:
                self.memory.discard(seq)
            if action == r.DELETE:
                self.deleted.add(seq)
        steps = [(seq, int(seq in self.selected and seq not in self.drained), int(seq in self.pfs))
                 for seq in sorted(self.pfs | self.selected, reverse=True)]
        for seq in r.pfs_expired(steps, self.pfs_keep):
            self.pfs.discard(seq)

    @invariant()
    def memory_is_the_newest_and_the_undrained(self) -> None:
        newest = {s for s in range(1, self.seq + 1) if s >= self.seq - self.keep}
        waiting = self.selected - self.drained
        assert self.memory == newest | waiting

    @invariant()
    def nothing_selected_is_lost_undrained(self) -> None:
        assert not (self.deleted & self.selected)
        assert all(s in self.memory or s in self.pfs or s in self.drained for s in self.selected)

    @invariant()
    def the_pfs_keeps_the_newest_drained(self) -> None:
        drained = sorted(self.drained, reverse=True)
        expected = set(drained if self.pfs_keep <= 0 else drained[:self.pfs_keep])
        assert self.pfs == expected


TestSeriesModel = SeriesModel.TestCase
TestSeriesModel.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
