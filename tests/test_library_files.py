"""Library files against a real cluster, as applications use them: a "wb" file that seeks (HDF5,
zipfile, a header patched after the data) commits what a local file would hold, through
Client.open and through the memstage:// URL; leaving a `with` block by an exception after a seek
commits nothing; the owner a library write records, and info() and ls() showing the same owner
and link count."""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any

import fsspec
import h5py
import numpy as np
import pytest
from conftest import Cluster, random_bytes

from memstage.errors import NotFound

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024


def url(cluster: Cluster, path: str) -> str:
    return f"memstage://{cluster.manager_address}/default{path}"


def test_h5py_writes_and_reads_through_open_and_the_url(local_cluster):
    cluster = local_cluster(benefactors=2)
    c = cluster.client(chunk_size=CHUNK)
    weights = np.random.default_rng(1).standard_normal((300, 200))  # 480 KB: several chunks
    with c.open("/h5/a.h5", "wb") as f, h5py.File(f, "w") as h:  # was: OSError: Seek only available in read mode
        h["weights"] = weights
        h["steps"] = np.arange(10)
        h.attrs["step"] = 7
    with c.open("/h5/a.h5", "rb") as f, h5py.File(f, "r") as h:
        assert np.array_equal(h["weights"][:], weights)
        assert list(h["steps"][:]) == list(range(10)) and h.attrs["step"] == 7

    with fsspec.open(url(cluster, "/h5/b.h5"), "wb", rpc_timeout="10s", chunk_size=CHUNK) as f, \
            h5py.File(f, "w") as h:
        h.create_group("model").create_dataset("w", data=weights, chunks=(50, 50), compression="gzip")
    with fsspec.open(url(cluster, "/h5/b.h5"), "rb", rpc_timeout="10s") as f, h5py.File(f, "r") as h:
        assert np.array_equal(h["model/w"][:], weights)


def test_h5py_updating_what_it_wrote_reads_it_back_through_w_plus_b(local_cluster):
    """HDF5 reads back what it wrote when it changes a chunk it no longer caches: "w+b" (as with
    a local file; "wb" cannot read)."""
    c = local_cluster(benefactors=2).client(chunk_size=CHUNK)
    data = np.arange(40_000, dtype="f8")
    with c.open("/h5/u.h5", "w+b") as f, h5py.File(f, "w", rdcc_nbytes=1024) as h:
        h.create_dataset("d", data=data, chunks=(1000,), compression="gzip")
        h["d"][5] = -1.0  # its chunk is read back, decompressed, changed and written again
        data[5] = -1.0
    with c.open("/h5/u.h5", "rb") as f, h5py.File(f, "r") as h:
        assert np.array_equal(h["d"][:], data)


def test_zipfile_through_wb_patches_its_headers_as_in_a_local_file(local_cluster):
    c = local_cluster(benefactors=2).client(chunk_size=CHUNK)
    big = random_bytes(5 * CHUNK + 123)

    def write_zip(target: Any) -> None:
        when = (2024, 1, 2, 3, 4, 6)
        with zipfile.ZipFile(target, "w") as z:
            z.writestr(zipfile.ZipInfo("small.txt", when), b"hello")
            with z.open(zipfile.ZipInfo("big.bin", when), "w") as entry:  # sizes known only at its end
                for pos in range(0, len(big), 10_000):
                    entry.write(big[pos : pos + 10_000])
            z.writestr(zipfile.ZipInfo("text.txt", when), b"abc" * 10_000, compress_type=zipfile.ZIP_DEFLATED)

    local = io.BytesIO()
    write_zip(local)
    with c.open("/a.zip", "wb") as f:
        write_zip(f)
    data = c.cat_file("/a.zip")
    assert data == local.getvalue()  # the same bytes: headers patched in place, no data descriptors
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None and z.read("big.bin") == big
        assert not any(info.flag_bits & 0x08 for info in z.infolist())


def test_wb_seeked_back_and_patched_reads_back_byte_exact(local_cluster):
    """The same operations on a "wb" file and on a local one give the same bytes; a writer that
    never moves its position stays on the sequential path."""
    c = local_cluster(benefactors=2).client(chunk_size=CHUNK, buffer_size=8 * CHUNK)
    body = random_bytes(4 * CHUNK + 1000)
    model = io.BytesIO()
    with c.open("/p.bin", "wb") as f:
        assert f.seekable()

        def both(op: str, *args: Any) -> None:
            assert getattr(f, op)(*args) == getattr(model, op)(*args), (op, args)
            assert f.tell() == model.tell(), (op, args)

        both("write", bytes(16))  # a header, patched once the body is written
        both("write", body)
        both("seek", 0, io.SEEK_END)
        both("seek", f.tell())
        both("seek", 0, io.SEEK_CUR)
        both("truncate")
        assert f._file is None, "seeks and truncates that change nothing keep the sequential path"
        both("seek", 0)
        both("write", b"HDR:" + len(body).to_bytes(8, "little") + b"END!")
        both("seek", 3 * CHUNK + 5)
        both("write", b"patched inside a chunk already sent")
        both("seek", -4, io.SEEK_END)
        both("write", b"tail past the end")
        both("seek", 100, io.SEEK_END)
        both("write", random_bytes(2 * CHUNK))  # past a hole
        both("truncate", 5 * CHUNK + 7)
        both("seek", 2 * CHUNK)
        both("write", random_bytes(CHUNK))  # a whole chunk, aligned, over one already sent
    assert c.cat_file("/p.bin") == model.getvalue()
    assert [v["version"] for v in c.versions("/p.bin")] == [1]


