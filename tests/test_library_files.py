"""Library files against a real cluster, as applications use them: the owner a library write
records, and info() and ls() showing the same owner and link count."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.timeout(120)


def test_info_and_ls_agree_on_owner_and_links(local_cluster):
    c = local_cluster(benefactors=1).client()
    me = (os.getuid(), os.getgid())
    c.pipe("/o/seq.bin", b"x" * 1000)
    with c.open("/o/appended.bin", "ab") as f:
        f.write(b"a")
    c.mkdir("/o/dir")
    c.symlink("seq.bin", "/o/sym")
    c.link("/o/seq.bin", "/o/hard")

    listed = {e["name"]: e for e in c.ls("/o", detail=True)}
    assert sorted(listed) == ["/o/appended.bin", "/o/dir", "/o/hard", "/o/seq.bin", "/o/sym"]
    for name, entry in listed.items():
        assert entry == c.info(name), name
        assert (entry["uid"], entry["gid"]) == me, name  # was: -1, -1
    assert {n: e["nlink"] for n, e in listed.items()} == {
        "/o/appended.bin": 1, "/o/seq.bin": 2, "/o/hard": 2, "/o/sym": 1, "/o/dir": 2}
    assert c.ls("/o/appended.bin", detail=True) == [c.info("/o/appended.bin")]  # was: NotFound (no such directory)

    # Rewriting a file keeps its owner (as open with O_TRUNC does); an owner given at open is the file's.
    c.setattr("/o/seq.bin", uid=4242, gid=4343)
    c.pipe("/o/seq.bin", b"y")
    assert (c.info("/o/hard")["uid"], c.info("/o/hard")["gid"]) == (4242, 4343)
    with c.open("/o/given.bin", "wb", uid=7, gid=8) as f:
        f.write(b"z")
    assert (c.info("/o/given.bin")["uid"], c.info("/o/given.bin")["gid"]) == (7, 8)
