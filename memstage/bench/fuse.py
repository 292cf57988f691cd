"""`memstage bench --fuse`: dd through the memstage mount against FUSE's ceiling and kernel tmpfs.

In one run, with the same --size random file as input (kept in tmpfs):
- memstage: dd into a memstage mount of a local deployment (conv=fsync: the version is committed),
  then dd back out of it;
- passthrough: the same through a bare passthrough FUSE filesystem built on the same library
  (mfusepy), onto tmpfs: the most FUSE in Python does on this machine;
- passthrough on libfuse 2 (with big_writes), when libfuse 2 is installed: what fusepy's library
  gives, the reason the mount runs on libfuse 3;
- tmpfs: the same straight into kernel tmpfs.

With --n1, instead: W writer processes (--writers, default 4) write one file of --size together
(each its own contiguous region, with pwrite, as MPI-IO N-1 checkpoints do) against the same W
writers each writing a file of its own of --size / W (N-N), alternating, in one deployment.
Throughput is all bytes over the time from the first writer's open to the last one's close
(each close commits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from memstage.bench.report import progress, table
from memstage.errors import MemstageError
from memstage.procs import RoleProcess
from memstage.units import format_rate, format_size


def _dd(src: str, dst: str, size: int, fsync: bool) -> float:
    args = ["dd", f"if={src}", f"of={dst}", "bs=1M", "status=none"]
    if fsync:
        args.append("conv=fsync")
    # A blocking wait, timed out by a timer: subprocess's wait with a timeout polls at up to 50 ms
    # steps, which made every run up to 50 ms longer (a fifth of a 256 MiB dd).
    t0 = time.perf_counter()
    proc = subprocess.Popen(args)
    timer = threading.Timer(600, proc.kill)
    timer.start()
    try:
        code = proc.wait()
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - t0
    if code:
        raise MemstageError(f"bench: {' '.join(args)} failed (exit {code})")
    return size / elapsed


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


def _start(args: argparse.Namespace, size: int, fast: str, work: str) -> tuple[str, list[RoleProcess], str]:
    """The random input (in `fast`), and a deployment with a mount (under `work`): (input, its
    processes, the mount point)."""
    from memstage.cli.up import start_deployment
    from memstage.settings import UpSettings

    src = os.path.join(fast, "input.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(size))
    memory = size * 3 // args.benefactors + 64 * 1024 * 1024
    progress(f"bench: a manager, {args.benefactors} benefactors ({format_size(memory)} each) and a mount")
    mnt = _mkdir(work, "mnt")
    procs = start_deployment(UpSettings(benefactors=args.benefactors, memory=memory, listen="127.0.0.1:0",
                                        state=os.path.join(work, "state"), pfs=os.path.join(work, "pfs"),
                                        heartbeat_interval=2.0, persist_every=0, keep_versions=1, mount=mnt),
                             log_level=args.log_level)
    return src, procs, mnt


def run_fuse(args: argparse.Namespace, size: int) -> int:
    from memstage.cli.up import stop_deployment

    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=shm) as fast, \
            tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        src, procs, _ = _start(args, size, fast, work)
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


# One writer: copies its region of the input into `out` at `at` (1 MiB writes), closes (commits),
# and prints when it opened and when its close returned.
_WRITER = r"""
import os, sys, time
src, out, start, length, at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
data = os.open(src, os.O_RDONLY)
t0 = time.time()
fd = os.open(out, os.O_CREAT | os.O_WRONLY, 0o644)
done = 0
while done < length:
    n = min(1 << 20, length - done)
    os.pwrite(fd, os.pread(data, n, start + done), at + done)
    done += n
os.close(fd)
print(t0, time.time())
"""


def _write_together(src: str, jobs: list[tuple[str, int, int, int]]) -> float:
    """Bytes per second of writer processes run at once: (output, input offset, length, offset)."""
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, src, out, str(start), str(length), str(at)],
                              stdout=subprocess.PIPE, text=True) for out, start, length, at in jobs]
    spans = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode:
            raise MemstageError(f"bench: a writer failed (exit {p.returncode})")
        spans.append(tuple(map(float, out.split())))
    return sum(j[2] for j in jobs) / (max(e for _, e in spans) - min(s for s, _ in spans))


def run_n1(args: argparse.Namespace, size: int) -> int:
    from memstage.cli.up import stop_deployment

    writers = args.writers
    if writers <= 0 or size < writers:
        raise MemstageError("bench --n1: --writers must be positive and at most --size bytes")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    results: dict[str, list[float]] = {"n1": [], "nn": []}
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=shm) as fast, \
            tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        src, procs, mnt = _start(args, size, fast, work)
        part = size // writers
        bounds = [(w * part, size - w * part if w == writers - 1 else part) for w in range(writers)]
        try:
            for rnd in range(args.repeat + 1):
                progress(f"bench: round {rnd} of {args.repeat}: {writers} writers, {format_size(size)} ...")
                for mode in ("n1", "nn"):
                    if mode == "n1":
                        jobs = [(os.path.join(mnt, f"n1-{rnd}.bin"), start, n, start) for start, n in bounds]
                    else:
                        jobs = [(os.path.join(mnt, f"nn-{rnd}-{w}.bin"), start, n, 0)
                                for w, (start, n) in enumerate(bounds)]
                    rate = _write_together(src, jobs)
                    for out in {j[0] for j in jobs}:
                        os.unlink(out)
                    if rnd:
                        results[mode].append(rate)
        finally:
            stop_deployment(procs)
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["n1"] / med["nn"]
    if args.json:
        print(json.dumps({"setup": {"size": size, "writers": writers, "benefactors": args.benefactors,
                                    "repeat": args.repeat, "cpus": os.cpu_count()},
                          "median": med, "n1_over_nn": ratio}, indent=2))
        return 0
    print(f"memstage bench --fuse --n1: {writers} writers, {format_size(size)} in all, {args.benefactors} "
          f"benefactors, median of {args.repeat} alternating rounds after a warm-up, {os.cpu_count()} CPUs")
    table([("", "throughput"),
           (f"N-1: one file, {writers} writers (pwrite, 1 MiB)", format_rate(med["n1"])),
           (f"N-N: {writers} files of {format_size(size // writers)}", format_rate(med["nn"])),
           ("N-1 / N-N", f"{ratio:.2f}")])
    return 0


def _has_fuse2() -> bool:
    import ctypes.util

    return ctypes.util.find_library("fuse") is not None


def _mkdir(base: str, name: str) -> str:
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    return path