def test_a_seeked_wb_file_replaces_what_another_writer_committed_meanwhile(local_cluster):
    """As a sequential "wb" file does: its commit keeps nothing of a version committed since it
    was opened, whether the file existed then or not."""
    cluster = local_cluster(benefactors=2)
    c, other = cluster.client(chunk_size=CHUNK), cluster.client(chunk_size=CHUNK)
    c.pipe("/r/old.bin", random_bytes(3 * CHUNK))
    for path in ("/r/old.bin", "/r/new.bin"):
        f = c.open(path, "wb")
        f.write(b"abc")
        f.seek(1)
        f.write(b"Z")
        other.pipe(path, random_bytes(5 * CHUNK + 3))
        f.close()
        assert c.cat_file(path) == b"aZc", path


def test_buffered_close_commits_a_seeked_wb_file_in_the_background(local_cluster):
    c = local_cluster(benefactors=2).client(chunk_size=CHUNK, close_mode="buffered")
    data = bytearray(random_bytes(3 * CHUNK))
    with c.open("/b.bin", "wb") as f:
        f.write(data)
        f.seek(CHUNK - 2)
        f.write(b"....")
    data[CHUNK - 2 : CHUNK + 2] = b"...."
    c.sync()
    assert c.cat_file("/b.bin") == data


def test_leaving_with_by_an_exception_after_a_seek_commits_nothing(local_cluster):
    c = local_cluster(benefactors=2).client(chunk_size=CHUNK)
    first = random_bytes(2 * CHUNK + 5)
    c.pipe("/keep.bin", first)
    with pytest.raises(RuntimeError, match="the application failed"), c.open("/keep.bin", "wb") as f:
        f.write(random_bytes(3 * CHUNK))
        f.seek(10)
        f.write(b"x")
        raise RuntimeError("the application failed")
    assert c.cat_file("/keep.bin") == first
    assert [v["version"] for v in c.versions("/keep.bin")] == [1]

    with pytest.raises(RuntimeError), c.open("/new.bin", "wb") as f:
        f.write(b"abc")
        f.seek(1)
        f.write(b"z")
        raise RuntimeError("the application failed")
    with pytest.raises(NotFound):
        c.info("/new.bin")


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
    # /o exists because files are below it: no owner of its own, shown as this process's (as a mount shows its own).
    assert (c.info("/o")["uid"], c.info("/o")["gid"]) == me  # was: -1, -1

    # Rewriting a file keeps its owner (as open with O_TRUNC does); an owner given at open is the file's.
    c.setattr("/o/seq.bin", uid=4242, gid=4343)
    c.pipe("/o/seq.bin", b"y")
    assert (c.info("/o/hard")["uid"], c.info("/o/hard")["gid"]) == (4242, 4343)
    with c.open("/o/given.bin", "wb", uid=7, gid=8) as f:
        f.write(b"z")
    assert (c.info("/o/given.bin")["uid"], c.info("/o/given.bin")["gid"]) == (7, 8)


def test_files_written_anywhere_get_the_same_owner(local_cluster):
    c = local_cluster(benefactors=1).client()
    with c.open("/o/seeked.bin", "wb") as f:
        f.write(b"ab")
        f.seek(0)
        f.write(b"c")
    with c.open("/o/readback.bin", "w+b") as f:
        f.write(b"a")
    for name in ("/o/seeked.bin", "/o/readback.bin"):
        entry = c.info(name)
        assert (entry["uid"], entry["gid"], entry["nlink"]) == (os.getuid(), os.getgid(), 1), name
        assert c.ls(name, detail=True) == [entry]
    c.setattr("/o/seeked.bin", uid=4242, gid=4343)
    with c.open("/o/seeked.bin", "wb") as f:
        f.write(b"yy")
        f.seek(0)
        f.write(b"z")
    assert c.cat_file("/o/seeked.bin") == b"zy"
    assert (c.info("/o/seeked.bin")["uid"], c.info("/o/seeked.bin")["gid"]) == (4242, 4343)
