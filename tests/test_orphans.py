"""Socket-free tests of the files unlinked or replaced while open on a mount (Orphans): examples
of each path, and random event sequences against a simple reference model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memstage.client.orphans import Move, Orphans, Remove, Retarget, State

PREFIX = "/.memstage-unlinked/host-1-"
DELAY = 0.2


def test_a_file_written_here_moves_at_once_and_goes_at_its_last_close():
    o = Orphans(PREFIX, DELAY)
    assert o.hide("/f", "/.fuse_hidden1", writing=True, now=0.0) == [Move("/.fuse_hidden1", "/f", PREFIX + "1")]
    assert o.hiding("/f") and not o.settled("/.fuse_hidden1")
    assert o.settle("/f") == ([], "/.fuse_hidden1")  # the move is under way: wait for it
    assert o.moved("/.fuse_hidden1", found=True) == [Retarget("/.fuse_hidden1", PREFIX + "1")]
    assert not o.hiding("/f") and o.settled("/.fuse_hidden1")
    assert o.drop("/.fuse_hidden1") == [Remove(PREFIX + "1")]
    assert not o.known("/.fuse_hidden1")


def test_a_file_only_read_here_waits_for_a_rename_over_its_name():
    o = Orphans(PREFIX, DELAY)
    assert o.hide("/f", "/.fuse_hidden1", writing=False, now=10.0) == []
    assert o.next_due() == 10.0 + DELAY and o.due(10.1) == []
    assert o.settle("/f", replaced=True) == ([], None)  # the name keeps its history
    assert o.state("/.fuse_hidden1") is State.KEPT and not o.hiding("/f")
    assert o.next_due() is None and o.due(11.0) == []
    assert o.drop("/.fuse_hidden1") == []  # nothing was moved: nothing to remove


def test_a_file_only_read_here_moves_when_due_or_when_its_name_is_used():
    o = Orphans(PREFIX, DELAY)
    o.hide("/a", "/.fuse_hidden1", writing=False, now=0.0)
    o.hide("/b", "/.fuse_hidden2", writing=False, now=0.1)
    assert o.due(DELAY) == [Move("/.fuse_hidden1", "/a", PREFIX + "1")]
    assert o.settle("/b") == ([Move("/.fuse_hidden2", "/b", PREFIX + "2")], "/.fuse_hidden2")
    assert o.settle("/b", replaced=True) == ([], "/.fuse_hidden2")  # too late to keep: wait for the move
    assert o.moved("/.fuse_hidden2", found=False) == [Retarget("/.fuse_hidden2", "/.fuse_hidden2")]
    assert o.drop("/.fuse_hidden2") == []  # nothing was at the manager


def test_names_still_hiding_a_file_are_found_by_their_directory():
    o = Orphans(PREFIX, DELAY)
    o.hide("/d/a", "/d/.fuse_hidden1", writing=False, now=0.0)
    o.hide("/d/e/b", "/d/e/.fuse_hidden2", writing=False, now=0.0)
    assert o.hiding_in("/d") == ["/d/a"] and o.hiding_in("/d/") == ["/d/a"]
    assert o.hiding_in("/d/e") == ["/d/e/b"] and o.hiding_in("/x") == []
    o.settle("/d/a")
    o.moved("/d/.fuse_hidden1", found=True)
    assert o.hiding_in("/d") == []


def test_a_last_close_before_the_move_moves_then_removes():
    o = Orphans(PREFIX, DELAY)
    o.hide("/f", "/.fuse_hidden1", writing=False, now=0.0)
    assert o.drop("/.fuse_hidden1") == [Move("/.fuse_hidden1", "/f", PREFIX + "1")]
    assert o.moved("/.fuse_hidden1", found=True) == [Retarget("/.fuse_hidden1", PREFIX + "1"), Remove(PREFIX + "1")]
    assert not o.known("/.fuse_hidden1") and o.next_due() is None


def test_a_file_closed_before_libfuse_hid_it_goes_once_moved_without_a_last_close():
    # libfuse 3.14 hides a name whose release is still under way and, if that release counted
    # down first, never unlinks the hidden name: the file would stay at its target for good.
    o = Orphans(PREFIX, DELAY)
    assert o.hide("/f", "/.fuse_hidden1", writing=False, now=0.0, closed=True) == []
    assert o.due(DELAY) == [Move("/.fuse_hidden1", "/f", PREFIX + "1")]
    assert o.moved("/.fuse_hidden1", found=True) == [Retarget("/.fuse_hidden1", PREFIX + "1"), Remove(PREFIX + "1")]
    assert not o.known("/.fuse_hidden1") and o.drop("/.fuse_hidden1") == []  # a late unlink of it: nothing


def test_an_outcome_of_a_move_not_asked_is_refused():
    o = Orphans(PREFIX, DELAY)
    o.hide("/f", "/.fuse_hidden1", writing=False, now=0.0)
    with pytest.raises(ValueError):
        o.moved("/.fuse_hidden1", found=True)


@dataclass
class _Ref:
    name: str
    target: str
    phase: str  # waiting, moving, moved, gone, kept
    due: float
    dropped: bool = False


NAMES = ["/a", "/d/b", "/c"]


class OrphansMachine(RuleBasedStateMachine):
    """Events as the mount sees them: opens unlinked (read or written here, or closed here already
    while libfuse counted them open), renames over a name, the name used again, time passing,
    moves finishing in any order, last closes. The model: a read-only file waits DELAY for a rename
    over its name, a written one moves at once; each file moves at most once, and its versions are
    removed once, at its last close (or once moved, if closed already), only if moved."""

    def __init__(self) -> None:
        super().__init__()
        self.o = Orphans(PREFIX, DELAY)
        self.now = 0.0
        self.ref: dict[str, _Ref] = {}  # hidden -> what the model expects
        self.hidden_seq = 0
        self.moves: set[str] = set()  # Moves handed out, outcome not told yet
        self.removed: list[str] = []

    def _hiding(self, name: str) -> str | None:
        live = [h for h, r in self.ref.items() if r.name == name and r.phase in ("waiting", "moving")]
        assert len(live) <= 1
        return live[0] if live else None

    def _took(self, actions: list, expected: list) -> None:
        assert actions == expected
        for a in actions:
            if isinstance(a, Move):
                assert a.hidden not in self.moves  # one move per file
                self.moves.add(a.hidden)
            elif isinstance(a, Remove):
                self.removed.append(a.target)

    def _start(self, hidden: str) -> list:
        r = self.ref[hidden]
        r.phase = "moving"
        return [Move(hidden, r.name, r.target)]

    # -- events ---------------------------------------------------------------------------------
    @rule(name=st.sampled_from(NAMES), writing=st.booleans(), closed=st.booleans())
    def unlink_open(self, name: str, writing: bool, closed: bool) -> None:
        """closed: the file's last close here ran while libfuse still counted it open (no handle
        is left here, so it is not being written)."""
        if self._hiding(name) is not None:
            return  # the name is gone until settled: the kernel cannot open and unlink it again
        writing = writing and not closed
        self.hidden_seq += 1
        hidden = f"/.fuse_hidden{self.hidden_seq}"
        self.ref[hidden] = _Ref(name, f"{PREFIX}{self.hidden_seq}", "waiting", self.now + DELAY, dropped=closed)
        expected = self._start(hidden) if writing else []
        self._took(self.o.hide(name, hidden, writing, self.now, closed=closed), expected)

    @rule(dt=st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.5]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        expected = [m for h, r in self.ref.items() if r.phase == "waiting" and r.due <= self.now
                    for m in self._start(h)]
        self._took(self.o.due(self.now), expected)

    @rule(name=st.sampled_from(NAMES), replaced=st.booleans())
    def name_used(self, name: str, replaced: bool) -> None:
        """replaced: a rename over the name (its second half); else a create, mkdir, link... of it."""
        hidden = self._hiding(name)
        actions, wait = self.o.settle(name, replaced)
        if hidden is None:
            self._took(actions, [])
            assert wait is None
        elif self.ref[hidden].phase == "waiting" and replaced:
            self.ref[hidden].phase = "kept"
            if self.ref[hidden].dropped:
                del self.ref[hidden]  # closed already: nothing more comes of it
            self._took(actions, [])
            assert wait is None
        else:
            expected = self._start(hidden) if self.ref[hidden].phase == "waiting" else []
            self._took(actions, expected)
            assert wait == hidden

    @precondition(lambda self: self.moves)
    @rule(data=st.data(), found=st.booleans())
    def move_ends(self, data: st.DataObject, found: bool) -> None:
        hidden = data.draw(st.sampled_from(sorted(self.moves)))
        self.moves.discard(hidden)
        r = self.ref[hidden]
        r.phase = "moved" if found else "gone"
        expected: list = [Retarget(hidden, r.target if found else hidden)]
        if r.dropped:
            del self.ref[hidden]
            expected += [Remove(r.target)] if found else []
        self._took(self.o.moved(hidden, found), expected)

    @precondition(lambda self: self.ref)
    @rule(data=st.data())
    def last_close(self, data: st.DataObject) -> None:
        hidden = data.draw(st.sampled_from(sorted(self.ref)))
        r = self.ref[hidden]
        if r.dropped:  # libfuse unlinks the hidden name late (or once more): nothing more to do
            self._took(self.o.drop(hidden), [])
            return
        r.dropped = True
        if r.phase == "waiting":
            expected = self._start(hidden)
        elif r.phase == "moving":
            expected = []
        else:
            del self.ref[hidden]
            expected = [Remove(r.target)] if r.phase == "moved" else []
        self._took(self.o.drop(hidden), expected)

    # -- what must always hold ------------------------------------------------------------------
    @invariant()
    def agrees_with_the_model(self) -> None:
        for name in NAMES:
            assert self.o.hiding(name) == (self._hiding(name) is not None)
        for hidden, r in self.ref.items():
            assert self.o.known(hidden)
            assert self.o.state(hidden) is State(r.phase if r.phase != "waiting" else "pending")
            assert self.o.settled(hidden) == (r.phase not in ("waiting", "moving"))
        assert {h for h in self.ref if self.o.state(h) is State.MOVING} == self.moves
        waiting = [r.due for r in self.ref.values() if r.phase == "waiting"]
        assert self.o.next_due() == (min(waiting) if waiting else None)

    @invariant()
    def removes_each_moved_file_once(self) -> None:
        assert len(self.removed) == len(set(self.removed))


OrphansMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_orphans_against_a_model = OrphansMachine.TestCase
