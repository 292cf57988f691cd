"""Drained copies deeper than PATH_MAX, with plain files (no servers): drain, hard links across
deep directories, restore of a file and of a tree, and removal, all through drainer.dirfd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memstage.chunks import ChunkKey
from memstage.drainer import dirfd
from memstage.drainer.layout import chunk_name, scan, version_dir, write_chunk
from memstage.drainer.prune import PfsCopy, remove_copies
from memstage.drainer.restore import restore, restore_tree

PATH_MAX = 4096
NS = "ns"


def deep_path(total: int, component: int = 255, last: str = "f") -> str:
    """A path in a namespace of exactly `total` bytes: components of `component` bytes, then `last`."""
    parts: list[str] = []
    size = 1 + len(last)  # its leading '/' and last component
    while size + component + 1 <= total:
        parts.append(chr(ord("a") + len(parts) % 26) * component)
        size += component + 1
    if total - size > 1:  # the rest as one shorter component
        parts.append("z" * (total - size - 1))
    path = "/" + "/".join([*parts, last])
    assert len(path.encode()) == total
    return path


def exists_below(fd: int, parts: list[str] | tuple[str, ...], name: str) -> os.stat_result | None:
    with dirfd.opened(fd, parts) as d:
        return dirfd.lstat(d, name)


def drain(root: Path, path: str, version: int, data: bytes, chunk: int, link_from: dict | None = None,
          committed_ms: int = 1_700_000_000_000) -> dict[ChunkKey, Path]:
    directory = version_dir(root, NS, path)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    written = {}
    for i, piece in enumerate(pieces):
        key = ChunkKey.of(piece)
        src = (link_from or {}).get(key)
        written[key] = write_chunk(directory, chunk_name(version, i, len(pieces), i * chunk, key, "ab12",
                                                         committed_ms + version),
                                   None if src else [piece], link_from=src)
    return written


@pytest.mark.parametrize("length", [PATH_MAX - 1, 6000])
def test_drain_link_restore_and_prune_a_file_whose_pfs_copy_is_past_path_max(tmp_path, length):
    pfs = tmp_path / "pfs"
    path = deep_path(length)
    other = path.rsplit("/", 2)[0] + "/elsewhere/g"  # a sibling tree as deep
    v1 = os.urandom(10 * 1000)
    first = drain(pfs, path, 1, v1, 1000)
    assert len(str(version_dir(pfs, NS, path)).encode()) > PATH_MAX
    # Another file deep elsewhere shares 9 of 10 chunks: hard links across the deep directories.
    v2 = bytearray(v1)
    v2[0:4] = b"XXXX"
    drain(pfs, other, 1, bytes(v2), 1000, link_from=first)
    files = scan(version_dir(pfs, NS, other))[("ab12", 1)]
    root = dirfd.open_root(pfs)
    try:
        inodes = {exists_below(root, version_dir(pfs, NS, other).parts, f.path.name).st_ino for f in files}
        assert len(inodes) == 10
        shared = {exists_below(root, version_dir(pfs, NS, path).parts, f.path.name).st_ino
                  for f in scan(version_dir(pfs, NS, path))[("ab12", 1)]}
        assert len(inodes & shared) == 9
    finally:
        os.close(root)
    # Restored from the PFS alone, a file and a tree, byte for byte, the tree past PATH_MAX too.
    restore(pfs, NS, path, tmp_path / "one")
    assert (tmp_path / "one").read_bytes() == v1
    tree = restore_tree(pfs, NS, "/", tmp_path / "tree")
    assert (tree.files, tree.failures) == (2, [])
    out = dirfd.open_root(tmp_path / "tree")
    try:
        for p, data in ((path, v1), (other, bytes(v2))):
            *parents, name = p.strip("/").split("/")
            with dirfd.opened(out, parents) as d:
                assert dirfd.read_file(d, name) == data
        assert all(".restoring" not in n for _, _, names in dirfd.walk(out) for n in names)
    finally:
        os.close(out)
    # Removing the first file's copy keeps what the second links to, and the empty directories go.
    removed = remove_copies(pfs, [PfsCopy(version_dir(pfs, NS, path).relative, "ab12", 1)], frozenset())
    assert removed.files == 10 and removed.bytes == 1000  # only the chunk nothing else links to frees bytes
    assert scan(version_dir(pfs, NS, path)) == {}
    restore(pfs, NS, other, tmp_path / "other")
    assert (tmp_path / "other").read_bytes() == bytes(v2)
    remove_copies(pfs, [PfsCopy(version_dir(pfs, NS, other).relative, "ab12", 1)], frozenset())
    assert os.listdir(pfs) == [NS] and os.listdir(pfs / NS) == []  # the namespace's directory stays


def test_restore_names_at_name_max_need_no_longer_temporary_name(tmp_path):
    path = "/" + "n" * 255
    drain(tmp_path / "pfs", path, 1, b"at NAME_MAX", 100)
    restore_tree(tmp_path / "pfs", NS, "/", tmp_path / "out")
    assert (tmp_path / "out" / ("n" * 255)).read_bytes() == b"at NAME_MAX"
    assert os.listdir(tmp_path / "out") == ["n" * 255]
