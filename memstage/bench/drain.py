"""`memstage bench --drain`: drain throughput against the raw disk, and ingest with and without draining.

In one run, with the PFS directory on the disk under --dir:
- raw: --size bytes written sequentially to one file there, then fsync (the disk's own speed);
- drain: a --size file committed with persist_every 1, timed from commit until the manager marks
  it persisted (every chunk file written, fsynced, renamed and reported);
- ingest ASB of a --size file with nothing draining, and while a previous --size file drains.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

from memstage.bench.measure import disk_write_seconds, write_file
from memstage.bench.report import progress, table
from memstage.units import format_rate, format_size


def _raw_disk(directory: str, data: memoryview, write_size: int) -> float:
    os.sync()  # start from a clean page cache: no writeback of earlier steps in this measurement
    return len(data) / disk_write_seconds(os.path.join(directory, "raw-disk.bin"), data, write_size)


def _wait_persisted(client: Any, path: str, version: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(v["version"] == version and v["persisted"] for v in client.versions(path)):
            return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError(f"{path} version {version} was not persisted within {timeout:.0f}s")


def run_drain(args: argparse.Namespace, size: int, chunk: int, write_size: int) -> int:
    from memstage.cli.up import deployment_client, start_deployment, stop_deployment
    from memstage.client import Client
    from memstage.settings import UpSettings
    from memstage.tuning import keep_large_buffers

    keep_large_buffers()
    memory = (size * 3) // args.benefactors + 32 * 1024 * 1024  # two files and a spare
    results: dict[str, list[float]] = {"raw": [], "drain": [], "asb_idle": [], "asb_draining": []}
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        progress(f"bench: starting a manager and {args.benefactors} benefactors ({format_size(memory)} each), "
                 f"PFS in {work}")
        procs = start_deployment(UpSettings(benefactors=args.benefactors, memory=memory, listen="127.0.0.1:0",
                                            state=os.path.join(work, "state"), pfs=os.path.join(work, "pfs"),
                                            heartbeat_interval=2.0, keep_versions=1), log_level=args.log_level)
        try:
            c = Client(manager=procs[0].address, namespace="bench", chunk_size=chunk,
                       **deployment_client(os.path.join(work, "state")))
            for rnd in range(args.repeat + 1):  # round 0 warms up
                progress(f"bench: round {rnd} of {args.repeat} ({format_size(size)}) ...")
                data = memoryview(os.urandom(size))
                raw = _raw_disk(work, data, write_size)
                c.policy(persist_every=0)
                idle = write_file(c, f"/r{rnd}/idle", data, write_size).asb
                c.rm(f"/r{rnd}/idle")
                c.policy(persist_every=1)
                data = memoryview(os.urandom(size))
                os.sync()  # as for the raw write: earlier steps' writeback must not count against the drain
                first = write_file(c, f"/r{rnd}/drained", data, write_size)
                committed = time.perf_counter()
                done = _wait_persisted(c, f"/r{rnd}/drained", first.version)
                drain = size / (done - committed)
                data = memoryview(os.urandom(size))
                write_file(c, f"/r{rnd}/first", data, write_size)  # starts draining at its commit ...
                data = memoryview(os.urandom(size))
                busy = write_file(c, f"/r{rnd}/second", data, write_size).asb  # ... while this one is ingested
                for path in ("drained", "first", "second"):
                    _wait_persisted(c, f"/r{rnd}/{path}", 1)
                    c.rm(f"/r{rnd}/{path}")
                if rnd:
                    for key, value in (("raw", raw), ("drain", drain), ("asb_idle", idle), ("asb_draining", busy)):
                        results[key].append(value)
            c.close()
        finally:
            stop_deployment(procs)
    med = {k: statistics.median(v) for k, v in results.items()}
    if args.json:
        print(json.dumps({"setup": {"size": size, "benefactors": args.benefactors, "chunk_size": chunk,
                                    "repeat": args.repeat, "cpus": os.cpu_count()},
                          "median": med, "drain_over_raw": med["drain"] / med["raw"],
                          "asb_draining_over_idle": med["asb_draining"] / med["asb_idle"]}, indent=2))
        return 0
    print(f"memstage bench --drain: {format_size(size)}, {args.benefactors} benefactors, chunk {format_size(chunk)}, "
          f"median of {args.repeat} after a warm-up, {os.cpu_count()} CPUs")
    table([("raw disk write+fsync", "drain to PFS", "drain/raw", "ingest ASB idle", "ingest ASB while draining",
            "draining/idle"),
           (format_rate(med["raw"]), format_rate(med["drain"]), f"{med['drain'] / med['raw']:.2f}",
            format_rate(med["asb_idle"]), format_rate(med["asb_draining"]),
            f"{med['asb_draining'] / med['asb_idle']:.2f}")])
    return 0
