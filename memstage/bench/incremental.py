"""`memstage bench --timesteps T --change F`: successive checkpoints of one file, mostly unchanged.

Timestep 0 writes --size random bytes; each later timestep overwrites a fraction F of the chunks
in place (chunk-aligned, fresh random bytes) and writes the whole file again under the same path,
as an application checkpointing every N steps does. The same is then run with F = 1.0 (nothing to
deduplicate) and with a one-byte shift at the start (everything moves: fixed-size chunking
catches none of it). Per timestep: bytes sent, OAB, ASB, and the checkpoint's time relative to
timestep 0 (the full one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass

from memstage.bench.measure import write_file
from memstage.bench.report import progress, table
from memstage.units import format_rate, format_size


@dataclass(frozen=True, slots=True)
class Step:
    scenario: str
    timestep: int
    bytes_written: int
    bytes_sent: int
    oab: float
    asb: float
    seconds: float  # open .. close

    @property
    def sent_fraction(self) -> float:
        return self.bytes_sent / self.bytes_written


def _mutate(data: bytearray, scenario: str, change: float, chunk: int, rng: random.Random) -> None:
    if scenario == "shift":
        data[:] = b"\x00" + data[:-1]  # one byte inserted at the start, size kept
        return
    chunks = len(data) // chunk
    for i in rng.sample(range(chunks), round(change * chunks)):
        data[i * chunk : (i + 1) * chunk] = os.urandom(chunk)


def run_scenario(client: object, scenario: str, size: int, change: float, timesteps: int, chunk: int,
                 write_size: int, seed: int) -> list[Step]:
    from memstage.client import Client

    assert isinstance(client, Client)
    rng = random.Random(seed)
    data = bytearray(os.urandom(size))
    path = f"/incremental/{scenario}.bin"
    steps = []
    for t in range(timesteps):
        if t:
            _mutate(data, scenario, change, chunk, rng)
        view = memoryview(data)
        t0 = time.perf_counter()
        result = write_file(client, path, view, write_size)
        seconds = time.perf_counter() - t0
        view.release()
        steps.append(Step(scenario, t, size, result.stats.bytes_sent, size / seconds, result.asb, seconds))
    client.rm(path)
    return steps


def run_incremental(args: argparse.Namespace, size: int, chunk: int, write_size: int) -> int:
    from memstage.cli.up import deployment_client, start_deployment, stop_deployment
    from memstage.client import Client
    from memstage.settings import UpSettings
    from memstage.tuning import keep_large_buffers

    keep_large_buffers()
    timesteps, change = args.timesteps, args.change
    scenarios = [(f"change {change:g}", "change", change), ("change 1", "change", 1.0), ("shift 1 byte", "shift", 1.0)]
    # Every version stays in memory (no retention yet): the worst scenario keeps T full copies.
    memory = (size * timesteps * 5 // 4) // args.benefactors + 16 * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        progress(f"bench: starting a manager and {args.benefactors} benefactors ({format_size(memory)} each)")
        procs = start_deployment(UpSettings(benefactors=args.benefactors, memory=memory, listen="127.0.0.1:0",
                                            state=os.path.join(work, "state"), pfs=os.path.join(work, "pfs"),
                                            heartbeat_interval=2.0), log_level=args.log_level)
        try:
            client = Client(manager=procs[0].address, namespace="bench", chunk_size=chunk,
                            **deployment_client(os.path.join(work, "state")))
            steps: list[Step] = []
            for label, kind, f in scenarios:
                progress(f"bench: {timesteps} timesteps of {format_size(size)}, {label} ...")
                steps += [Step(label, s.timestep, s.bytes_written, s.bytes_sent, s.oab, s.asb, s.seconds)
                          for s in run_scenario(client, kind, size, f, timesteps, chunk, write_size, args.seed)]
            client.close()
        finally:
            stop_deployment(procs)
    # The baseline "full checkpoint" is the warm median of the F = 1.0 scenario, not the first write
    # of the run (that one also pays for cold memory and would flatter the ratio).
    full = statistics.median(s.seconds for s in steps if s.scenario == "change 1")
    summary: dict[str, dict[str, float]] = {}
    for label, _, _ in scenarios:
        later = [s for s in steps if s.scenario == label and s.timestep > 0]
        if later:
            summary[label] = {"time_vs_full": statistics.median(s.seconds for s in later) / full,
                              "sent_fraction": statistics.median(s.sent_fraction for s in later)}
    if args.json:
        print(json.dumps({"setup": {"size": size, "chunk_size": chunk, "timesteps": timesteps, "change": change,
                                    "benefactors": args.benefactors, "cpus": os.cpu_count()},
                          "steps": [asdict(s) for s in steps], "summary": summary}, indent=2))
        return 0
    print(f"memstage bench: {timesteps} timesteps of a {format_size(size)} file, chunk {format_size(chunk)}, "
          f"writes of {format_size(write_size)}, {args.benefactors} benefactors, {os.cpu_count()} CPUs")
    rows = [("scenario", "t", "sent", "sent %", "OAB", "ASB", "time", "time/t0")]
    for s in steps:
        t0 = next(x for x in steps if x.scenario == s.scenario and x.timestep == 0)
        rows.append((s.scenario, str(s.timestep), format_size(s.bytes_sent), f"{100 * s.sent_fraction:.1f}",
                     format_rate(s.oab), format_rate(s.asb), f"{s.seconds:.3f}s", f"{s.seconds / t0.seconds:.2f}"))
    table(rows)
    print(f"full checkpoint (median of the change-1 scenario): {full:.3f}s")
    for label, v in summary.items():
        print(f"{label}: median of timesteps 1..{timesteps - 1}: sent {100 * v['sent_fraction']:.1f}% of the "
              f"bytes, time {v['time_vs_full']:.2f}x the full checkpoint")
    return 0
