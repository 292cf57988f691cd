"""`memstage bench --fuse`: dd through the memstage mount against FUSE's ceiling and kernel tmpfs.

In one run, with the same --size random file as input (kept in tmpfs):
- memstage: dd into a memstage mount of a local deployment (conv=fsync: the version is committed),
  then dd back out of it;
- passthrough: the same through a bare passthrough FUSE filesystem built on the same library
  (mfusepy), onto tmpfs: the most FUSE in Python does on this machine;
- passthrough on libfuse 2 (with big_writes), when libfuse 2 is installed: what fusepy's library
  gives, the reason the mount runs on libfuse 3;
- tmpfs: the same straight into kernel tmpfs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from memstage.bench.report import progress, table
from memstage.errors import MemstageError
from memstage.units import format_rate, format_size


def _dd(src: str, dst: str, size: int, fsync: bool) -> float:
    args = ["dd", f"if={src}", f"of={dst}", "bs=1M", "status=none"]
    if fsync:
        args.append("conv=fsync")
    t0 = time.perf_counter()
    subprocess.run(args, check=True, timeout=600)
    return size / (time.perf_counter() - t0)


def _mounted(cmd: list[str], point: str, library: str = "fuse3") -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, start_new_session=True, env={**os.environ, "FUSE_LIBRARY_NAME": library})
    deadline = time.monotonic() + 30
    while not os.path.ismount(point):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise MemstageError(f"bench: could not mount {point}")
        time.sleep(0.05)
    return proc


def _unmount(point: str, proc: subprocess.Popen[bytes]) -> None:
    subprocess.run(["fusermount3", "-u", point], check=False)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_fuse(args: argparse.Namespace, size: int) -> int:
    from memstage.settings import UpSettings
    from memstage.up import start_deployment, stop_deployment

    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=shm) as fast, \
            tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        src = os.path.join(fast, "input.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(size))
        memory = size * 3 // args.benefactors + 64 * 1024 * 1024
        progress(f"bench: a manager, {args.benefactors} benefactors ({format_size(memory)} each) and a mount")
        procs = start_deployment(UpSettings(benefactors=args.benefactors, memory=memory, listen="127.0.0.1:0",
                                            state=os.path.join(work, "state"), pfs=os.path.join(work, "pfs"),
                                            heartbeat_interval=2.0, persist_every=0, keep_versions=1,
                                            mount=_mkdir(work, "mnt")))
        passthroughs: list[tuple[str, subprocess.Popen[bytes]]] = []
        targets = {"memstage": os.path.join(work, "mnt")}
        try:
            for name, library in [("passthrough", "fuse3"), ("passthrough_fuse2", "fuse")][: 2 if _has_fuse2() else 1]:
                through = _mkdir(fast, f"through-{library}")
                point = _mkdir(work, name)
                passthroughs.append((point, _mounted([sys.executable, "-m", "memstage.bench.passthrough", through,
                                                      point], point, library)))
                targets[name] = point
            targets["tmpfs"] = fast
            for rnd in range(args.repeat + 1):
                progress(f"bench: round {rnd} of {args.repeat} ({format_size(size)}) ...")
                for name, directory in targets.items():
                    out = os.path.join(directory, f"dd-{rnd}.bin")
                    write = _dd(src, out, size, fsync=True)
                    read = _dd(out, "/dev/null", size, fsync=False)
                    os.unlink(out)
                    if rnd:
                        results.setdefault(f"{name}_write", []).append(write)
                        results.setdefault(f"{name}_read", []).append(read)
        finally:
            for point, proc in passthroughs:
                _unmount(point, proc)
            stop_deployment(procs)
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["memstage_write"] / med["passthrough_write"]
    if args.json:
        print(json.dumps({"setup": {"size": size, "benefactors": args.benefactors, "repeat": args.repeat,
                                    "cpus": os.cpu_count()}, "median": med,
                          "memstage_write_over_passthrough": ratio}, indent=2))
        return 0
    print(f"memstage bench --fuse: dd bs=1M of {format_size(size)}, {args.benefactors} benefactors, median of "
          f"{args.repeat} after a warm-up, {os.cpu_count()} CPUs")
    fuse2 = "passthrough_fuse2_write" in med
    rows = [("", "memstage mount", "bare FUSE passthrough", *(["passthrough on libfuse 2"] if fuse2 else []),
             "kernel tmpfs", "memstage/passthrough")]
    for op in ("write", "read"):
        rows.append((f"dd {op}", format_rate(med[f"memstage_{op}"]), format_rate(med[f"passthrough_{op}"]),
                     *([format_rate(med[f"passthrough_fuse2_{op}"])] if fuse2 else []),
                     format_rate(med[f"tmpfs_{op}"]), f"{med[f'memstage_{op}'] / med[f'passthrough_{op}']:.2f}"))
    table(rows)
    return 0


def _has_fuse2() -> bool:
    import ctypes.util

    return ctypes.util.find_library("fuse") is not None


def _mkdir(base: str, name: str) -> str:
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    return path
