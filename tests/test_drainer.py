"""The PFS layout and restore, with plain files: no servers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from memstage.chunks import ChunkKey
from memstage.drainer.layout import chunk_name, parse_name, scan, version_dir, write_chunk
from memstage.drainer.restore import persisted_versions, restore
from memstage.errors import DataLost, InvalidPath, NotFound


def drain(root, ns, path, version, data, chunk, link_from=None):
    """Write a version's chunk files the way a benefactor does; returns the files by key."""
    directory = version_dir(root, ns, path)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    written = {}
    for i, piece in enumerate(pieces):
        key = ChunkKey.of(piece)
        src = (link_from or {}).get(key)
        written[key] = write_chunk(directory, chunk_name(version, i, len(pieces), i * chunk, key),
                                   None if src else [piece], link_from=src)
    return written


def test_names_round_trip():
    key = ChunkKey.of(b"abc")
    name = chunk_name(7, 2, 10, 2048, key, "d1f2", 1_700_000_000_123)
    parsed = parse_name(version_dir("/pfs", "ns", "/a") / name)
    assert (parsed.version, parsed.index, parsed.count, parsed.offset, parsed.key) == (7, 2, 10, 2048, key)
    assert (parsed.deployment, parsed.committed_ms) == ("d1f2", 1_700_000_000_123)
    assert parse_name(version_dir("/pfs", "ns", "/a") / ("x" + name)) is None


def test_names_have_no_fixed_width_and_old_names_still_parse():
    key = ChunkKey.of(b"x" * 1024)
    # A file of 10^7 chunks (10 TiB at 1 MiB), its last chunk, a version past 10^8.
    big = dict(version=123_456_789_012, index=10**7 - 1, count=10**7, offset=(10**7 - 1) * 2**20)
    parsed = parse_name(version_dir("/pfs", "ns", "/a") / chunk_name(key=key, deployment="ab12", **big))
    assert parsed is not None
    assert (parsed.version, parsed.index, parsed.count, parsed.offset) == tuple(big.values())
    old = f"v00000003.c000002-of-000010.o{2048:016x}.l{key.length:08x}.h{key.hash.hex()}.chunk"
    parsed = parse_name(version_dir("/pfs", "ns", "/a") / old)
    assert parsed is not None and (parsed.version, parsed.index, parsed.count, parsed.deployment) == (3, 2, 10, "")


def test_restore_every_version_and_hard_links(tmp_path):
    v1 = os.urandom(10 * 4096)
    v2 = bytearray(v1)
    v2[4096:4100] = b"XXXX"  # one chunk differs
    first = drain(tmp_path, "ns", "/run/ck", 1, v1, 4096)
    drain(tmp_path, "ns", "/run/ck", 2, bytes(v2), 4096, link_from=first)
    assert persisted_versions(tmp_path, "ns", "/run/ck") == {("", 1): True, ("", 2): True}
    for version, expected in ((1, v1), (2, bytes(v2))):
        out = tmp_path / f"out{version}"
        assert restore(tmp_path, "ns", "/run/ck", out, version).size == len(expected)
        assert out.read_bytes() == expected
    restore(tmp_path, "ns", "/run/ck", tmp_path / "latest")
    assert (tmp_path / "latest").read_bytes() == bytes(v2)
    files = list(version_dir(tmp_path, "ns", "/run/ck").path.iterdir())
    inodes = {f.stat().st_ino for f in files}
    assert len(files) == 20 and len(inodes) == 11  # 9 unchanged chunks are links, not copies


