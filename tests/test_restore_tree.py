"""Restoring a directory tree from the PFS alone, with real chunk files: no servers, no mocks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memstage.chunks import ChunkKey
from memstage.drainer.layout import chunk_name, scan, version_dir, write_chunk
from memstage.drainer.restore import is_tree, restore_tree
from memstage.errors import InvalidArgument, InvalidPath, NotFound

NS = "team"
T0 = 1_700_000_000_123  # a commit time in ms, with a millisecond part that must survive


def drain(root: Path, path: str, version: int, data: bytes, committed_ms: int, chunk: int = 1000,
          deployment: str = "ab12") -> list[Path]:
    """Write a version's chunk files the way a benefactor names them; returns them in index order."""
    directory = version_dir(root, NS, path)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    count = len(pieces) if data else 0
    return [write_chunk(directory, chunk_name(version, i, count, i * chunk, ChunkKey.of(piece), deployment,
                                              committed_ms), [piece])
            for i, piece in enumerate(pieces)]


@pytest.fixture
def pfs(tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    """A checkpoint tree on the PFS; returns the expected content and commit time of each file."""
    root = tmp_path / "pfs"
    expected: dict[str, tuple[bytes, int]] = {}
    for step in (1, 2):
        for rank in (0, 1):
            path = f"/ckpt/step_{step}/rank{rank}.bin"
            data = os.urandom(3500 + 100 * rank)
            when = T0 + 1000 * step + rank
            drain(root, path, 1, data, when)
            expected[path] = (data, when)
    # A later version of one file wins, and a still later incomplete one does not.
    newer = os.urandom(2500)
    drain(root, "/ckpt/step_2/rank0.bin", 2, newer, T0 + 9000)
    drain(root, "/ckpt/step_2/rank0.bin", 3, os.urandom(3000), T0 + 9500)[1].unlink()
    expected["/ckpt/step_2/rank0.bin"] = (newer, T0 + 9000)
    drain(root, "/ckpt/latest", 1, b"step_2\n", T0 + 9100)
    expected["/ckpt/latest"] = (b"step_2\n", T0 + 9100)
    drain(root, "/ckpt/empty", 1, b"", T0 + 9200)
    expected["/ckpt/empty"] = (b"", T0 + 9200)
    return expected


def check_restored(out: Path, expected: dict[str, tuple[bytes, int]], below: str) -> None:
    for path, (data, when) in expected.items():
        target = out / path.removeprefix(below).lstrip("/")
        assert target.read_bytes() == data, path
        assert target.stat().st_mtime_ns == when * 1_000_000, path
    assert not [p for p in out.rglob("*") if p.name.endswith(".restoring")]  # no temporary file left


def test_restores_the_latest_complete_version_of_every_file_with_its_commit_time(tmp_path, pfs):
    calls: list[tuple[int, int, int, int]] = []
    result = restore_tree(tmp_path / "pfs", NS, "/", tmp_path / "out" / "new", workers=4,
                          progress=lambda *numbers: calls.append(numbers))
    total = sum(len(data) for data, _ in pfs.values())
    assert (result.files, result.size, result.failures, result.total_files) == (len(pfs), total, [], len(pfs))
    check_restored(tmp_path / "out" / "new", pfs, "/")
    assert calls[0] == (0, total, 0, len(pfs)) and calls[-1] == (total, total, len(pfs), len(pfs))
    assert len(calls) == len(pfs) + 1 and calls == sorted(calls)  # once at the start, then per file


def test_a_subdirectory_keeps_the_tree_below_it(tmp_path, pfs):
    below = {p: v for p, v in pfs.items() if p.startswith("/ckpt/step_2/")}
    result = restore_tree(tmp_path / "pfs", NS, "/ckpt/step_2", tmp_path / "out", workers=2)
    assert result.files == 2 and not result.failures
    check_restored(tmp_path / "out", below, "/ckpt/step_2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rank0.bin", "rank1.bin"]


def test_files_that_cannot_be_restored_are_reported_and_the_others_restored(tmp_path, pfs):
    root = tmp_path / "pfs"
    lost = "/ckpt/step_1/rank1.bin"
    scan(version_dir(root, NS, lost))[("ab12", 1)][2].path.unlink()  # its only version lacks a chunk
    damaged = "/ckpt/step_2/rank1.bin"
    chunk = scan(version_dir(root, NS, damaged))[("ab12", 1)][0].path
    chunk.write_bytes(os.urandom(len(chunk.read_bytes())))  # complete by its names, wrong bytes
    result = restore_tree(root, NS, "/", tmp_path / "out")
    assert [path for path, _ in result.failures] == [lost, damaged]
    assert result.failures[0][1].startswith("no complete version on the PFS (incomplete: 1")
    assert f"{chunk.name}: bytes do not match the hash" in result.failures[1][1]
    assert result.files == len(pfs) - 2 and result.total_files == len(pfs)
    check_restored(tmp_path / "out", {p: v for p, v in pfs.items() if p not in (lost, damaged)}, "/")
    assert not (tmp_path / "out" / "ckpt/step_1/rank1.bin").exists()
    assert not (tmp_path / "out" / "ckpt/step_2/rank1.bin").exists()


def test_nothing_leaves_the_pfs_or_the_output_directory(tmp_path, pfs):
    root = tmp_path / "pfs"
    for bad in ("/ckpt/../..", "../x", "/ckpt/step_1/../../../etc"):
        with pytest.raises(InvalidPath, match="'..'"):
            restore_tree(root, NS, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # A link planted in the output directory would take the writes elsewhere: refused per file.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ckpt").symlink_to(elsewhere)
    result = restore_tree(root, NS, "/", tmp_path / "out")
    assert result.files == 0 and len(result.failures) == len(pfs)
    assert all("would leave" in why for _, why in result.failures)
    assert list(elsewhere.iterdir()) == []


def test_a_file_or_nothing_is_not_a_tree(tmp_path, pfs):
    root = tmp_path / "pfs"
    assert is_tree(root, NS, "/") and is_tree(root, NS, "/ckpt") and is_tree(root, NS, "/ckpt/step_1/")
    assert not is_tree(root, NS, "/ckpt/latest") and not is_tree(root, NS, "/nothing")
    with pytest.raises(InvalidArgument, match="is a file on the PFS"):
        restore_tree(root, NS, "/ckpt/latest", tmp_path / "out")
    with pytest.raises(NotFound, match="no persisted file at or below"):
        restore_tree(root, NS, "/nothing", tmp_path / "out")
    with pytest.raises(NotFound, match="no persisted file at or below"):
        restore_tree(root, "other", "/", tmp_path / "out")
    with pytest.raises(InvalidArgument, match="workers"):
        restore_tree(root, NS, "/", tmp_path / "out", workers=0)


def memstage(*args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "memstage"
    return subprocess.run([str(cli), "restore", *args], capture_output=True, text=True, timeout=60)


def test_restore_command_restores_a_tree(tmp_path, pfs):
    pfs_dir, out = str(tmp_path / "pfs"), tmp_path / "out"
    assert "directory" in memstage("--help").stdout
    ok = memstage("--pfs", pfs_dir, "--namespace", NS, "/", "--out", str(out), "--workers", "3")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"restored {len(pfs)} of {len(pfs)} files (") and ok.stdout.count("\n") == 1
    assert ok.stderr == ""  # not a terminal: no progress line
    check_restored(out, pfs, "/")
    single = memstage("--pfs", pfs_dir, "--namespace", NS, "/ckpt/latest", "--out", str(tmp_path / "latest"))
    assert single.returncode == 0 and (tmp_path / "latest").read_bytes() == b"step_2\n"

    scan(version_dir(tmp_path / "pfs", NS, "/ckpt/step_1/rank0.bin"))[("ab12", 1)][1].path.unlink()
    some = memstage("--pfs", pfs_dir, "--namespace", NS, "/ckpt", "--out", str(tmp_path / "out2"))
    assert some.returncode == 1
    assert f"restored {len(pfs) - 1} of {len(pfs)} files" in some.stdout and "1 failed" in some.stdout
    assert some.stderr.splitlines() == [f"memstage restore: not restored: {NS}:/ckpt/step_1/rank0.bin: "
                                        "no complete version on the PFS (incomplete: 1 (ab12))"]
    for bad in (("/ckpt/..", "--out", str(out)), ("/ckpt", "--out", str(out), "--version", "2"),
                ("/nothing", "--out", str(out))):
        failed = memstage("--pfs", pfs_dir, "--namespace", NS, *bad)
        assert failed.returncode == 2 and failed.stderr.startswith("memstage restore: error: "), failed.stderr
        assert "Traceback" not in failed.stderr + some.stderr
