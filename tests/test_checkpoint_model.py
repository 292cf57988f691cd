"""Checkpoints as the policies count them (socket-free): which checkpoint a path belongs to, and a
model-based test of the catalog's selection (persist_every) and retention (keep) over random runs
of per-step checkpoints, side files and drains, against a simple reference model."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from memstage.chunks import ChunkKey
from memstage.manager.catalog import Catalog, Policy
from memstage.manager.checkpoints import StepName, step_of


@pytest.mark.parametrize(("path", "want"), [
    ("/step_100/__0_0.distcp", StepName("/step", 100, "/step_100")),
    ("/checkpoint/step-100/.metadata", StepName("/checkpoint/step", 100, "/checkpoint/step-100")),
    ("/run42/iter_0000100/mp_rank_00/model_optim_rng.pt", StepName("/run42/iter", 100, "/run42/iter_0000100")),
    ("/out/global_step7/mp_rank_00_model_states.pt", StepName("/out/global_step", 7, "/out/global_step7")),
    ("/ckpt/rank3_step100.npy", StepName("/ckpt/step", 100, "/ckpt")),
    ("/orbax/1200/state/x", StepName("/orbax/#", 1200, "/orbax/1200")),
    ("/run42/latest_checkpointed_iteration.txt", None),
    ("/run7/a.bin", None),
    ("/mp_rank_00/x", None),
    ("/a.bin", None),
])
def test_step_names_of_common_layouts(path, want):
    assert step_of(path) == want


def selected(seq: int, every: int) -> bool:
    return every > 0 and (seq == 1 or seq % every == 0)


EVENTS = st.lists(st.one_of(
    st.tuples(st.just("step"), st.integers(1, 3)),  # a new checkpoint with that many rank files
    st.tuples(st.just("tracker"), st.just(0)),  # the pointer file names the newest checkpoint
    st.tuples(st.just("drain"), st.integers(0, 20)),  # a selected checkpoint's files reach the PFS
), min_size=1, max_size=25)


@settings(max_examples=200, deadline=None)
@given(every=st.integers(0, 4), keep=st.integers(1, 3), events=EVENTS)
@example(every=1, keep=2, events=[("step", 1), ("step", 1), ("tracker", 0), ("drain", 0)])
def test_selection_and_retention_follow_checkpoints(tmp_path_factory, every, keep, events):
    cat = Catalog(str(tmp_path_factory.mktemp("state")))
    cat.set_policy("ns", Policy(persist_every=every, keep_versions=keep))
    alive = {"b0"}
    steps: list[int] = []  # checkpoint seq -> its step number (step = 10 * seq)
    files: dict[int, list[str]] = {}
    drained: set[int] = set()
    tracker: dict[int, int] = {}  # pointer file version -> the newest checkpoint when it was written
    n = 0

    def commit(path: str) -> None:
        nonlocal n
        n += 1
        key = ChunkKey(n.to_bytes(16, "big"), 10)
        cat.commit("ns", path, 10, [(key, ["b0"])], alive)
        cat.apply_retention("ns", path)

    for kind, arg in events:
        if kind == "step":
            seq = len(steps) + 1
            steps.append(10 * seq)
            files[seq] = [f"/run/iter_{10 * seq:07d}/rank{r}.pt" for r in range(arg)]
            for path in files[seq]:
                commit(path)
        elif kind == "tracker" and steps:
            commit("/run/latest.txt")
            tracker[cat.versions("ns", "/run/latest.txt")[-1].version] = len(steps)
        elif kind == "drain" and steps:
            seq = 1 + arg % len(steps)
            if not selected(seq, every) or seq in drained:
                continue
            # Report every chunk of the checkpoint's files drained, as benefactors would.
            work = cat.drain_work("b0", 10_000)
            # ... and whatever the pointer file has queued (only what its checkpoint lets it).
            mine = [t for t in work if t.path in files[seq] or t.path == "/run/latest.txt"]
            cat.drain_done("b0", [(t.id, f"ns/run/{t.index}.{t.path.count('/')}", False, "", 10) for t in mine],
                           alive)
            drained.add(seq)
            for path in files[seq]:
                cat.apply_retention("ns", path)
    newest = len(steps)
    for seq, paths in files.items():
        for path in paths:
            versions = cat.versions("ns", path)
            in_memory = seq >= newest - keep  # the `keep` checkpoints before the newest, and the newest
            if in_memory:
                assert versions and versions[-1].in_memory, (seq, path)
                assert versions[-1].persist == selected(seq, every)
            elif selected(seq, every):
                # Never leaves memory before it is drained; afterwards only its PFS copy is kept.
                assert versions and versions[-1].in_memory == (seq not in drained), (seq, path)
            else:
                assert not versions, (seq, path)
    # The pointer file drains only once the checkpoint it was written in is on the PFS.
    for v in cat.versions("ns", "/run/latest.txt"):
        assert v.persist == selected(tracker[v.version], every)
        if v.persisted:
            assert tracker[v.version] in drained, v
    listed = cat.checkpoints("ns")
    # Listed: the checkpoints that still hold files, in memory or on the PFS.
    holding = [seq for seq, paths in files.items() if any(cat.versions("ns", p) for p in paths)]
    assert [c["seq"] for c in listed] == sorted(holding)
    assert [c["persist"] for c in listed] == [selected(c["seq"], every) for c in listed]
    cat.close()


@settings(max_examples=150, deadline=None)
@given(keep=st.integers(1, 3), pfs_keep=st.integers(1, 3),
       events=st.lists(st.one_of(st.tuples(st.just("step"), st.integers(1, 2)),
                                 st.tuples(st.just("drain"), st.integers(0, 20))), min_size=1, max_size=20))
def test_pfs_keep_keeps_the_newest_persisted_checkpoints(tmp_path_factory, keep, pfs_keep, events):
    """pfs_keep against a model: the PFS holds the `pfs_keep` newest persisted checkpoints (by their
    order in the series, whatever order their drains finish in); one pruned while still in memory
    stays readable there, no longer selected for the PFS; one pruned out of memory is gone."""
    cat = Catalog(str(tmp_path_factory.mktemp("state")))
    cat.set_policy("ns", Policy(persist_every=1, keep_versions=keep, pfs_keep=pfs_keep))
    alive = {"b0"}
    files: dict[int, list[str]] = {}
    on_pfs: set[int] = set()  # the model
    pruned: set[int] = set()
    n = 0
    for kind, arg in events:
        if kind == "step":
            seq = len(files) + 1
            files[seq] = [f"/run/iter_{10 * seq:07d}/rank{r}.pt" for r in range(arg)]
            for path in files[seq]:
                n += 1
                cat.commit("ns", path, 10, [(ChunkKey(n.to_bytes(16, "big"), 10), ["b0"])], alive)
                cat.apply_retention("ns", path)
        elif kind == "drain" and files:
            seq = 1 + arg % len(files)
            work = [t for t in cat.drain_work("b0", 10_000) if t.path in files[seq]]
            if not work:
                continue
            outcome = cat.drain_done("b0", [(t.id, f"ns{t.path}/v1.c{t.index}.chunk", False, "", 10) for t in work],
                                     alive)
            for path in files[seq]:
                cat.apply_retention("ns", path)
            cat.apply_pfs_keep("ns", outcome.on_pfs.get("ns", []))
            on_pfs.add(seq)
            newest = set(sorted(on_pfs)[-pfs_keep:])
            pruned |= on_pfs - newest
            on_pfs = newest
        persisted = {c["seq"] for c in cat.checkpoints("ns") if c["state"] == "persisted"}
        assert persisted == on_pfs
        for seq in pruned:
            for path in files[seq]:
                versions = cat.versions("ns", path)
                assert not versions or (versions[-1].in_memory and not versions[-1].persist), (seq, path, versions)
    copies, _ = cat.take_pfs_trash()
    assert len(copies) == sum(len(files[seq]) for seq in pruned)
    cat.close()
