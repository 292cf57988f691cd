"""Drain outcome rules (manager.drainrules): who drains a chunk, where a task goes when its chunk
is missing, what a result does to its version's row. No sockets, no catalog."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memstage.chunks import ChunkKey
from memstage.manager import drainrules as d

KEY = ChunkKey(b"\1" * 16, 10)


def test_the_drainer_is_the_holder_else_any_live_one_when_there_is_nothing_to_read():
    assert d.drainer(False, "b2", False, {"b1", "b2"}) == "b2"
    assert d.drainer(False, "", True, {"b3", "b1"}) == "b1"
    assert d.drainer(True, "", False, {"b3", "b1"}) == "b1"
    assert d.drainer(False, "", False, {"b1"}) == ""
    assert d.drainer(True, "", False, set()) == ""


def test_a_report_must_name_a_file_of_its_namespace():
    assert not d.drained_under("not a drained path", "ns")


@given(owner=st.sampled_from(["", "b1"]), recoverable=st.booleans(), check_pfs=st.booleans(),
       candidates=st.sets(st.sampled_from(["b1", "b2"])))
def test_next_holder_loses_a_version_only_as_a_last_resort(owner, recoverable, check_pfs, candidates):
    step = d.next_holder(owner, recoverable, check_pfs, candidates)
    if owner:
        assert step == (d.MOVE, owner)
    elif recoverable:
        assert step.kind == d.WAIT
    elif check_pfs and candidates:
        assert step == (d.CHECK_PFS, min(candidates))
    else:
        assert step.kind == d.LOST


def test_missing_reasons_say_who_had_it():
    assert "not on benefactor b1" in d.missing_reason(KEY, "b1", True)
    assert "benefactors that are gone" in d.missing_reason(KEY, "b1", False)


@given(st.lists(st.sampled_from(["failed", "lost", "persisted"]), max_size=8))
def test_outcomes_applied_to_a_row(events):
    """A row after any sequence of outcomes: persisted once completed, lost only if lost after its
    last completion, a drain error kept once set."""
    row: dict[str, object] = {"persisted": 0, "lost": 0, "lost_reason": "", "drain_error": ""}
    for e in events:
        row.update(d.failed("E") if e == "failed" else d.lost("R") if e == "lost" else d.persisted())
    last_loss = max((i for i, e in enumerate(events) if e == "lost"), default=-1)
    last_done = max((i for i, e in enumerate(events) if e == "persisted"), default=-1)
    assert row["persisted"] == int(last_done >= 0)
    assert row["lost"] == int(last_loss > last_done)
    assert row["lost_reason"] == ("R" if last_loss > last_done else "")
    assert row["drain_error"] == ("E" if "failed" in events else "")
