"""Two mounts of one namespace, each caching attributes and names (and letting the kernel cache
them): a change through one is seen through the other by its next stat or open after the change
returned (close-to-open), because the manager has the other mount drop what it cached first."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from conftest import free_port, metric, rpc_calls, wait_for


@pytest.fixture
def two_mounts(watched_mounts):
    a, b, _ = watched_mounts
    return a, b


@pytest.fixture
def watched_mounts(mounted, local_cluster):
    """Two mounts, and the port of the manager's /metrics."""
    port = free_port()
    cluster = local_cluster(benefactors=2, memory=128 * 1024 * 1024, manager_args=("--metrics-port", str(port)))
    a, _, _ = mounted(cluster=cluster)
    b, _, _ = mounted(cluster=cluster)
    # Both mounts hold the manager's lease (they cache from now on).
    wait_for(lambda: metric(port, "memstage_mounts_watching") == 2, what="both mounts watching")
    return a, b, port


def _errno(call) -> int:  # type: ignore[no-untyped-def]
    try:
        call()
    except OSError as e:
        return e.errno or 0
    return 0


def test_writes_renames_modes_and_unlinks_show_on_the_other_mount_at_once(two_mounts):
    a, b = two_mounts
    (a / "d").mkdir()
    (a / "d/f").write_bytes(b"one")
    for _ in range(3):  # cached by b's kernel and b itself from here on
        assert (b / "d/f").read_bytes() == b"one" and os.stat(b / "d/f").st_size == 3

    (a / "d/f").write_bytes(b"second version")  # a write (its close returned)
    assert os.stat(b / "d/f").st_size == 14
    assert (b / "d/f").read_bytes() == b"second version"

    os.chmod(a / "d/f", 0o600)
    assert stat.S_IMODE(os.stat(b / "d/f").st_mode) == 0o600

    os.rename(a / "d/f", a / "d/g")
    assert _errno(lambda: os.stat(b / "d/f")) == errno.ENOENT
    assert _errno(lambda: (b / "d/f").read_bytes()) == errno.ENOENT
    assert (b / "d/g").read_bytes() == b"second version"
    assert sorted(os.listdir(b / "d")) == ["g"]

    os.link(a / "d/g", a / "d/h")
    assert os.stat(b / "d/g").st_nlink == 2 == os.stat(b / "d/h").st_nlink

    os.unlink(a / "d/g")
    assert _errno(lambda: os.stat(b / "d/g")) == errno.ENOENT
    assert os.stat(b / "d/h").st_nlink == 1

    # Names created on one mount appear on the other, also where it had looked and found nothing.
    assert _errno(lambda: os.stat(b / "d/new")) == errno.ENOENT
    (a / "d/new").write_bytes(b"n")
    assert (b / "d/new").read_bytes() == b"n"

    # A directory renamed: what is below it moves on the other mount too.
    (a / "d/sub").mkdir()
    (a / "d/sub/x").write_bytes(b"x")
    assert (b / "d/sub/x").read_bytes() == b"x"
    os.rename(a / "d/sub", a / "d/moved")
    assert _errno(lambda: os.stat(b / "d/sub/x")) == errno.ENOENT
    assert (b / "d/moved/x").read_bytes() == b"x"


def test_both_mounts_change_one_directory_in_turns(two_mounts):
    a, b = two_mounts
    (a / "log").mkdir()
    for i in range(20):
        here, there = (a, b) if i % 2 == 0 else (b, a)
        (here / f"log/{i}").write_bytes(str(i).encode())
        assert sorted(int(n) for n in os.listdir(there / "log")) == list(range(i + 1))
        assert os.stat(there / f"log/{i}").st_size == len(str(i))
        if i:
            os.unlink(here / f"log/{i - 1}")
            assert _errno(lambda: os.stat(there / f"log/{i - 1}")) == errno.ENOENT  # noqa: B023
            (here / f"log/{i - 1}").write_bytes(b"again")
            assert (there / f"log/{i - 1}").read_bytes() == b"again"


def test_a_name_renamed_here_is_looked_up_without_asking_the_manager(watched_mounts):
    """A rename's reply carries the new name's attributes: unlinking or opening the file by its
    new name right after (a tool's write-aside-then-rename, the bench's loop) costs no Stat."""
    a, b, port = watched_mounts
    (a / "f").write_bytes(b"x" * 100)
    os.rename(a / "f", a / "g")
    before = rpc_calls(port).get("Stat", 0)
    assert os.stat(a / "g").st_size == 100
    os.unlink(a / "g")
    assert rpc_calls(port).get("Stat", 0) == before  # was: one Stat for the lookup of g
    assert _errno(lambda: os.stat(b / "g")) == errno.ENOENT
