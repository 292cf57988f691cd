"""Policies count checkpoints, not versions of a path (real processes): with persist_every 3 and
keep 2, exactly checkpoints 1, 3, 6 of each common layout reach the PFS, memory holds at most the
2 newest checkpoints before the one being written, and a tracker file on the PFS never names a
checkpoint that is not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MiB, random_bytes, wait_for

from memstage.drainer.restore import list_pfs, restore
from memstage.errors import InvalidArgument, NotFound
from memstage.manager.checkpoints import step_of

pytestmark = pytest.mark.timeout(180)

STEPS = range(1, 8)
PERSISTED = {1, 3, 6}


def megatron(step: int) -> dict[str, bytes]:
    d = f"/run/iter_{step:07d}"
    return {f"{d}/mp_rank_00/model_optim_rng.pt": random_bytes(MiB + step),
            f"{d}/mp_rank_01/model_optim_rng.pt": random_bytes(MiB),
            "/run/latest_checkpointed_iteration.txt": str(step).encode()}


def torchtitan(step: int) -> dict[str, bytes]:
    return {f"/checkpoint/step-{step}/__0_0.distcp": random_bytes(MiB),
            f"/checkpoint/step-{step}/__1_0.distcp": random_bytes(MiB // 2),
            f"/checkpoint/step-{step}/.metadata": random_bytes(1000)}


def numpy_ranks(step: int) -> dict[str, bytes]:
    return {f"/ckpt/rank{r}_step{step}.npy": random_bytes(MiB) for r in range(2)}


def overwritten(step: int) -> dict[str, bytes]:
    return {"/state/model.bin": random_bytes(MiB + step)}


def step_files(files: dict[str, bytes], step: int) -> dict[str, bytes]:
    """The files of one checkpoint that carry the step in their path (not the tracker)."""
    return {p: d for p, d in files.items() if step_of(p) is not None or "/state/" in p}


@pytest.mark.parametrize("layout", [megatron, torchtitan, numpy_ranks, overwritten], ids=lambda f: f.__name__)
def test_persist_every_3_and_keep_2_count_checkpoints(local_cluster, tmp_path, layout):
    cluster = local_cluster(benefactors=2, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=3, keep_versions=2)
    written: dict[int, dict[str, bytes]] = {}
    for step in STEPS:
        written[step] = layout(step)
        for path, data in written[step].items():
            c.pipe(path, data)
    # The selected checkpoints drain; the others never do.
    selected = [(p, step) for step in PERSISTED for p in step_files(written[step], step)]

    def version_of(path: str, step: int) -> dict | None:
        """The version of `path` that checkpoint `step` wrote (None: it is gone)."""
        try:
            versions = c.versions(path)
        except NotFound:
            return None
        number = step if layout is overwritten else 1
        return next((v for v in versions if v["version"] == number), None)

    wait_for(lambda: all((version_of(p, s) or {}).get("persisted") for p, s in selected), timeout=60,
             what="checkpoints 1, 3 and 6 to drain")
    pfs = cluster.root / "pfs"
    on_pfs = {(v.path, v.version) for v in list_pfs(pfs, "default")}
    for step in STEPS:
        for path in step_files(written[step], step):
            version = step if layout is overwritten else 1
            assert ((path, version) in on_pfs) == (step in PERSISTED), (path, step)
    # Memory holds 2 checkpoints besides the one being written: steps 5, 6 and 7 (which may still
    # be written: a step directory gets files until the next one starts), or versions 6 and 7 of an
    # overwritten file (a committed version is whole). Older ones left it: the persisted ones stay
    # readable from the PFS, the others are gone.
    kept = 6 if layout is overwritten else 5
    for step in STEPS:
        for path in step_files(written[step], step):
            version = version_of(path, step)
            if step >= kept:
                assert version is not None and version["in_memory"], (path, step, version)
            elif step in PERSISTED:
                assert version is not None and not version["in_memory"] and version["persisted"], (path, step)
                if layout is not overwritten:
                    assert c.cat(path) == written[step][path]
            else:
                assert version is None, (path, step, version)
    # Megatron's tracker: the PFS copy names a checkpoint whose files are all there.
    if layout is megatron:
        wait_for(lambda: any(v.path == "/run/latest_checkpointed_iteration.txt" for v in list_pfs(pfs, "default")),
                 timeout=30, what="the tracker to drain")
        out = tmp_path / "tracker"
        restore(pfs, "default", "/run/latest_checkpointed_iteration.txt", out)
        named = int(out.read_text())
        assert named in PERSISTED
        for path in step_files(written[named], named):
            restore(pfs, "default", path, tmp_path / "f")
            assert (tmp_path / "f").read_bytes() == written[named][path]
    if layout is not overwritten:  # two looks at a checkpoint still draining could see it change between them
        wait_for(lambda: all(ck["state"] != "draining" for ck in c.checkpoints()), timeout=30,
                 what="the checkpoints' drains to end")
    listed = c.checkpoints() if layout is not overwritten else []
    if layout is megatron:  # the command line shows the same
        out = subprocess.run([sys.executable, "-m", "memstage", "checkpoints", "--manager", cluster.manager_address,
                              "--json"], capture_output=True, text=True, timeout=60, check=True).stdout
        assert [(ck["step"], ck["state"]) for ck in json.loads(out)] == [(ck["step"], ck["state"]) for ck in listed]
    if listed:
        # Listed: what still holds files (in memory or on the PFS); 2 and 4 left memory unpersisted.
        assert [ck["step"] for ck in listed] == sorted(PERSISTED | {5, 6, 7})
        assert {ck["step"] for ck in listed if ck["persist"]} == PERSISTED
        assert {ck["step"] for ck in listed if ck["state"] == "persisted"} == PERSISTED


def test_per_step_directories_on_the_mount_do_not_fill_the_deployment(mounted):
    """DCP's layout written through the mount, 12 checkpoints of 16 MiB into 2 x 48 MiB: older
    checkpoints leave memory as new ones start (keep 2), the selected ones after draining."""
    point, cluster, _ = mounted(benefactors=2, memory=48 * MiB)
    c = cluster.client()
    c.policy(persist_every=3, keep_versions=2)
    for step in range(1, 13):
        d = point / f"step_{step}"
        d.mkdir()
        for r in range(2):
            (d / f"__{r}_0.distcp").write_bytes(random_bytes(8 * MiB))
        (d / ".metadata").write_bytes(b"m" * 100)
    steps = {int(p.name.split("_")[1]) for p in Path(point).iterdir() if p.name.startswith("step_")}
    assert steps == set(range(1, 13))
    assert os.path.getsize(point / "step_12" / "__1_0.distcp") == 8 * MiB


def test_a_new_deployment_on_the_same_pfs_restarts_from_the_last_persisted_checkpoint(local_cluster, mounted,
                                                                                       tmp_path):
    """A job chain: the first job's deployment is SIGKILLed whole after checkpoint 7; the next job's
    new deployment on the same PFS lists the persisted checkpoints, and the application restarts
    through the mount from the one its tracker file names."""
    pfs = tmp_path / "shared-pfs"
    pfs.mkdir()
    first = local_cluster(benefactors=2, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    c = first.client()
    c.policy(persist_every=3, keep_versions=2)
    written = {step: megatron(step) for step in STEPS}
    for step in STEPS:
        for path, data in written[step].items():
            c.pipe(path, data)
    tracker = "/run/latest_checkpointed_iteration.txt"
    wait_for(lambda: {v.version for v in list_pfs(pfs, "default", tracker)} == PERSISTED, timeout=60,
             what="the tracker of checkpoints 1, 3 and 6 to drain")
    for proc in [*first.benefactors, first.manager]:
        proc.kill()
    second = local_cluster(benefactors=2, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    point, _, _ = mounted(cluster=second)
    named = int((point / tracker.lstrip("/")).read_text())
    assert named == 6
    for path, data in step_files(written[named], named).items():
        assert (point / path.lstrip("/")).read_bytes() == data
    assert sorted(os.listdir(point / "run")) == ["iter_0000001", "iter_0000003", "iter_0000006",
                                                 "latest_checkpointed_iteration.txt"]
    listed = second.client().checkpoints()
    assert [(ck["step"], ck["state"]) for ck in listed] == [(s, "persisted") for s in sorted(PERSISTED)]
    # The next job's checkpoints go on from there.
    again = second.client()
    for path, data in megatron(8).items():
        again.pipe(path, data)
    assert int(again.cat(tracker)) == 8


def test_an_explicit_checkpoint_counts_files_of_any_name(local_cluster):
    """Names memstage cannot read a step from (a directory per run phase, a timestamp): the writer
    says which checkpoint its files belong to, and the policies count those."""
    cluster = local_cluster(benefactors=2, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=3, keep_versions=2)
    names = {step: [f"/snap/{'abcdefg'[step - 1]}/model.bin", f"/snap/{'abcdefg'[step - 1]}/optim.bin"]
             for step in STEPS}
    for step in STEPS:
        with c.checkpoint(step):
            for path in names[step]:
                c.pipe(path, random_bytes(MiB // 2))
    wait_for(lambda: all(c.versions(p)[-1]["persisted"] for s in PERSISTED for p in names[s]), timeout=60,
             what="explicit checkpoints 1, 3 and 6 to drain")
    on_pfs = {v.path for v in list_pfs(cluster.root / "pfs", "default")}
    assert on_pfs == {p for s in PERSISTED for p in names[s]}
    default = next(n for n in cluster.status()["namespaces"] if n["namespace"] == "default")
    assert default["bytes_on_pfs"] == len(on_pfs) * (MiB // 2)  # status says what is on the PFS
    listed = c.checkpoints()
    assert [(ck["series"], ck["step"], ck["persist"]) for ck in listed] == [("@", s, s in PERSISTED) for s in STEPS
                                                                            if s in PERSISTED or s >= 5]
    for step in STEPS:
        for path in names[step]:
            if step >= 5:
                assert c.versions(path)[-1]["in_memory"]
            elif step not in PERSISTED:
                with pytest.raises(NotFound):
                    c.versions(path)
    with pytest.raises(InvalidArgument), c.checkpoint(-1):
        pass


def test_a_job_script_marks_checkpoints_of_any_name_written_through_the_mount(mounted):
    """`memstage checkpoint begin STEP` / `end` around tools that know nothing of memstage: files
    written through the mount in between form one checkpoint, whatever their names."""
    point, cluster, _ = mounted(benefactors=2, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=3, keep_versions=2)
    mark = [sys.executable, "-m", "memstage", "checkpoint", "--manager", cluster.manager_address]
    names = {step: [f"snap/{'abcdefg'[step - 1]}/model.bin", f"snap/{'abcdefg'[step - 1]}/optim.bin"]
             for step in STEPS}
    for step in STEPS:
        out = subprocess.run([*mark, "begin", str(step)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and f"checkpoint {step} begins" in out.stdout, out.stderr
        for name in names[step]:
            (point / name).parent.mkdir(parents=True, exist_ok=True)
            (point / name).write_bytes(random_bytes(MiB // 2))
        out = subprocess.run([*mark, "end"], capture_output=True, text=True, timeout=30)
        assert f"checkpoint {step} ended" in out.stdout, out.stderr
    pfs = cluster.root / "pfs"
    wanted = {"/" + n for s in PERSISTED for n in names[s]}
    wait_for(lambda: {v.path for v in list_pfs(pfs, "default") if v.complete} == wanted, timeout=60,
             what="checkpoints 1, 3 and 6 to drain")
    listed = c.checkpoints()
    assert [(ck["series"], ck["step"]) for ck in listed] == [("@", s) for s in STEPS if s in PERSISTED or s >= 5]
    # After `end`, a file belongs to no checkpoint: it is a version of its own.
    (point / "notes.txt").write_text("free")
    assert len(c.checkpoints()) == len(listed)
    bad = subprocess.run([*mark, "end", "3"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "takes no STEP" in bad.stderr and "Traceback" not in bad.stderr
