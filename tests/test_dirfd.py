"""The directory-descriptor walks of drainer.dirfd, with plain files (no servers): trees deeper than
PATH_MAX made, walked, read and removed, and links on the way refused."""

from __future__ import annotations

import os

import pytest

from memstage.chunks import ChunkKey
from memstage.drainer import dirfd
from memstage.drainer.layout import chunk_name, version_dir, write_chunk
from memstage.errors import InvalidPath

PATH_MAX = 4096


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_tree_deeper_than_path_max_is_made_walked_read_and_removed(tmp_path):
    parts = [f"{i:03d}" + "d" * 252 for i in range(40)]  # 10 KiB of directories
    assert len("/".join(parts)) > 2 * PATH_MAX
    before = open_fds()
    root = dirfd.open_root(tmp_path)
    with dirfd.opened(root, parts, make=0o700, exact=True) as deep:
        f = os.open("data", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=deep)
        dirfd.write_all(f, b"deep bytes")
        os.close(f)
        assert dirfd.read_file(deep, "data") == b"deep bytes"
    with pytest.raises(OSError) as info:  # the path the helper stands in for is too long to name
        os.stat(tmp_path.joinpath(*parts, "data"))
    assert info.value.errno == 36  # ENAMETOOLONG
    walked = [(p, names) for p, _, names in dirfd.walk(root)]
    assert [len(p) for p, _ in walked] == list(range(41)) and walked[-1] == (tuple(parts), ["data"])
    with dirfd.opened(root, parts[:1]) as top:
        assert os.fstat(top).st_mode & 0o777 == 0o700  # made with the mode asked, not the umask's
    with dirfd.opened(root, parts) as deep:
        os.unlink("data", dir_fd=deep)
    assert dirfd.remove_empty(root, parts, keep=1) == 39
    assert os.listdir(tmp_path) == [parts[0]] and os.listdir(tmp_path / parts[0]) == []
    os.close(root)
    assert open_fds() == before  # every descriptor closed


def test_a_walk_of_a_deep_chain_holds_few_descriptors(tmp_path):
    root = dirfd.open_root(tmp_path)
    chain = ["x"] * 1500  # deeper than Python's recursion limit, more levels than descriptors allowed at once
    with dirfd.opened(root, chain, make=0o700):
        pass
    before = open_fds()
    most = 0
    depth = 0
    for parts, _, _ in dirfd.walk(root):
        most = max(most, open_fds() - before)
        depth = max(depth, len(parts))
    assert depth == 1500 and most <= 3
    assert dirfd.remove_empty(root, chain) == 1500 and os.listdir(tmp_path) == []
    os.close(root)


def test_a_link_on_the_way_is_refused_never_followed(tmp_path):
    root_dir, outside = tmp_path / "pfs", tmp_path / "outside"
    (root_dir / "ns" / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    (outside / "empty").mkdir()
    (root_dir / "ns" / "a" / "link").symlink_to(outside)  # planted inside the tree
    (root_dir / "ns" / "file-link").symlink_to(outside / "secret")
    root = dirfd.open_root(root_dir)
    try:
        for make in (None, 0o700):
            with pytest.raises(InvalidPath, match="would leave the tree: ns/a/link is a symbolic link"):
                dirfd.open_dir(root, ["ns", "a", "link", "new"], make=make, where="the tree")
        with pytest.raises(InvalidPath, match="symbolic link"):
            dirfd.open_dir(root, ["ns", "a", "link"])
        with dirfd.opened(root, ["ns"]) as ns, pytest.raises(OSError) as info:
            dirfd.read_file(ns, "file-link")
        assert info.value.errno == 40  # ELOOP: a file that is a link is not read either
        # A walk lists the links as names and does not go through them; removal stops at them.
        walked = {p: names for p, _, names in dirfd.walk(root)}
        assert walked == {(): [], ("ns",): ["file-link"], ("ns", "a"): ["link"]}
        assert dirfd.remove_empty(root, ["ns", "a", "link", "empty"]) == 0
        for bad in ("..", ".", "", "a/b"):
            with pytest.raises(InvalidPath):
                dirfd.open_dir(root, ["ns", bad])
    finally:
        os.close(root)
    assert sorted(os.listdir(outside)) == ["empty", "secret"] and os.listdir(outside / "empty") == []
    # Through the PFS layer: a drain into the link is refused, nothing is written outside.
    key = ChunkKey.of(b"x")
    with pytest.raises(InvalidPath, match="leave the PFS root"):
        write_chunk(version_dir(root_dir, "ns", "/a/link/empty/f"), chunk_name(1, 0, 1, 0, key), [b"x"])
    assert os.listdir(outside / "empty") == []


