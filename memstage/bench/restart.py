"""`memstage bench --restart`: how fast a restarted job reads its checkpoint, in one run.

A first deployment writes a checkpoint of --size bytes (four rank files in a per-step directory),
persisted to the PFS, and reads it back (the baseline: a checkpoint written in this deployment).
It is stopped; a second deployment on the same PFS then reads the checkpoint
- from the PFS, through memstage (the chunk files' page cache dropped first),
- after `prefetch` loaded it back into memory (the prefetch itself is timed too),
and the same bytes are read from plain files on the local disk (page cache dropped) for
comparison. The target: read after prefetch >= 0.9 x the in-deployment read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from memstage.bench.report import progress, table
from memstage.units import format_rate, format_size

RANKS = 4
READ_SIZE = 16 * 1024 * 1024
STEP_DIR = "/ckpt/step_1"


def _drop_cache(paths: list[Path]) -> None:
    """Clean pages of these files leave the page cache, so a read comes from the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_all(client: Any, paths: list[str]) -> float:
    """Seconds to read every file whole, in READ_SIZE pieces, one after the other."""
    start = time.perf_counter()
    for path in paths:
        with client.open(path, "rb") as f:
            while f.read(READ_SIZE):
                pass
    return time.perf_counter() - start


def _read_local(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(READ_SIZE):
                pass
    return time.perf_counter() - start


def _chunk_files(pfs: Path) -> list[Path]:
    return [p for p in pfs.rglob("*.chunk") if p.is_file()]


def run_restart(args: argparse.Namespace, size: int, chunk: int) -> int:
    from memstage.cli.up import deployment_client, start_deployment, stop_deployment
    from memstage.client import Client
    from memstage.settings import UpSettings
    from memstage.tuning import keep_large_buffers

    keep_large_buffers()
    part = size // RANKS
    memory = (size * 5 // 4) // args.benefactors + 32 * 1024 * 1024
    files = [f"{STEP_DIR}/rank{r}.bin" for r in range(RANKS)]
    results: dict[str, list[float]] = {"in_deployment": [], "from_pfs": [], "prefetch": [], "after_prefetch": [],
                                       "local_disk": []}
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        pfs = Path(work) / "pfs"
        local = Path(work) / "local"
        local.mkdir()

        def deployment(name: str) -> tuple[list[Any], Any]:
            state = os.path.join(work, name)
            procs = start_deployment(UpSettings(benefactors=args.benefactors, memory=memory, listen="127.0.0.1:0",
                                                state=state, pfs=str(pfs), heartbeat_interval=2.0,
                                                insecure=args.insecure), log_level=args.log_level)
            return procs, Client(manager=procs[0].address, namespace="bench", chunk_size=chunk,
                                 **deployment_client(state))

        progress(f"bench: first job: {args.benefactors} benefactors ({format_size(memory)} each), "
                 f"a checkpoint of {RANKS} x {format_size(part)}, PFS in {work}")
        procs, c = deployment("job1")
        try:
            c.policy(persist_every=1)
            for r, path in enumerate(files):
                data = os.urandom(part)
                with c.open(path, "wb") as f:
                    f.write(data)
                (local / f"rank{r}.bin").write_bytes(data)
            for _ in range(args.repeat):
                results["in_deployment"].append(size / _read_all(c, files))
            deadline = time.monotonic() + 600
            while not all(c.versions(p)[-1]["persisted"] for p in files):
                if time.monotonic() > deadline:
                    raise TimeoutError("the checkpoint was not persisted within 600s")
                time.sleep(0.05)
            c.close()
        finally:
            stop_deployment(procs)
        locals_ = sorted(local.iterdir())
        for rnd in range(args.repeat):
            # Each round is a new job: a new deployment on the same PFS, nothing of it in memory.
            progress(f"bench: round {rnd + 1} of {args.repeat}: a new job on the same PFS reads from the PFS, "
                     "prefetches, reads from memory ...")
            procs, c = deployment(f"job{rnd + 2}")
            try:
                _drop_cache(_chunk_files(pfs))
                results["from_pfs"].append(size / _read_all(c, files))
                _drop_cache(_chunk_files(pfs))
                start = time.perf_counter()
                done = c.prefetch(STEP_DIR)
                results["prefetch"].append(size / (time.perf_counter() - start))
                if done["failed_chunks"]:
                    raise RuntimeError(f"prefetch could not load {done['failed_chunks']} chunks: {done['error']}")
                results["after_prefetch"].append(size / _read_all(c, files))
                c.close()
            finally:
                stop_deployment(procs)
            _drop_cache(locals_)
            results["local_disk"].append(size / _read_local(locals_))
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["after_prefetch"] / med["in_deployment"]
    if args.json:
        print(json.dumps({"setup": {"size": size, "benefactors": args.benefactors, "chunk_size": chunk,
                                    "repeat": args.repeat, "cpus": os.cpu_count()},
                          "median": med, "after_prefetch_over_in_deployment": ratio}, indent=2))
        return 0
    print(f"memstage bench --restart: a checkpoint of {RANKS} x {format_size(part)}, {args.benefactors} "
          f"benefactors, chunk {format_size(chunk)}, median of {args.repeat}, {os.cpu_count()} CPUs")
    table([("read in deployment", "read from PFS", "prefetch", "read after prefetch", "local disk",
            "after prefetch/in deployment"),
           (format_rate(med["in_deployment"]), format_rate(med["from_pfs"]), format_rate(med["prefetch"]),
            format_rate(med["after_prefetch"]), format_rate(med["local_disk"]), f"{ratio:.2f}")])
    return 0
