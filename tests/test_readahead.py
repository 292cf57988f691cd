"""Read-ahead of sequential readers: the stream detector (pure), a reader behind the mount's
operations keeping several chunks on their way, and the kernel's read-ahead on a real mount."""

from __future__ import annotations

import os

import pytest
from conftest import random_bytes
from hypothesis import given
from hypothesis import strategies as st

from memstage.client.bdi import mount_device, raise_read_ahead
from memstage.client.fuse import MemstageFS
from memstage.client.reader import VersionReader
from memstage.client.stream import ReadAhead

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024


def test_a_reader_from_the_start_gets_a_growing_window_up_to_the_limit():
    ra = ReadAhead(limit=8, count=100)
    assert list(ra.read(0, 0)) == [1, 2]
    assert list(ra.read(1, 1)) == [3, 4, 5]
    assert list(ra.read(2, 2)) == [6, 7, 8, 9, 10]
    assert list(ra.read(3, 3)) == [11]
    assert ra.window == 8


def test_reads_within_a_chunk_do_not_grow_the_window():
    ra = ReadAhead(limit=8, count=100)
    ra.read(0, 0)
    for _ in range(7):  # the rest of chunk 0 in small pieces
        assert list(ra.read(0, 0)) == []
    assert ra.window == 2


def test_out_of_order_reads_stay_in_the_stream():
    ra = ReadAhead(limit=8, count=100)
    for i in range(4):
        ra.read(i, i)
    assert list(ra.read(6, 6)) == [12, 13, 14]  # the kernel's read of chunk 6 came before 4 and 5
    assert list(ra.read(4, 4)) == [] and list(ra.read(5, 5)) == []
    assert ra.window == 8


def test_random_reads_fetch_nothing_ahead_until_reads_carry_on():
    ra = ReadAhead(limit=4, count=1000)
    for first in (500, 20, 900, 300):
        assert list(ra.read(first, first)) == []
        assert ra.window == 0
    assert list(ra.read(301, 301)) == [302, 303]  # reads carry on from 300: a stream again


def test_the_window_stops_at_the_last_chunk():
    ra = ReadAhead(limit=8, count=5)
    assert list(ra.read(0, 0)) == [1, 2]
    assert list(ra.read(1, 1)) == [3, 4]
    assert list(ra.read(2, 4)) == []


@given(limit=st.integers(1, 16), count=st.integers(1, 200),
       reads=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 3)), max_size=60))
def test_fetches_stay_in_the_version_and_in_the_window(limit, count, reads):
    ra = ReadAhead(limit, count)
    started: set[int] = set()
    for first, extra in reads:
        first = min(first, count - 1)
        last = min(first + extra, count - 1)
        ahead = list(ra.read(first, last))
        assert all(0 <= i < count for i in ahead)
        assert all(ra.pos < i <= ra.pos + ra.window for i in ahead)
        if ra.window == 0:
            started.clear()  # a new stream may ask for old chunks again (the reader's cache has them)
        assert not started & set(ahead), "a stream asks for each chunk once"
        started |= set(ahead)


def test_a_sequential_read_through_the_mount_keeps_several_chunks_on_their_way(local_cluster):
    """Reads come as the kernel sends them (a chunk at a time); the reader behind the handle fetches
    the next chunks before they are asked for, and no more than asked for on random reads."""
    cluster = local_cluster(benefactors=2)
    client = cluster.client(chunk_size=CHUNK, read_ahead=8 * CHUNK)
    data = random_bytes(64 * CHUNK)
    client.pipe_file("/seq.bin", data)
    fs = MemstageFS(client)
    fh = fs.open("/seq.bin", os.O_RDONLY)
    reader = fs._handles[fh].obj
    assert isinstance(reader, VersionReader)
    got = b"".join(b"".join(fs.read("/seq.bin", CHUNK, i * CHUNK, fh)) for i in range(4))
    assert got == data[: 4 * CHUNK]
    assert reader.fetched_ahead() == list(range(4, 12)), "the 8 chunks after the last one read"
    assert b"".join(fs.read("/seq.bin", 3 * CHUNK + 5, 4 * CHUNK - 2, fh)) == data[4 * CHUNK - 2 : 7 * CHUNK + 3]
    assert len(reader.fetched_ahead()) == 8
    fs.release("/seq.bin", fh)

    fh = fs.open("/seq.bin", os.O_RDONLY)
    reader = fs._handles[fh].obj
    assert isinstance(reader, VersionReader)
    for i in (60, 3, 40):  # each more than twice the read-ahead away from the one before
        assert b"".join(fs.read("/seq.bin", 100, i * CHUNK + 7, fh)) == data[i * CHUNK + 7 : i * CHUNK + 107]
    assert set(reader.fetched_ahead()) <= {60, 40}, "random reads fetch only what they ask for"
    fs.release("/seq.bin", fh)


def test_the_mount_raises_the_kernels_read_ahead(mounted):
    point, _, _ = mounted()
    device = mount_device(os.path.realpath(point))
    assert device is not None
    with open(f"/sys/class/bdi/{device}/read_ahead_kb") as f:
        assert int(f.read()) == 8 * 1024, "the client's read_ahead (8MiB), not the kernel's 128 KiB"


def test_read_ahead_is_never_lowered_and_unknown_mounts_are_left_alone(tmp_path):
    (tmp_path / "mountinfo").write_text("36 25 0:42 / /mnt/with\\040space rw - fuse.memstage memstage rw\n")
    knob = tmp_path / "bdi" / "0:42" / "read_ahead_kb"
    knob.parent.mkdir(parents=True)
    knob.write_text("16384\n")
    args = {"mountinfo": str(tmp_path / "mountinfo"), "bdi_root": str(tmp_path / "bdi")}
    assert raise_read_ahead("/mnt/with space", 8 << 20, **args) == 16 << 20
    assert knob.read_text() == "16384\n"
    knob.write_text("128\n")
    assert raise_read_ahead("/mnt/with space", 8 << 20, **args) == 8 << 20
    assert knob.read_text() == "8192"
    assert raise_read_ahead("/mnt/elsewhere", 8 << 20, **args) is None
