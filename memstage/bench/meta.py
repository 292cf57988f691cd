"""`memstage bench --meta`: metadata rates through the mount and the library, against FUSE's
ceiling and kernel tmpfs, in one run.

Each target gets a directory of --files files of 4 KiB, as a checkpoint of many small files is:
- create: open(O_CREAT) + write 4 KiB + close, per file (through the mount each close commits);
- stat: one stat per file;
- ls -l: one listing of the directory with every entry's attributes;
- rename: every file to a new name in the same directory;
- unlink: every file;
- open-write-close: one file opened, written (64 bytes at a random offset) and closed --files
  times, as key-value stores like Python's dbm.dumb do;
- dbm.dumb: a real dbm.dumb store of --files keys, each written 3 times (updates per second);
- a checkpoint of --files files of 64 KiB (as PyTorch DCP writes shards) against the same bytes
  written as one file (MB/s; not through the library).
Targets: the memstage mount of a local deployment (secured, as memstage up runs it), the same
operations through the library (Client: pipe, info, ls(detail), mv, rm_file, and an open for
update), a bare passthrough FUSE filesystem onto tmpfs (the ceiling of FUSE in Python here), and
kernel tmpfs. Rates are operations per second, medians of --repeat rounds after a warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from memstage.bench.fuse import _mkdir, _mounted, _unmount
from memstage.bench.report import progress, table
from memstage.errors import SettingError

OPS = ("create", "stat", "ls -l", "rename", "unlink", "open-write-close")
# Through POSIX only: updates/s of a dbm.dumb store (each opens, seeks, writes and closes its data
# file), and MB/s of a checkpoint of --files files of 64 KiB against the same bytes as one file.
POSIX_OPS = ("dbm.dumb updates", "64 KiB files, MB/s", "one file, MB/s")
SMALL = 4096
SHARD = 64 * 1024


def _each(op: Callable[..., object], *columns: list[str]) -> None:
    for args in zip(*columns, strict=True):
        op(*args)


def _posix_round(base: str, files: int, payload: bytes) -> dict[str, float]:
    """Seconds of each operation over `files` files in a fresh directory under `base`."""
    d = os.path.join(base, f"meta-{time.monotonic_ns()}")
    os.mkdir(d)
    names = [os.path.join(d, f"f{i:06d}.bin") for i in range(files)]
    out: dict[str, float] = {}

    def timed(op: str, work: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        work()
        out[op] = time.perf_counter() - t0

    def create() -> None:
        for n in names:
            fd = os.open(n, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, payload)
            os.close(fd)

    def listing() -> None:
        with os.scandir(d) as it:
            for entry in it:
                entry.stat(follow_symlinks=False)

    renamed = [n[:-4] + ".renamed" for n in names]

    def update() -> None:
        rnd = random.Random(1)
        target = renamed[0]
        for _ in range(files):
            fd = os.open(target, os.O_RDWR)
            os.pwrite(fd, payload[:64], rnd.randrange(0, SMALL - 64))
            os.close(fd)

    timed("create", create)
    timed("stat", lambda: _each(os.stat, names))
    timed("ls -l", listing)
    timed("rename", lambda: _each(os.rename, names, renamed))
    timed("open-write-close", update)
    timed("unlink", lambda: _each(os.unlink, renamed))
    out.update(_posix_more(d, files, payload))
    os.rmdir(d)
    return out


def _posix_more(d: str, files: int, payload: bytes) -> dict[str, float]:
    """POSIX_OPS, as seconds per unit their rates count (an update; a MB)."""
    import dbm.dumb
    import shutil

    out: dict[str, float] = {}
    kv = os.path.join(d, "kv")
    t0 = time.perf_counter()
    with dbm.dumb.open(kv, "c") as db:
        for value in (payload[:100], payload[100:200], payload[200:300]):  # each key written 3 times
            for i in range(files):
                db[b"key%d" % i] = value
    out["dbm.dumb updates"] = (time.perf_counter() - t0) / (3 * files)
    for suffix in (".dat", ".dir", ".bak"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(kv + suffix)
    shard = (payload * (SHARD // len(payload) + 1))[:SHARD]
    ckpt = os.path.join(d, "ckpt")
    os.mkdir(ckpt)
    t0 = time.perf_counter()
    for i in range(files):  # a DCP-style checkpoint: one file per shard, in one directory
        with open(os.path.join(ckpt, f"__{i}_0.distcp"), "wb") as f:
            f.write(shard)
    out["64 KiB files, MB/s"] = (time.perf_counter() - t0) / (files * SHARD / 1e6)
    shutil.rmtree(ckpt)
    block = shard * 16
    t0 = time.perf_counter()
    with open(os.path.join(d, "one"), "wb") as f:
        for _ in range(files // 16):
            f.write(block)
        f.write(shard * (files % 16))
    out["one file, MB/s"] = (time.perf_counter() - t0) / (files * SHARD / 1e6)
    os.unlink(os.path.join(d, "one"))
    return out


def _library_round(client: Any, files: int, payload: bytes) -> dict[str, float]:
    d = f"/meta-lib-{time.monotonic_ns()}"
    names = [f"{d}/f{i:06d}.bin" for i in range(files)]
    renamed = [n[:-4] + ".renamed" for n in names]
    out: dict[str, float] = {}

    def timed(op: str, work: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        work()
        out[op] = time.perf_counter() - t0

    def update() -> None:
        rnd = random.Random(1)
        for _ in range(files):
            with client.open(renamed[0], "r+b") as f:  # a new version each time, as a close through the mount
                f.seek(rnd.randrange(0, SMALL - 64))
                f.write(payload[:64])

    timed("create", lambda: _each(lambda n: client.pipe(n, payload), names))
    timed("stat", lambda: _each(client.info, names))
    timed("ls -l", lambda: client.ls(d, detail=True))
    timed("rename", lambda: _each(client.mv, names, renamed))
    timed("open-write-close", update)
    timed("unlink", lambda: _each(client.rm_file, renamed))
    return out


def run_meta(args: argparse.Namespace) -> int:
    from memstage.cli.up import deployment_client, start_deployment, stop_deployment
    from memstage.client import Client
    from memstage.settings import UpSettings

    files = args.files
    if files <= 0:
        raise SettingError("bench: --files must be positive")
    payload = os.urandom(SMALL)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    rounds: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=shm) as fast, \
            tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        progress(f"bench: a manager, {args.benefactors} benefactors and a mount")
        mnt = _mkdir(work, "mnt")
        state = os.path.join(work, "state")
        procs = start_deployment(UpSettings(benefactors=args.benefactors, memory=256 * 1024 * 1024,
                                            listen="127.0.0.1:0", state=state, pfs=os.path.join(work, "pfs"),
                                            heartbeat_interval=2.0, persist_every=0, keep_versions=1, mount=mnt,
                                            insecure=args.insecure), log_level=args.log_level)
        passthrough: subprocess.Popen[bytes] | None = None
        client = None
        try:
            through, point = _mkdir(fast, "through"), _mkdir(work, "passthrough")
            passthrough = _mounted([sys.executable, "-m", "memstage.bench.passthrough", through, point], point)
            client = Client(manager=procs[0].address, namespace="default", **deployment_client(state))
            targets: dict[str, Callable[[], dict[str, float]]] = {
                "memstage mount": lambda: _posix_round(mnt, files, payload),
                "memstage library": lambda: _library_round(client, files, payload),
                "bare FUSE passthrough": lambda: _posix_round(point, files, payload),
                "kernel tmpfs": lambda: _posix_round(_mkdir(fast, "tmpfs"), files, payload),
            }
            for rnd in range(args.repeat + 1):
                progress(f"bench: round {rnd} of {args.repeat} ({files} files of {SMALL} bytes) ...")
                for name, one in targets.items():
                    got = one()
                    if rnd:
                        rounds.setdefault(name, []).append(got)
        finally:
            if client is not None:
                client.close()
            if passthrough is not None:
                _unmount(point, passthrough)
            stop_deployment(procs)
    # Operations per second; ls -l as entries listed per second (one listing of `files` entries).
    rates = {name: {op: files / statistics.median(r[op] for r in got) for op in OPS} for name, got in rounds.items()}
    for name, results in rounds.items():
        for op in POSIX_OPS:
            if op in results[0]:
                rates[name][op] = 1 / statistics.median(r[op] for r in results)
    ls_seconds = {name: statistics.median(r["ls -l"] for r in got) for name, got in rounds.items()}
    if args.json:
        print(json.dumps({"setup": {"files": files, "bytes": SMALL, "benefactors": args.benefactors,
                                    "repeat": args.repeat, "cpus": os.cpu_count(), "insecure": args.insecure},
                          "per_second": rates, "ls_seconds": ls_seconds}, indent=2))
        return 0
    print(f"memstage bench --meta: {files} files of {SMALL} bytes in one directory, {args.benefactors} benefactors "
          f"({'insecure' if args.insecure else 'secured'}), median of {args.repeat} after a warm-up, "
          f"{os.cpu_count()} CPUs; operations per second (ls -l: entries per second)")
    names = list(rates)
    rows = [("", *names, "mount/passthrough")]
    for op in (*OPS, *POSIX_OPS):
        rows.append((op, *(f"{rates[n][op]:,.0f}" if op in rates[n] else "-" for n in names),
                     f"{rates['memstage mount'][op] / rates['bare FUSE passthrough'][op]:.3f}"))
    table(rows)
    mount, tmpfs = rates["memstage mount"], rates["kernel tmpfs"]
    ratio = mount["64 KiB files, MB/s"] / mount["one file, MB/s"]
    dbm_mount, dbm_tmpfs = 60_000 / mount["dbm.dumb updates"], 60_000 / tmpfs["dbm.dumb updates"]
    print(f"mount: a checkpoint of {files} files of 64 KiB at {ratio:.2f} x the rate of one file of the same "
          f"bytes; dbm.dumb, 20,000 keys updated 3 times: about {dbm_mount:.0f} s (tmpfs: {dbm_tmpfs:.1f} s)")
    return 0
