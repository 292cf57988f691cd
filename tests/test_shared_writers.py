"""Several writers of one file lose nothing (real processes, real mounts): N-1 checkpoints with
pwrite, O_APPEND logs, two handles of one process, and writers on two mounts of one namespace.
Every file is read back after the page cache is dropped, so the bytes come from memstage."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MiB

from memstage.errors import NotFound

pytestmark = pytest.mark.timeout(240)

# A writer process: opens PATH (O_CREAT|O_WRONLY, no O_TRUNC, as MPI-IO does) and pwrites, for each
# (offset, length, seed) it is given, bytes derived from the seed; closes when done.
PWRITER = r"""
import os, random, sys
path = sys.argv[1]
fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
for spec in sys.argv[2:]:
    offset, length, seed = map(int, spec.split(":"))
    os.pwrite(fd, random.Random(seed).randbytes(length), offset)
os.close(fd)
"""

APPENDER = r"""
import os, sys
path, who, lines = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
for i in range(lines):
    os.write(fd, f"writer {who} line {i:06d} {'x' * 40}\n".encode())
os.close(fd)
"""


def region(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


def drop_caches() -> None:
    os.sync()
    # Not root: the mount's attr_timeout 0 still makes reads ask memstage for new content.
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_writers(jobs: list[list[str]], script: str = PWRITER) -> None:
    """Start every writer at once, then wait: they really overlap in time."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *args]) for args in jobs]
    try:
        for p in procs:
            assert p.wait(timeout=180) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def expected(size: int, specs: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(size)
    for offset, length, seed in specs:
        out[offset : offset + length] = region(seed, length)
    return bytes(out)


def check(path: Path, want: bytes) -> None:
    drop_caches()
    got = path.read_bytes()
    assert len(got) == len(want), f"{path}: {len(got)} bytes, want {len(want)}"
    if got != want:
        bad = next(i for i in range(len(want)) if got[i] != want[i])
        raise AssertionError(f"{path}: first wrong byte at {bad} of {len(want)}")


@pytest.mark.parametrize("length", [16 * MiB, 3_000_001], ids=["aligned-16MiB", "shared-chunks-3000001"])
def test_n_processes_pwrite_disjoint_regions_of_one_file(mounted, length):
    """MPI-IO N-1: four processes, one file, each its own region (the odd size makes neighbours
    share a chunk)."""
    point, cluster, _ = mounted(memory=192 * MiB)
    specs = [(rank * length, length, 100 + rank) for rank in range(4)]
    run_writers([[str(point / "n1.bin"), f"{o}:{n}:{s}"] for o, n, s in specs])
    check(point / "n1.bin", expected(4 * length, specs))


def test_o_append_from_several_processes_loses_no_line(mounted):
    point, cluster, _ = mounted(memory=64 * MiB)
    run_writers([[str(point / "log.txt"), str(w), "1000"] for w in range(4)], script=APPENDER)
    drop_caches()
    lines = (point / "log.txt").read_text().splitlines()
    assert len(lines) == 4000
    for w in range(4):
        mine = [line for line in lines if line.startswith(f"writer {w} ")]
        assert mine == [f"writer {w} line {i:06d} {'x' * 40}" for i in range(1000)], f"writer {w}: torn or lost"


def test_two_handles_of_one_process_closed_in_reverse_order(mounted):
    point, cluster, _ = mounted(memory=64 * MiB)
    path = point / "two.bin"
    first, second = region(1, 2 * MiB), region(2, 2 * MiB)
    a = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    b = os.open(path, os.O_WRONLY)
    os.pwrite(a, first, 0)
    os.pwrite(b, second, 2 * MiB)
    os.close(b)
    os.close(a)
    check(path, first + second)


def test_a_close_commits_though_another_descriptor_is_released_later(mounted):
    """close() returns once what every handle wrote is committed, even while another handle's
    release is still to come (a forked child holds it here; the kernel also releases late)."""
    point, cluster, _ = mounted(memory=64 * MiB)
    path = point / "late.bin"
    first, second = region(7, MiB), region(8, MiB)
    a = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    b = os.open(path, os.O_WRONLY)
    os.pwrite(a, first, 0)
    os.pwrite(b, second, MiB)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], pass_fds=[b],
                             stdin=subprocess.PIPE)
    try:
        os.close(b)  # its description lives on in the child: no release yet
        os.close(a)
        # Committed: the manager has it (this mount would show what it holds either way).
        assert cluster.client().cat("/late.bin") == first + second
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    check(path, first + second)


def test_every_handle_of_a_file_reads_what_any_of_them_wrote(mounted):
    point, cluster, _ = mounted(memory=64 * MiB)
    path = point / "seen.bin"
    first, second = region(5, MiB + 17), region(6, 3 * MiB)
    a = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    b = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(a, first, 0)
        os.pwrite(b, second, MiB)  # over part of a's bytes
        r = os.open(path, os.O_RDONLY)  # not committed yet, and readable here all the same
        try:
            want = first[:MiB] + second
            assert os.pread(a, len(want) + 10, 0) == want
            assert os.pread(r, len(want) + 10, 0) == want
        finally:
            os.close(r)
    finally:
        os.close(b)
        os.close(a)
    check(path, first[:MiB] + second)


