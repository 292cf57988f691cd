"""Prefetch (real processes): a checkpoint an earlier deployment drained to the PFS is loaded back
into the memory of a new deployment on the same PFS, by the benefactors, and then read from memory;
what does not fit is reported and still read from the PFS."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MiB, child_pids, random_bytes, wait_for

from memstage.drainer.restore import list_pfs
from memstage.units import format_size

pytestmark = pytest.mark.timeout(120)


def _drained_job(local_cluster, pfs: Path, files: dict[str, bytes]) -> None:
    """A first job writes `files` with every version persisted, waits until they are on the PFS,
    and its whole deployment is SIGKILLed."""
    first = local_cluster(benefactors=2, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    c = first.client()
    c.policy(persist_every=1)
    for path, data in files.items():
        c.pipe(path, data)
    wait_for(lambda: {v.path for v in list_pfs(pfs, "default") if v.complete} == set(files), timeout=60,
             what="the checkpoint to drain")
    for proc in [*first.benefactors, first.manager]:
        proc.kill()


def _checkpoint(step: int) -> dict[str, bytes]:
    return {f"/ckpt/step_{step}/rank{r}.bin": random_bytes(3 * MiB + r * 1000) for r in range(3)}


def test_prefetch_loads_a_drained_checkpoint_into_memory(local_cluster, tmp_path):
    pfs = tmp_path / "pfs"
    pfs.mkdir()
    files = {**_checkpoint(1), **_checkpoint(2)}
    _drained_job(local_cluster, pfs, files)
    second = local_cluster(benefactors=2, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    c = second.client()
    latest = {p: d for p, d in files.items() if "/step_2/" in p}
    assert all(not c.versions(p)[-1]["in_memory"] for p in latest)
    before = second.memory_used()
    seen: list[tuple[int, int]] = []
    done = c.prefetch("/ckpt/step_2", progress=lambda loaded, total: seen.append((loaded, total)), timeout=60)
    total = sum(len(d) for d in latest.values())
    assert done == {"files": 3, "bytes": total, "loaded_bytes": total, "failed_chunks": 0, "error": ""}
    assert seen[0][1] == total and seen[-1] == (total, total)
    assert all(c.versions(p)[-1]["in_memory"] for p in latest)
    # Held by the benefactors now (their heartbeats report it), and step 1 was left on the PFS.
    wait_for(lambda: second.memory_used() - before >= total, what="the benefactors to report the loaded chunks")
    assert all(not c.versions(p)[-1]["in_memory"] for p in files if "/step_1/" in p)
    # Read from memory: the PFS copy is moved away and the bytes still come back.
    (pfs / "default" / "ckpt").rename(tmp_path / "moved")
    for path, data in latest.items():
        assert c.cat(path) == data
    # A second prefetch has nothing left to do.
    assert c.prefetch("/ckpt/step_2", timeout=10)["loaded_bytes"] == total


def test_prefetch_reports_what_does_not_fit_and_reads_it_from_the_pfs(local_cluster, tmp_path):
    pfs = tmp_path / "pfs"
    pfs.mkdir()
    files = {f"/big/part{i}.bin": random_bytes(8 * MiB) for i in range(4)}
    _drained_job(local_cluster, pfs, files)
    small = local_cluster(benefactors=1, memory=16 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    cli = [sys.executable, "-m", "memstage", "prefetch", "/big", "--manager", small.manager_address,
           "--timeout", "60"]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=90)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "could not be loaded" in out.stderr and "read from the PFS" in out.stderr
    assert out.stdout.startswith("prefetched /big: 4 files")
    c = small.client()
    for path, data in files.items():
        assert c.cat(path) == data  # what is not in memory is read from the PFS
    listed = json.loads(subprocess.run([sys.executable, "-m", "memstage", "status", "--json", "--manager",
                                        small.manager_address], capture_output=True, text=True, timeout=30,
                                       check=True).stdout)
    assert listed["benefactors"][0]["memory_used"] <= 16 * MiB


def test_prefetch_of_a_missing_path_is_a_clear_error(local_cluster):
    cluster = local_cluster(benefactors=1)
    out = subprocess.run([sys.executable, "-m", "memstage", "prefetch", "/nothing/here", "--manager",
                          cluster.manager_address], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "/nothing/here" in out.stderr and "Traceback" not in out.stderr


def _megatron(step: int) -> dict[str, bytes]:
    d = f"/run/iter_{step:07d}"
    return {f"{d}/mp_rank_00/model_optim_rng.pt": random_bytes(2 * MiB + step),
            f"{d}/mp_rank_01/model_optim_rng.pt": random_bytes(2 * MiB),
            "/run/latest_checkpointed_iteration.txt": str(step).encode()}


def test_prefetch_latest_loads_only_the_newest_persisted_checkpoint(local_cluster, tmp_path):
    pfs = tmp_path / "pfs"
    pfs.mkdir()
    files: dict[str, bytes] = {}
    for step in range(1, 5):
        files.update(_megatron(step))
    _drained_job(local_cluster, pfs, {p: d for p, d in files.items() if "latest_" not in p}
                 | {"/run/latest_checkpointed_iteration.txt": b"4"})
    second = local_cluster(benefactors=2, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    c = second.client()
    done = c.prefetch(latest=True, timeout=60)
    newest = [p for p in files if "iter_0000004" in p]
    assert done["files"] == len(newest) and done["loaded_bytes"] == done["bytes"] == sum(len(files[p]) for p in newest)
    assert all(c.versions(p)[-1]["in_memory"] for p in newest)
    assert not any(c.versions(p)[-1]["in_memory"] for p in files if "iter_0000003" in p)


def test_up_prefetches_the_latest_checkpoint_when_asked(local_cluster, tmp_path):
    pfs = tmp_path / "pfs"
    pfs.mkdir()
    step = {p: d for p, d in _megatron(1).items() if "latest_" not in p}
    _drained_job(local_cluster, pfs, step)
    proc = subprocess.Popen([sys.executable, "-m", "memstage", "up", "--benefactors", "1", "--memory", "32MiB",
                             "--listen", "127.0.0.1:0", "--state", str(tmp_path / "state2"), "--pfs", str(pfs),
                             "--heartbeat-interval", "1s", "--insecure", "--prefetch-latest"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("prefetched the latest checkpoint" in line for line in lines):
            line = proc.stdout.readline()
            assert line, f"memstage up ended: {lines}"
            lines.append(line)
        assert f"prefetched the latest checkpoint: 2 files, {format_size(sum(map(len, step.values())))} of" in lines[-1]
    finally:
        # Its manager and benefactor run in sessions of their own: found now, stopped by PID if
        # `up` does not stop them (a stop that hangs fails the test with what up said).
        spawned = child_pids(proc.pid)
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in [proc.pid, *spawned]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"memstage up did not stop within 30 s of SIGTERM:\n{out}\n{err[-3000:]}") from None


def test_a_new_deployment_shows_mode_owner_times_and_other_names_from_the_manifest(local_cluster, tmp_path):
    """What chunk file names do not carry comes back from the manifest beside them."""
    import stat

    pfs = tmp_path / "pfs"
    pfs.mkdir()
    first = local_cluster(benefactors=1, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    c = first.client()
    c.policy(persist_every=1)
    data = random_bytes(MiB + 3)
    c.pipe("/ckpt/model.bin", data)
    c.setattr("/ckpt/model.bin", mode=0o640, uid=1234, gid=4321, mtime_ns=1_700_000_000_123_456_789)
    c.link("/ckpt/model.bin", "/ckpt/model-link.bin")
    directory = pfs / "default" / "ckpt" / "model.bin"

    def manifest() -> dict:
        # Not "*.manifest.json": that also matches a manifest being written, under its temporary
        # name (.tmp.*), which a restore does not read.
        found = list(directory.glob("v*.manifest.json"))
        return json.loads(found[0].read_text()) if found else {}

    # Written once persisted, and again as the metadata and names change.
    wait_for(lambda: manifest().get("mode") == 0o640 and manifest().get("links") == ["/ckpt/model-link.bin"],
             timeout=30, what="the manifest")
    # A restore from the PFS alone keeps them too (the owner only for root: left as it is).
    from memstage.drainer.restore import restore_tree

    assert restore_tree(pfs, "default", "/ckpt", tmp_path / "out").failures == []
    restored = (tmp_path / "out" / "model.bin").stat()
    assert stat.S_IMODE(restored.st_mode) == 0o640 and restored.st_mtime_ns == 1_700_000_000_123_456_789
    for proc in [*first.benefactors, first.manager]:
        proc.kill()
    second = local_cluster(benefactors=1, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    c2 = second.client()
    info = c2.stat("/ckpt/model.bin")
    assert stat.S_IMODE(info.mode) == 0o640 and (info.uid, info.gid) == (1234, 4321)
    assert info.mtime_ns == 1_700_000_000_123_456_789
    assert c2.cat("/ckpt/model-link.bin") == data
    assert c2.stat("/ckpt/model-link.bin").ino == info.ino
    # Deleting the file removes its manifest with its chunk files.
    c2.rm("/ckpt/model-link.bin")
    c2.rm("/ckpt/model.bin")
    wait_for(lambda: not directory.exists(), timeout=30, what="the chunk files and manifest to leave the PFS")
