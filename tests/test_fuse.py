"""The FUSE staging directory, mounted for real and used by real programs, checked with checksums."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MiB, free_port, listed_mount, metric, random_bytes, rpc_calls, wait_for

pytestmark = pytest.mark.timeout(180)

if not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None:
    pytest.skip("needs /dev/fuse and fusermount3 (Debian's fuse3)", allow_module_level=True)


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def test_cp_and_dd_of_a_256mib_file(mounted, tmp_path):
    point, cluster, _ = mounted(memory=384 * MiB)
    src = tmp_path / "src.bin"
    src.write_bytes(random_bytes(256 * MiB))
    subprocess.run(["cp", str(src), str(point / "cp.bin")], check=True, timeout=120)
    subprocess.run(["dd", f"if={src}", f"of={point / 'dd.bin'}", "bs=1M", "status=none"], check=True, timeout=120)
    assert sha(point / "cp.bin") == sha(src) == sha(point / "dd.bin")
    client = cluster.client()
    assert client.info("/dd.bin")["size"] == 256 * MiB  # committed at close, readable through the library


def test_tar_tree_round_trip(mounted, tmp_path):
    point, _, _ = mounted()
    tree = tmp_path / "tree"
    for rel in ("a/b/c.bin", "a/d.txt", "e/f/g/h.bin", "top.bin"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(random_bytes(100_000 + len(rel)))
    (tree / "empty-dir").mkdir()
    subprocess.run(["tar", "-cf", str(point / "tree.tar"), "-C", str(tree), "."], check=True, timeout=60)
    subprocess.run(["tar", "-xf", str(point / "tree.tar"), "-C", str(point)], check=True, timeout=60)
    for rel in ("a/b/c.bin", "a/d.txt", "e/f/g/h.bin", "top.bin"):
        assert sha(point / rel) == sha(tree / rel)
    assert (point / "empty-dir").is_dir()
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(point / "tree.tar"), "-C", str(out)], check=True, timeout=60)
    assert sha(out / "e/f/g/h.bin") == sha(tree / "e/f/g/h.bin")


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_archive(mounted, tmp_path):
    point, _, _ = mounted()
    tree = tmp_path / "tree"
    for i in range(5):
        (tree / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 2}" / f"f{i}.bin").write_bytes(random_bytes(200_000 + i))
    subprocess.run(["rsync", "-a", f"{tree}/", f"{point}/sync/"], check=True, timeout=60)  # temp file + rename
    for path in tree.rglob("*.bin"):
        assert sha(point / "sync" / path.relative_to(tree)) == sha(path)


def test_numpy_save_and_load(mounted):
    np = pytest.importorskip("numpy")
    point, _, _ = mounted()
    array = np.random.default_rng(1).standard_normal((512, 1024))
    np.save(point / "state.npy", array)  # a 128-byte header, then unaligned 1 MiB writes
    assert np.array_equal(np.load(point / "state.npy"), array)
    assert np.array_equal(np.load(point / "state.npy", mmap_mode="r"), array)  # restores that map the file


def test_random_offset_writes_overwrite_holes_truncate(mounted):
    point, _, _ = mounted()
    path = point / "r.bin"
    model = bytearray()

    def pwrite(fd: int, data: bytes, offset: int) -> None:
        os.pwrite(fd, data, offset)
        if len(model) < offset:
            model.extend(bytes(offset - len(model)))
        model[offset : offset + len(data)] = data

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite(fd, random_bytes(3 * MiB), 0)
        pwrite(fd, b"X" * 1000, 2 * MiB - 500)  # across a chunk boundary
        pwrite(fd, b"tail", 5 * MiB + 7)  # a hole of about 2 MiB
        assert os.pread(fd, 1000, 2 * MiB - 500) == b"X" * 1000  # the writer reads its own writes
        os.ftruncate(fd, 4 * MiB + 3)
        del model[4 * MiB + 3 :]
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(model)
    fd = os.open(path, os.O_WRONLY)  # overwrite in place, keeping the rest
    os.pwrite(fd, b"0123456789", 10)
    os.close(fd)
    model[10:20] = b"0123456789"
    assert path.read_bytes() == bytes(model)
    with open(path, "ab") as f:  # O_APPEND
        f.write(b"appended")
    assert path.read_bytes() == bytes(model) + b"appended"


def test_write_tmp_then_rename_replaces_atomically(mounted):
    point, cluster, _ = mounted()
    (point / "ckpt.bin").write_bytes(b"old checkpoint")
    reader = open(point / "ckpt.bin", "rb")  # noqa: SIM115 -- kept open across the rename
    (point / "ckpt.bin.tmp").write_bytes(b"new checkpoint")
    os.rename(point / "ckpt.bin.tmp", point / "ckpt.bin")
    assert (point / "ckpt.bin").read_bytes() == b"new checkpoint"
    assert not (point / "ckpt.bin.tmp").exists()
    assert reader.read() == b"old checkpoint"  # an open reader keeps the version it opened
    reader.close()
    assert sorted(os.listdir(point / ".versions" / "ckpt.bin")) == ["1", "2"]
    assert (point / ".versions" / "ckpt.bin" / "1").read_bytes() == b"old checkpoint"


def test_unchanged_close_makes_no_version_and_readers_see_the_committed_one(mounted):
    point, cluster, _ = mounted()
    (point / "f").write_bytes(b"v1")
    open(point / "f", "r+b").close()  # opened for writing, nothing written
    assert [v["version"] for v in cluster.client().versions("/f")] == [1]
    with open(point / "f", "r+b") as w:
        w.write(b"V2")
        w.flush()
        # On this mount every open of the file sees the writes at once (POSIX), while the committed
        # version, which other mounts and clients read, is still the first until the close.
        assert (point / "f").read_bytes() == b"V2"
        assert [v["version"] for v in cluster.client().versions("/f")] == [1]
        with open(point / ".versions" / "f" / "1", "rb") as r:
            assert r.read() == b"v1"
    assert (point / "f").read_bytes() == b"V2"


def test_df_enospc_and_clean_unmount(mounted, tmp_path):
    point, cluster, proc = mounted(benefactors=2, memory=16 * MiB)
    st = os.statvfs(point)
    assert st.f_blocks * st.f_frsize == 32 * MiB  # the aggregate donated memory
    with pytest.raises(OSError) as info, open(point / "big.bin", "wb") as f:
        f.write(random_bytes(48 * MiB))
    assert info.value.errno == errno.ENOSPC
    assert not (point / "big.bin").exists() or (point / "big.bin").stat().st_size == 0
    subprocess.run([sys.executable, "-m", "memstage", "umount", str(point)], check=True, timeout=30)
    assert proc.wait(timeout=20) == 0  # the mount process exits: nothing left behind
    assert not os.path.ismount(point)


def test_mount_metrics_and_sigterm(local_cluster, tmp_path):
    import signal
    import socket
    import urllib.request

    cluster = local_cluster(benefactors=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    point = tmp_path / "mnt"
    point.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "memstage", "mount", str(point), "--manager",
                             cluster.manager_address, "--metrics-port", str(port), "--log-level", "warning"])
    try:
        wait_for(lambda: os.path.ismount(point) or proc.poll() is not None, what="the mount")
        data = random_bytes(3 * MiB + 5)
        (point / "m.bin").write_bytes(data)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        written = [line for line in body.splitlines() if line.startswith("memstage_client_bytes_written_total")]
        assert written and float(written[0].split()[-1]) == len(data)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not os.path.ismount(point)
    finally:
        if listed_mount(point):
            subprocess.run(["fusermount3", "-u", str(point)], check=False)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if listed_mount(point):
            subprocess.run(["fusermount3", "-uz", str(point)], check=False)



def test_a_chunk_changed_in_place_is_sent_without_asking_the_manager_first(local_cluster, mounted):
    """dbm-style updates (open, seek, write a few bytes, close) asked the manager whether it held
    each rewritten chunk: a round trip per update that never found one. A chunk written back as
    it was is still not sent at all."""
    port = free_port()
    cluster = local_cluster(benefactors=2, manager_args=("--metrics-port", str(port)))
    point, _, _ = mounted(cluster=cluster)
    data = bytearray(random_bytes(4 * MiB))
    (point / "db.dat").write_bytes(data)
    asked = rpc_calls(port).get("FindChunks", 0)
    for at in (100, MiB + 5, 3 * MiB + 7):
        with open(point / "db.dat", "r+b") as f:
            f.seek(at)
            f.write(b"new!")
        data[at : at + 4] = b"new!"
    assert rpc_calls(port).get("FindChunks", 0) == asked
    assert (point / "db.dat").read_bytes() == data
    c = cluster.client()
    before = c.stat("/db.dat").version
    sent = metric(port, "memstage_client_bytes_sent_total", namespace="default")
    assert sent >= 4 * MiB + 3 * MiB  # the file, then one chunk per update
    with open(point / "db.dat", "r+b") as f:  # the same bytes back: a new version, nothing sent
        f.seek(MiB + 5)
        f.write(b"new!")
    assert c.stat("/db.dat").version == before + 1
    assert metric(port, "memstage_client_bytes_sent_total", namespace="default") == sent
    assert (point / "db.dat").read_bytes() == data


def test_a_file_patched_in_place_reads_its_base_chunk_from_what_the_mount_sent(local_cluster, mounted):
    """Each in-place update read its base chunk back from a benefactor; the chunk is the one this
    mount sent at the previous update, kept by content key."""
    cluster = local_cluster(benefactors=0)
    ports = [free_port() for _ in range(2)]
    for port in ports:
        cluster.add_benefactor(64 * MiB, "--metrics-port", str(port))
    point, _, _ = mounted(cluster=cluster)
    data = bytearray(random_bytes(2 * MiB))
    (point / "db.dat").write_bytes(data)
    with open(point / "db.dat", "r+b") as f:  # the first update reads its chunk from a benefactor
        f.write(b"upd")
    data[:3] = b"upd"
    served = sum(metric(port, "memstage_benefactor_served_bytes_total") for port in ports)
    assert served >= MiB
    for at in (10, 20, 30):  # the next ones in the same chunk: from what the mount sent
        with open(point / "db.dat", "r+b") as f:
            f.seek(at)
            f.write(b"upd")
        data[at : at + 3] = b"upd"
    assert sum(metric(port, "memstage_benefactor_served_bytes_total") for port in ports) == served
    c = cluster.client(chunk_cache=0)  # from the benefactors, as every other client reads it
    assert c.cat("/db.dat") == data


def test_an_update_in_place_builds_on_the_layout_the_mount_committed_without_a_lookup(local_cluster, mounted):
    """The next open of a file this mount just committed asked the manager for its map; the mount
    knows it (same inode, same version). A version made elsewhere meanwhile is never taken for it."""
    port = free_port()
    cluster = local_cluster(benefactors=2, manager_args=("--metrics-port", str(port)))
    point, _, _ = mounted(cluster=cluster)
    data = bytearray(random_bytes(2 * MiB))
    (point / "db.dat").write_bytes(data)
    with open(point / "db.dat", "r+b") as f:  # the first update: the map of the file as written
        f.write(b"one")
        f.seek(MiB)
        f.write(b"one")
    data[:3] = data[MiB : MiB + 3] = b"one"
    looked_up = rpc_calls(port).get("Lookup", 0)
    for at in (10, MiB + 20):
        with open(point / "db.dat", "r+b") as f:
            f.seek(at)
            f.write(b"two")
        data[at : at + 3] = b"two"
    assert rpc_calls(port).get("Lookup", 0) == looked_up
    c = cluster.client(chunk_cache=0)
    assert c.cat("/db.dat") == data
    other = bytearray(random_bytes(2 * MiB))  # another client's version of the same size
    c.pipe("/db.dat", bytes(other))
    with open(point / "db.dat", "r+b") as f:
        f.seek(5)
        f.write(b"three")
    other[5:10] = b"three"
    assert c.cat("/db.dat") == other
    assert (point / "db.dat").read_bytes() == other