def test_writers_on_two_mounts_merge_disjoint_regions(mounted):
    point_a, cluster, _ = mounted(memory=64 * MiB)
    point_b, _, _ = mounted(cluster=cluster)
    first, second = region(3, 8 * MiB), region(4, 8 * MiB)
    a = os.open(point_a / "two-nodes.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    b = os.open(point_b / "two-nodes.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    os.pwrite(a, first, 0)
    os.pwrite(b, second, 8 * MiB)
    os.close(a)
    os.close(b)  # committed second, over the first mount's version
    check(point_a / "two-nodes.bin", first + second)
    check(point_b / "two-nodes.bin", first + second)


# A library rank: opens the file "r+b" through the Python client (no mount) and writes its regions.
LIBRARY_RANK = r"""
import random, sys
from memstage.client import Client
manager, path = sys.argv[1], sys.argv[2]
c = Client(manager=manager, rpc_timeout="30s")
with c.open(path, "r+b") as f:
    for spec in sys.argv[3:]:
        offset, length, seed = map(int, spec.split(":"))
        f.seek(offset)
        f.write(random.Random(seed).randbytes(length))
"""


def test_library_ranks_write_regions_of_one_file_through_r_plus_b(local_cluster):
    cluster = local_cluster(benefactors=2, memory=64 * MiB)
    client = cluster.client()
    client.pipe("/lib/n1.bin", b"")  # rank 0 creates it; then every rank opens it "r+b"
    length = 2_500_001
    specs = [(rank * length, length, 200 + rank) for rank in range(4)]
    run_writers([[cluster.manager_address, "/lib/n1.bin", f"{o}:{n}:{s}"] for o, n, s in specs],
                script=LIBRARY_RANK)
    assert client.cat("/lib/n1.bin") == expected(4 * length, specs)
    with client.open("/lib/n1.bin", "ab") as f:  # appends at the end, whatever the position
        f.seek(0)
        f.write(b"tail")
    assert client.cat("/lib/n1.bin") == expected(4 * length, specs) + b"tail"
    with pytest.raises(RuntimeError), client.open("/lib/n1.bin", "r+b") as f:  # left by an exception
        f.write(b"never")
        raise RuntimeError("the rank failed")
    assert client.cat("/lib/n1.bin") == expected(4 * length, specs) + b"tail"
    with pytest.raises(NotFound):
        client.open("/lib/none.bin", "r+b")  # "r+b" keeps a file: it must exist


def regions(size: int, count: int, seed: int) -> list[tuple[int, int, int]]:
    """`count` regions covering [0, size), cut at random (not chunk-aligned) offsets."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, size), count - 1))
    bounds = [0, *cuts, size]
    return [(bounds[i], bounds[i + 1] - bounds[i], 1000 + i) for i in range(count)]


@pytest.mark.parametrize("redundancy", ["none", "rs:4+2"])
def test_eight_processes_on_two_mounts_write_one_256mib_file(mounted, local_cluster, tmp_path, redundancy):
    """64 regions of a 256 MiB file, written by 8 processes on two mounts in random order, read back
    byte-identical on both mounts; without redundancy it also drains and restores from the PFS."""
    size = 256 * MiB
    cluster = local_cluster(benefactors=2 if redundancy == "none" else 6,
                            memory=(640 if redundancy == "none" else 256) * MiB)
    client = cluster.client()
    if redundancy != "none":
        client.policy(redundancy=redundancy, persist_every=0)
    point_a, _, _ = mounted(cluster=cluster)
    point_b, _, _ = mounted(cluster=cluster)
    specs = regions(size, 64, seed=7)
    order = list(range(64))
    random.Random(8).shuffle(order)
    jobs = []
    for p in range(8):
        mine = [specs[i] for i in order[p::8]]
        point = point_a if p % 2 == 0 else point_b
        jobs.append([str(point / "big.bin"), *(f"{o}:{n}:{s}" for o, n, s in mine)])
    run_writers(jobs)
    want = expected(size, specs)
    check(point_a / "big.bin", want)
    check(point_b / "big.bin", want)
    if redundancy != "none":
        client.wait_protected("/big.bin", timeout=60)
        assert client.stat("/big.bin", protection=True).protected
        return
    # Drained (persist_every 1: every version) and restored from the PFS alone.
    latest = client.versions("/big.bin")[-1]
    from conftest import wait_for

    wait_for(lambda: client.versions("/big.bin")[-1]["persisted"], timeout=120, what="the N-1 file to drain")
    out = tmp_path / "restored.bin"
    subprocess.run([sys.executable, "-m", "memstage", "restore", "--pfs", str(cluster.root / "pfs"),
                    "--namespace", "default", "/big.bin", "--version", str(latest["version"]), "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    assert out.read_bytes() == want
