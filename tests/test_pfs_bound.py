"""A bounded PFS (real processes): pfs_keep K keeps the K newest persisted checkpoints on the PFS,
deleting a file removes its drained chunk files, and `memstage gc` finds exactly the orphans."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MiB, random_bytes, wait_for

from memstage.chunks import ChunkKey
from memstage.drainer.layout import chunk_name, version_dir, write_chunk
from memstage.drainer.restore import list_pfs, restore, restore_tree

pytestmark = pytest.mark.timeout(150)

TRACKER = "/run/latest_checkpointed_iteration.txt"


def _megatron(step: int) -> dict[str, bytes]:
    d = f"/run/iter_{step:07d}"
    return {f"{d}/mp_rank_00/model_optim_rng.pt": random_bytes(MiB // 2 + step),
            f"{d}/mp_rank_01/model_optim_rng.pt": random_bytes(MiB // 2),
            TRACKER: str(step).encode()}


def _cluster(local_cluster, pfs: Path, **kw):
    pfs.mkdir(exist_ok=True)
    return local_cluster(pfs=pfs, manager_args=("--pfs", str(pfs)), **kw)


def _steps_on_pfs(pfs: Path) -> set[str]:
    return {v.path.split("/")[2] for v in list_pfs(pfs, "default") if v.path.startswith("/run/iter_")}


def test_pfs_keep_2_over_10_checkpoints_leaves_the_2_newest(local_cluster, tmp_path):
    pfs = tmp_path / "pfs"
    cluster = _cluster(local_cluster, pfs, benefactors=2, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=1, keep_versions=2, pfs_keep=2)
    written = {}
    for step in range(1, 11):
        written[step] = _megatron(step)
        for path, data in written[step].items():
            c.pipe(path, data)
    wait_for(lambda: _steps_on_pfs(pfs) == {"iter_0000009", "iter_0000010"}, timeout=60,
             what="checkpoints 1-8 to leave the PFS")
    # The tracker's PFS copy names a checkpoint that is there, and it and its files restore.
    wait_for(lambda: {v.version for v in list_pfs(pfs, "default", TRACKER)} == {9, 10}, timeout=30,
             what="the tracker's older versions to leave the PFS")
    restore(pfs, "default", TRACKER, tmp_path / "tracker")
    assert (tmp_path / "tracker").read_bytes() == b"10"
    tree = restore_tree(pfs, "default", "/run", tmp_path / "restored")
    assert tree.failures == []
    for path, data in written[10].items():
        assert (tmp_path / "restored" / path.removeprefix("/run/")).read_bytes() == data
    # The namespace no longer lists what left memory and the PFS: checkpoint 8 is still in memory
    # (keep 2 besides the newest) but no longer on the PFS; 9 and 10 are persisted.
    assert [(ck["step"], ck["state"]) for ck in c.checkpoints()] == [(8, "in_memory"), (9, "persisted"),
                                                                     (10, "persisted")]
    assert sorted(c.ls("/run", detail=False)) == ["/run/iter_0000008", "/run/iter_0000009", "/run/iter_0000010",
                                                  TRACKER]
    for path, data in written[9].items():
        if path != TRACKER:
            assert c.cat(path) == data
    assert not any(p.name.startswith("iter_0000001") for p in (pfs / "default" / "run").iterdir())


def test_deleting_a_file_removes_its_drained_files(local_cluster, tmp_path):
    pfs = tmp_path / "pfs"
    cluster = _cluster(local_cluster, pfs, benefactors=1, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=1)
    shared = random_bytes(MiB)
    c.pipe("/gone/a.bin", shared + random_bytes(MiB))
    c.pipe("/gone/a.bin", shared + random_bytes(MiB))  # version 2: its first chunk is version 1's
    c.pipe("/kept.bin", shared)  # shares a chunk with the deleted file
    wait_for(lambda: {(v.path, v.version) for v in list_pfs(pfs, "default") if v.complete}
             == {("/gone/a.bin", 1), ("/gone/a.bin", 2), ("/kept.bin", 1)}, timeout=30, what="the drains")
    c.rm("/gone/a.bin")
    wait_for(lambda: not (pfs / "default" / "gone").exists(), timeout=30,
             what="the deleted file's chunk files to leave the PFS")
    assert {v.path for v in list_pfs(pfs, "default")} == {"/kept.bin"}
    restore(pfs, "default", "/kept.bin", tmp_path / "kept")
    assert (tmp_path / "kept").read_bytes() == shared
    assert c.cat("/kept.bin") == shared


def test_gc_dry_run_lists_exactly_the_orphans_and_gc_removes_them(local_cluster, tmp_path):
    pfs = tmp_path / "pfs"
    cluster = _cluster(local_cluster, pfs, benefactors=1, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=1)
    data = random_bytes(MiB + 5)
    c.pipe("/model.bin", data)
    wait_for(lambda: any(v.complete for v in list_pfs(pfs, "default", "/model.bin")), what="the drain")
    ours = next(iter(list_pfs(pfs, "default", "/model.bin"))).deployment
    now_ms = int(time.time() * 1000)
    orphans: set[str] = set()

    def plant(path: str, deployment: str, version: int, when_ms: int) -> str:
        blob = random_bytes(1000)
        key = ChunkKey.of(blob)
        name = chunk_name(version, 0, 1, 0, key, deployment, when_ms)
        write_chunk(version_dir(pfs, "default", path), name, [blob])
        return f"default/{path.strip('/')}/{name}"

    # A version of this deployment the catalog does not know, and an earlier deployment's file.
    orphans.add(plant("/model.bin", ours, 7, now_ms))
    orphans.add(plant("/old/run/state.bin", "0ldjob", 3, now_ms - 86_400_000))
    # A temporary file of a drain that died two hours ago is one too; a fresh one is not.
    tmp = pfs / "default" / f".tmp.1.2.{chunk_name(1, 0, 1, 0, ChunkKey.of(b'x'), ours, now_ms)}"
    tmp.write_bytes(b"x")
    os.utime(tmp, (time.time() - 7200, time.time() - 7200))
    orphans.add(str(tmp.relative_to(pfs)))
    (pfs / "default" / ".tmp.3.4.fresh").write_bytes(b"y")
    # Another deployment writing into the same directory now: left alone.
    plant("/other/now.bin", "n3wjob", 1, now_ms + 60_000)
    gc = [sys.executable, "-m", "memstage", "gc", "--manager", cluster.manager_address]
    out = subprocess.run([*gc, "--dry-run"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("default/")}
    assert listed == orphans
    assert "nothing removed" in out.stdout
    assert all((pfs / o).exists() for o in orphans)
    out = subprocess.run(gc, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"removed {len(orphans)} orphan files" in out.stdout
    assert not any((pfs / o).exists() for o in orphans)
    assert not (pfs / "default" / "old").exists()
    assert (pfs / "default" / ".tmp.3.4.fresh").exists() and (pfs / "default" / "other").exists()
    restore(pfs, "default", "/model.bin", tmp_path / "model")
    assert (tmp_path / "model").read_bytes() == data == c.cat("/model.bin")
    again = subprocess.run([*gc, "--dry-run"], capture_output=True, text=True, timeout=30)
    assert "0 orphan files" in again.stdout


def test_a_file_renamed_after_its_drain_is_on_the_pfs_under_its_new_name(local_cluster, tmp_path):
    """Write to a temporary name, rename into place (DCP's .metadata, most checkpoint writers): the
    PFS copy follows the name, so the next deployment finds the file where the job left it."""
    pfs = tmp_path / "pfs"
    first = _cluster(local_cluster, pfs, benefactors=1, memory=64 * MiB)
    c = first.client()
    c.policy(persist_every=1)
    data = random_bytes(MiB + 7)
    c.pipe("/ckpt/step_1/.metadata.tmp", data)
    wait_for(lambda: c.versions("/ckpt/step_1/.metadata.tmp")[-1]["persisted"], what="the drain")
    c.mv("/ckpt/step_1/.metadata.tmp", "/ckpt/step_1/.metadata")
    wait_for(lambda: {v.path for v in list_pfs(pfs, "default") if v.complete} == {"/ckpt/step_1/.metadata"},
             timeout=30, what="the PFS copy to follow the rename")
    assert c.versions("/ckpt/step_1/.metadata")[-1]["persisted"]
    for proc in [*first.benefactors, first.manager]:
        proc.kill()
    second = _cluster(local_cluster, pfs, benefactors=1, memory=64 * MiB)
    c2 = second.client()
    assert c2.ls("/ckpt/step_1", detail=False) == ["/ckpt/step_1/.metadata"]
    assert c2.cat("/ckpt/step_1/.metadata") == data


def test_a_policy_keeps_deleted_files_on_the_pfs(local_cluster, tmp_path):
    pfs = tmp_path / "pfs"
    cluster = _cluster(local_cluster, pfs, benefactors=1, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=1, keep_deleted=True)
    data = random_bytes(MiB)
    c.pipe("/archive/kept.bin", data)
    wait_for(lambda: c.versions("/archive/kept.bin")[-1]["persisted"], what="the drain")
    c.rm("/archive/kept.bin")
    # The manager removes deleted files and writes manifests in the same housekeeping round: once a
    # file committed after the delete has its manifest, the delete's turn has come and gone.
    c.pipe("/marker.bin", b"x")
    wait_for(lambda: list((pfs / "default" / "marker.bin").glob("v*.manifest.json")), what="the marker's manifest")
    restore(pfs, "default", "/archive/kept.bin", tmp_path / "kept")
    assert (tmp_path / "kept").read_bytes() == data