def test_empty_version(tmp_path):
    directory = version_dir(tmp_path, "ns", "/empty")
    write_chunk(directory, chunk_name(1, 0, 0, 0, ChunkKey.of(b"")), [b""])
    restore(tmp_path, "ns", "/empty", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b""


def test_incomplete_truncated_and_corrupt_chunks_name_the_problem(tmp_path):
    data = os.urandom(4 * 1000)
    drain(tmp_path, "ns", "/f", 1, data, 1000)
    directory = version_dir(tmp_path, "ns", "/f")
    files = sorted(scan(directory)[("", 1)], key=lambda f: f.index)
    files[1].path.write_bytes(files[1].path.read_bytes()[:500])  # truncated
    with pytest.raises(DataLost, match=f"{files[1].path.name}.*truncated"):
        restore(tmp_path, "ns", "/f", tmp_path / "out", 1)
    files[1].path.write_bytes(os.urandom(1000))  # right size, wrong bytes
    with pytest.raises(DataLost, match=f"{files[1].path.name}.*do not match the hash"):
        restore(tmp_path, "ns", "/f", tmp_path / "out", 1)
    files[2].path.unlink()
    with pytest.raises(DataLost, match="version 1 is incomplete: chunks 2 of 4 are missing"):
        restore(tmp_path, "ns", "/f", tmp_path / "out", 1)
    assert not (tmp_path / "out").exists()  # nothing half-written left behind
    with pytest.raises(NotFound, match="version 9 is not on the PFS"):
        restore(tmp_path, "ns", "/f", tmp_path / "out", 9)
    with pytest.raises(NotFound):
        restore(tmp_path, "ns", "/never", tmp_path / "out")


def test_paths_cannot_escape_the_root(tmp_path):
    root = tmp_path / "pfs"
    root.mkdir()
    for bad in ("../../etc/x", "/a/../../x"):
        with pytest.raises(InvalidPath):
            version_dir(root, "ns", bad)
    with pytest.raises(InvalidPath):
        version_dir(root, "..", "/x")
    (root / "ns").mkdir()
    (root / "ns" / "link").symlink_to(tmp_path)  # a symlink planted inside the PFS
    key = ChunkKey.of(b"x")
    with pytest.raises(InvalidPath, match="leave the PFS root"):
        write_chunk(version_dir(root, "ns", "/link/x"), chunk_name(1, 0, 1, 0, key), [b"x"])
    with pytest.raises(InvalidPath, match="leave the PFS root"):
        restore(root, "ns", "/link/x", tmp_path / "out")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


def test_restore_command(tmp_path):
    data = os.urandom(3000)
    drain(tmp_path / "pfs", "team", "/ck.bin", 3, data, 1024)
    run = lambda *a: subprocess.run([sys.executable, "-m", "memstage", "restore", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=60)
    ok = run("--pfs", str(tmp_path / "pfs"), "--namespace", "team", "/ck.bin", "--out", str(tmp_path / "o"))
    assert ok.returncode == 0, ok.stderr
    assert "version 3" in ok.stdout and (tmp_path / "o").read_bytes() == data
    bad = run("--pfs", str(tmp_path / "pfs"), "--namespace", "team", "/ck.bin", "--version", "2", "--out",
              str(tmp_path / "o"))
    assert bad.returncode == 2 and "version 2 is not on the PFS (persisted: 3)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_write_batch_publishes_files_and_links_with_one_wait(tmp_path):
    from memstage.drainer.layout import Pending, write_batch

    directory = version_dir(tmp_path, "ns", "/b")
    a, b = os.urandom(100), os.urandom(200)
    ka, kb = ChunkKey.of(a), ChunkKey.of(b)
    items = [Pending(directory, chunk_name(1, 0, 2, 0, ka), a), Pending(directory, chunk_name(1, 1, 2, 100, kb), b)]
    first = write_batch(items)
    again = write_batch(items)  # idempotent: already published files are left alone
    assert first == again and [p.read_bytes() for p in first] == [a, b]
    linked = write_batch([Pending(directory, chunk_name(2, 0, 1, 0, ka), None, link_from=first[0])])
    assert linked[0].stat().st_ino == first[0].stat().st_ino
    with pytest.raises(FileNotFoundError):
        write_batch([Pending(directory, chunk_name(3, 0, 1, 0, ka), None, link_from=tmp_path / "gone")])
    assert not [p for p in directory.path.iterdir() if p.name.startswith(".tmp")]  # no temporary left behind
    restore(tmp_path, "ns", "/b", tmp_path / "out", 1)
    assert (tmp_path / "out").read_bytes() == a + b
