"""Paths as long as a local file system takes, through a real FUSE mount: made with relative calls
(as a program deep in a tree makes them), drained to a PFS copy past PATH_MAX, restored from the
PFS alone, and removed from it when the file is deleted. Real processes, no mocks."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MiB, random_bytes, wait_for
from test_deep_pfs import deep_path

from memstage.drainer import dirfd
from memstage.drainer.layout import version_dir
from memstage.drainer.restore import list_pfs

pytestmark = pytest.mark.timeout(180)

if not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None:
    pytest.skip("needs /dev/fuse and fusermount3 (Debian's fuse3)", allow_module_level=True)

PATH_MAX = 4096


def walk_to(top: Path, parents: list[str], make: bool = False) -> int:
    """A descriptor of top/<parents>, one component at a time (mkdir'ing them with `make`)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in parents:
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
            deeper = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    except BaseException:
        os.close(fd)  # nothing of the mount stays open: it must unmount
        raise
    return fd


def write_deep(top: Path, path: str, data: bytes) -> None:
    *parents, name = path.strip("/").split("/")
    fd = walk_to(top, parents, make=True)
    try:
        f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        dirfd.write_all(f, data)
        os.close(f)
    finally:
        os.close(fd)


def read_deep(top: Path, path: str) -> bytes:
    *parents, name = path.strip("/").split("/")
    fd = walk_to(top, parents)
    try:
        return dirfd.read_file(fd, name)
    finally:
        os.close(fd)


def unlink_deep(top: Path, path: str) -> None:
    *parents, name = path.strip("/").split("/")
    fd = walk_to(top, parents)
    try:
        os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def persisted(pfs: Path, path: str) -> bool:
    return any(v.complete for v in list_pfs(pfs, "default", path))


def memstage_restore(pfs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memstage", "restore", "--pfs", str(pfs), "--namespace", "default",
                           *args], capture_output=True, text=True, timeout=60)


def test_paths_of_path_max_and_past_it_drain_restore_and_leave_the_pfs(mounted, local_cluster, tmp_path):
    pfs = tmp_path / "pfs"
    pfs.mkdir()
    cluster = local_cluster(benefactors=1, memory=64 * MiB, pfs=pfs, manager_args=("--pfs", str(pfs)))
    point, _, _ = mounted(cluster=cluster)
    files = {deep_path(PATH_MAX - 1, last="at_path_max.bin"): random_bytes(2 * MiB + 17),
             deep_path(6000, last="past_path_max.bin"): random_bytes(MiB + 5)}
    for path, data in files.items():
        write_deep(point, path, data)
        assert read_deep(point, path) == data
    assert sorted(len(p.encode()) for p in files) == [PATH_MAX - 1, 6000]
    wait_for(lambda: all(persisted(pfs, p) for p in files), timeout=60, what="both files to drain")
    root = dirfd.open_root(pfs)
    try:
        for path, data in files.items():
            directory = version_dir(pfs, "default", path)
            assert len(str(directory).encode()) > PATH_MAX  # the PFS copy is past what one call can name
            with dirfd.opened(root, directory.parts) as d:
                chunks = [n for n in os.listdir(d) if n.endswith(".chunk")]
                assert len(chunks) == -(-len(data) // MiB)
    finally:
        os.close(root)
    # From the PFS alone: each file, then the tree, byte for byte.
    for n, (path, data) in enumerate(files.items()):
        out = tmp_path / f"restored{n}"
        result = memstage_restore(pfs, path, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == data
    result = memstage_restore(pfs, "/", "--out", str(tmp_path / "tree"))
    assert result.returncode == 0, result.stderr
    for path, data in files.items():
        assert read_deep(tmp_path / "tree", path) == data
    # Deleted through the mount: the drained copies leave the PFS, the empty directories too.
    for path in files:
        unlink_deep(point, path)
    wait_for(lambda: not any(list_pfs(pfs, "default")), timeout=60, what="the copies to leave the PFS")
    wait_for(lambda: os.listdir(pfs / "default") == [], timeout=30, what="the emptied directories to go")
