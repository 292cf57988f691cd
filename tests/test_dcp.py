"""PyTorch Distributed Checkpoint through memstage (real processes): a training job chain saves a
model's state_dict with DCP every step, through the fsspec filesystem (FsspecWriter) or through
the mount (FileSystemWriter); the policies count DCP's step directories as checkpoints, so with
persist_every 3 exactly checkpoints 1, 3, 6 reach the PFS, every file of them under its name
(.metadata, which DCP writes as .metadata.tmp and renames, included). The first job's deployment
is SIGKILLed whole; the next job's deployment on the same PFS prefetches the last persisted
checkpoint and DCP loads it back bit for bit."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import Cluster, MiB, wait_for
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

from memstage.drainer.restore import list_pfs

pytestmark = pytest.mark.timeout(180)

DCP_FILES = {"__0_0.distcp", ".metadata"}  # one process, one file per rank, and the metadata


def model_state(step: int) -> dict[str, object]:
    """The state_dict of a small model at `step` (~2.2 MiB of tensors), recomputable from the step."""
    g = torch.Generator().manual_seed(1000 + step)
    return {"encoder.weight": torch.randn(512, 512, generator=g),
            "encoder.bias": torch.randn(512, generator=g),
            "decoder.weight": torch.randn(640, 384, generator=g),
            "decoder.bias": torch.randn(640, generator=g),
            "embedding": torch.randint(0, 1 << 30, (1024, 32), generator=g, dtype=torch.int64),
            "step": step}


def template() -> dict[str, object]:
    """What a restarting job loads into: tensors of the right shapes, all zero."""
    return {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else 0 for k, v in model_state(0).items()}


def assert_is_step(loaded: dict[str, object], step: int) -> None:
    expected = model_state(step)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(loaded[key], value), key  # type: ignore[arg-type]
        else:
            assert loaded[key] == value, key


def url(cluster: Cluster, path: str) -> str:
    """The fsspec URL of `path` in the default namespace of `cluster`."""
    return f"memstage://{cluster.manager_address}/default{path}"


def dcp_on_pfs(pfs: Path) -> dict[str, bool]:
    """What the PFS holds of the /dcp tree: path -> some version of it is complete."""
    found: dict[str, bool] = {}
    for v in list_pfs(pfs, "default"):
        if v.path.startswith("/dcp/"):
            found[v.path] = found.get(v.path, False) or v.complete
    return found


def files_of(steps: set[int]) -> set[str]:
    return {f"/dcp/step_{s}/{name}" for s in steps for name in DCP_FILES}


def wait_drained(cluster: Cluster, pfs: Path, persisted: set[int]) -> None:
    """Until the manager says checkpoints `persisted` are on the PFS; then the PFS holds exactly
    their files, each complete under the name DCP gave it, and nothing of the other steps."""
    c = cluster.client()
    wait_for(lambda: {ck["step"] for ck in c.checkpoints() if ck["state"] == "persisted"} == persisted
             and all(c.versions(p)[-1]["persisted"] for p in files_of(persisted)), timeout=60,
             what=f"checkpoints {sorted(persisted)} to drain")
    expected = dict.fromkeys(files_of(persisted), True)
    with contextlib.suppress(AssertionError):  # the comparison below says what differs
        wait_for(lambda: dcp_on_pfs(pfs) == expected, timeout=10)
    assert dcp_on_pfs(pfs) == expected


def test_dcp_fsspec_writer_job_chain(local_cluster, tmp_path):
    pfs = tmp_path / "shared-pfs"
    pfs.mkdir()
    first = local_cluster(benefactors=2, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    c = first.client()
    c.policy(persist_every=3, keep_versions=2)
    for step in range(1, 8):
        writer = FsspecWriter(url(first, f"/dcp/step_{step}"), rpc_timeout="10s")  # kwargs: Client settings
        dcp.save(model_state(step), storage_writer=writer, no_dist=True)
    assert {p.rsplit("/", 1)[1] for p in c.find("/dcp/step_7")} == DCP_FILES  # the .tmp was renamed

    persisted = {1, 3, 6}
    wait_drained(first, pfs, persisted)
    listed = first.client().checkpoints()
    assert [(ck["step"], ck["state"]) for ck in listed if ck["step"] in persisted] == \
        [(s, "persisted") for s in sorted(persisted)]
    assert {ck["step"] for ck in listed if ck["persist"]} == persisted
    assert not {2, 4} & {ck["step"] for ck in listed}  # they left memory, unpersisted

    for proc in [*first.benefactors, first.manager]:
        proc.kill()
    second = local_cluster(benefactors=2, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    again = second.client()
    assert sorted(again.ls("/dcp", detail=False)) == [f"/dcp/step_{s}" for s in sorted(persisted)]
    assert {p.rsplit("/", 1)[1] for p in again.find("/dcp/step_6")} == DCP_FILES
    done = again.prefetch("/dcp/step_6", timeout=60)
    assert done["files"] == len(DCP_FILES) and done["failed_chunks"] == 0, done
    assert done["loaded_bytes"] == done["bytes"] > 2 * MiB, done
    # Read from memory: the PFS copy is moved away and DCP still loads the checkpoint.
    (pfs / "default" / "dcp").rename(tmp_path / "moved")
    state = template()
    dcp.load(state, storage_reader=FsspecReader(url(second, "/dcp/step_6"), rpc_timeout="10s"), no_dist=True)
    assert_is_step(state, 6)


def test_dcp_fsspec_writer_takes_the_manager_and_namespace_as_options(local_cluster):
    """FsspecWriter and FsspecReader hand their keyword arguments to fsspec as the filesystem's
    options: memstage:///PATH with manager= and namespace= names PATH in that namespace."""
    cluster = local_cluster(benefactors=1)
    options = {"manager": cluster.manager_address, "namespace": "default", "rpc_timeout": "10s"}
    dcp.save(model_state(1), storage_writer=FsspecWriter("memstage:///dcp/options", **options), no_dist=True)
    assert {p.rsplit("/", 1)[1] for p in cluster.client().find("/dcp/options")} == DCP_FILES
    state = template()
    dcp.load(state, storage_reader=FsspecReader("memstage:///dcp/options", **options), no_dist=True)
    assert_is_step(state, 1)


def test_dcp_on_the_mount_restarts_in_a_new_deployment(local_cluster, mounted, tmp_path):
    pfs = tmp_path / "shared-pfs"
    pfs.mkdir()
    first = local_cluster(benefactors=2, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    point, _, mount = mounted(cluster=first)
    first.client().policy(persist_every=3, keep_versions=2)
    for step in range(1, 5):
        dcp.save(model_state(step), storage_writer=FileSystemWriter(str(point / "dcp" / f"step_{step}")),
                 no_dist=True)
    assert set(os.listdir(point / "dcp" / "step_4")) == DCP_FILES

    wait_drained(first, pfs, {1, 3})

    mount.kill()
    mount.wait()
    subprocess.run(["fusermount3", "-uz", str(point)], check=False)  # the dead mount's stale mountpoint
    for proc in [*first.benefactors, first.manager]:
        proc.kill()
    second = local_cluster(benefactors=2, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    point2, _, _ = mounted(cluster=second)
    assert sorted(os.listdir(point2 / "dcp")) == ["step_1", "step_3"]
    assert set(os.listdir(point2 / "dcp" / "step_3")) == DCP_FILES
    state = template()
    dcp.load(state, storage_reader=FileSystemReader(str(point2 / "dcp" / "step_3")), no_dist=True)
    assert_is_step(state, 3)
