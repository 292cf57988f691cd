"""Client.stat hands out a frozen FileStat, converted from the manager's answer at the client."""

from __future__ import annotations

import dataclasses
import stat

import pytest

from memstage.client import FileStat
from memstage.proto import manager_pb2

pytestmark = pytest.mark.timeout(60)


def test_from_pb_copies_every_field_and_kind_names_the_type():
    info = manager_pb2.FileInfo(path="/l", mode=stat.S_IFLNK | 0o777, uid=5, gid=-1, target="/a", ino=9,
                                size=2, nlink=1, rdev=3, stored=0, protected=True)
    s = FileStat.from_pb(info)
    assert (s.path, s.uid, s.gid, s.target, s.ino, s.rdev, s.protected, s.kind) == \
        ("/l", 5, -1, "/a", 9, 3, True, "symlink")
    assert FileStat.from_pb(manager_pb2.FileInfo(path="/d", is_dir=True)).kind == "directory"
    assert FileStat.from_pb(manager_pb2.FileInfo(path="/f", mode=stat.S_IFREG | 0o644)).kind == "file"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.size = 1  # type: ignore[misc]


def test_stat_returns_a_filestat(local_cluster):
    c = local_cluster(benefactors=1).client()
    c.pipe("/a/f.bin", b"x" * 1000)
    c.setattr("/a/f.bin", mode=0o600)
    s = c.stat("/a/f.bin")
    assert isinstance(s, FileStat)
    assert (s.path, s.size, s.version, s.kind, stat.S_IMODE(s.mode), s.nlink) == ("/a/f.bin", 1000, 1, "file",
                                                                                  0o600, 1)
    assert s.ino and s.mtime_ns and s.protected
    d = c.stat("/a", protection=False)
    assert d.is_dir and d.kind == "directory"
    assert c.info("/a/f.bin")["ino"] == s.ino
