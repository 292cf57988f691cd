"""`memstage bench`: OAB/ASB of a local deployment against baselines measured in the same run.

For each client count C: C processes each write one checkpoint file of --size random bytes
(written in --write-size pieces from a memoryview, as numpy or torch hand over buffers) into
memstage; the same bytes are written by C processes to files in --dir with fsync (the disk);
and sent by C processes to one sink process over three bare transports, the transport ceilings:
grpcio streams (grpc ceiling), raw TCP and TLS 1.3 with mutual authentication (tcp and tls
ceilings: two connections per client, 1 MiB frames hashed with xxh3_128 at both ends and
acknowledged, no memstage code on the path; see rawceiling.py). ASB/tls is the ratio to compare
for a secured deployment (the default), ASB/tcp with --insecure.
Every measurement is repeated (--repeat) after one unmeasured warm-up, the median is reported.
Aggregate bandwidth = C x size / the slowest client's time. Figures are ratios in one run.
CPU-s/GiB: CPU seconds the memstage clients (together), the benefactors (together, from /proc)
and the manager (with its helper processes) spent during the measured memstage writes, over the
GiB written in them (a total over the rounds, not a median).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from memstage.bench.measure import disk_write_seconds, write_file
from memstage.bench.report import progress, table
from memstage.errors import MemstageError, SettingError
from memstage.units import format_rate, format_size, parse_size

MiB = 1024 * 1024
GiB = 1024 * MiB


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="1GiB", help="checkpoint file size per client (default 1GiB)")
    p.add_argument("--benefactors", type=int, default=None,
                   help="benefactor processes (default 4; with --redundancy, as many as its widest policy needs)")
    p.add_argument("--clients", default="1,2", help="client process counts to run, comma-separated (default 1,2)")
    p.add_argument("--chunk-size", default="1MiB", help="memstage chunk size (default 1MiB)")
    p.add_argument("--write-size", default="16MiB", help="bytes per write() call of the application (default 16MiB)")
    p.add_argument("--repeat", type=int, default=3, help="measured repetitions after one warm-up (default 3)")
    p.add_argument("--dir", default=None, help="directory for the disk baseline and the deployment's state "
                                              "(default: a temporary directory)")
    p.add_argument("--timesteps", type=int, default=0,
                   help="incremental mode: write this many successive checkpoints of one file (default 0: off)")
    p.add_argument("--change", type=float, default=0.1,
                   help="incremental mode: fraction of chunks changed between timesteps (default 0.1)")
    p.add_argument("--seed", type=int, default=1, help="incremental mode: seed of which chunks change")
    p.add_argument("--fuse", action="store_true",
                   help="FUSE mode: dd through the mount vs a bare passthrough FUSE filesystem and kernel tmpfs")
    p.add_argument("--meta", action="store_true",
                   help="metadata mode: create, stat, ls -l, rename, unlink and open-write-close rates of --files "
                        "small files through the mount and the library, against a bare passthrough FUSE "
                        "filesystem and kernel tmpfs")
    p.add_argument("--files", type=int, default=2000, help="--meta: files per round (default 2000)")
    p.add_argument("--n1", action="store_true",
                   help="with --fuse: --writers processes write one file of --size together (N-1, pwrite) "
                        "against each writing a file of its own (N-N), alternating")
    p.add_argument("--writers", type=int, default=4, help="--fuse --n1: writer processes (default 4)")
    p.add_argument("--drain", action="store_true",
                   help="drain mode: drain throughput vs raw disk, ingest ASB with and without draining")
    p.add_argument("--restart", action="store_true",
                   help="restart mode: a new deployment on the same PFS reads a --size checkpoint from the PFS, "
                        "prefetches it and reads it from memory, against reading it in the deployment that wrote "
                        "it and from local disk")
    p.add_argument("--redundancy", default=None, metavar="POLICIES",
                   help="compare redundancy policies (e.g. rs:4+2,replicate:2) against none: OAB, ASB, time "
                        "until protected, encoding CPU, degraded reads and rebuild after a SIGKILLed benefactor")
    p.add_argument("--transports", default="unix,tcp,grpc",
                   help="how the memstage clients send, one row each (default unix,tcp,grpc): unix = the stream "
                        "transport over the benefactors' Unix sockets, tcp = the stream transport over TCP (TLS "
                        "unless --insecure), grpc = gRPC (TLS unless --insecure)")
    p.add_argument("--insecure", action="store_true",
                   help="measure a deployment without TLS and tokens (the default is secured, as memstage up is)")
    p.add_argument("--security", action="store_true",
                   help="compare a secured deployment (mutual TLS, tokens) with an --insecure one in alternating "
                        "rounds: OAB and ASB of each and their ratio")
    p.add_argument("--manager", action="store_true",
                   help="a checkpoint storm against a real manager: simulated benefactors heartbeat while writers "
                        "commit; heartbeats and commits per second, latencies, false deaths, manager CPU and memory")
    p.add_argument("--sim-benefactors", type=int, default=10000,
                   help="--manager: simulated benefactors (default 10000)")
    p.add_argument("--sim-heartbeat", type=float, default=30.0,
                   help="--manager: their heartbeat period in seconds (default 30)")
    p.add_argument("--commits", type=int, default=1000, help="--manager: commits to make (default 1000)")
    p.add_argument("--committers", type=int, default=256, help="--manager: concurrent writers (default 256)")
    p.add_argument("--chunks", type=int, default=1024, help="--manager: chunks per committed file (default 1024)")
    p.add_argument("--commit-rate", type=float, default=0.0,
                   help="--manager: commits per second for --duration instead of --commits as fast as possible")
    p.add_argument("--duration", type=float, default=60.0, help="--manager: seconds of --commit-rate (default 60)")
    p.add_argument("--heartbeat-listen", default="",
                   help="--manager: the manager's heartbeat_listen (default: its own process on a free port; off = "
                        "heartbeats answered by the manager process, to compare)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


# The client settings of each --transports name.
TRANSPORTS: dict[str, dict[str, Any]] = {"unix": {"transport": "stream"},
                                         "tcp": {"transport": "stream", "unix_sockets": False},
                                         "grpc": {"transport": "grpc"}}


@dataclass(frozen=True, slots=True)
class Row:
    clients: int
    transport: str  # a --transports name
    insecure: bool
    bytes_per_client: int
    oab: float  # aggregate bytes/s, as defined in the module docstring
    asb: float
    disk: float
    grpc: float
    tcp: float
    tls: float
    client_cpu_per_gib: float  # CPU seconds per GiB written, as defined in the module docstring
    benefactors_cpu_per_gib: float
    manager_cpu_per_gib: float

    @property
    def asb_over_grpc(self) -> float:
        return self.asb / self.grpc

    @property
    def ceiling_name(self) -> str:
        """The ceiling of the same protection: plain TCP for a Unix socket (no encryption, like
        loopback TCP) and for an insecure deployment, else TLS; gRPC's own for gRPC."""
        if self.transport == "grpc":
            return "grpc"
        return "tcp" if self.transport == "unix" or self.insecure else "tls"

    @property
    def asb_over_ceiling(self) -> float:
        return self.asb / float(getattr(self, self.ceiling_name))

    @property
    def asb_over_tls(self) -> float:
        return self.asb / self.tls

    @property
    def asb_over_tcp(self) -> float:
        return self.asb / self.tcp

    @property
    def asb_over_disk(self) -> float:
        return self.asb / self.disk

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"ceiling": self.ceiling_name, "asb_over_ceiling": self.asb_over_ceiling,
                               "asb_over_grpc": self.asb_over_grpc, "asb_over_tls": self.asb_over_tls,
                               "asb_over_tcp": self.asb_over_tcp, "asb_over_disk": self.asb_over_disk}


@dataclass(slots=True)
class Runs:
    """What the clients of one _run_clients measured."""

    rounds: list[tuple[float, float]]  # per measured round: (slowest OAB time, slowest ASB time)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds over the measured rounds, by who


# -- workers (run in child processes) -----------------------------------------------------------

def _worker(kind: str, args: dict[str, Any], index: int, barrier: Any, results: Any) -> None:
    try:
        _measure(kind, args, index, barrier, results)
    except MemstageError as e:
        print(f"memstage bench: {kind} client {index}: {e}", file=sys.stderr, flush=True)
        barrier.abort()
        raise SystemExit(1) from None


def _measure(kind: str, args: dict[str, Any], index: int, barrier: Any, results: Any) -> None:
    from memstage.tuning import keep_large_buffers

    keep_large_buffers()
    data = os.urandom(args["size"])
    client = None
    if kind == "memstage":
        from memstage.client import Client

        client = Client(manager=args["manager"], namespace="bench", chunk_size=args["chunk_size"], **args["client"])
    out = []
    cpu = {"client": 0.0}
    for rnd in range(args["rounds"]):
        barrier.wait()
        # One client samples the deployment's CPU, between barriers every client passes together.
        watch = args.get("watch") if index == 0 and rnd > 0 and kind == "memstage" else None
        before = _deployment_cpu(watch) if watch else {}
        c0 = time.process_time()
        out.append(_timed(kind, args, client, index, rnd, data))
        if rnd > 0:  # the warm-up's CPU is not counted
            cpu["client"] += time.process_time() - c0
        if client is not None:
            barrier.wait()
            if watch:
                for who, seconds in _deployment_cpu(watch).items():
                    cpu[who] = cpu.get(who, 0.0) + seconds - before[who]
            if index == 0:
                client.rm(f"/bench/round{rnd}", recursive=True)
    results.put((index, out, cpu))


def _timed(kind: str, args: dict[str, Any], client: Any, index: int, rnd: int, data: bytes) -> tuple[float, float]:
    """One round of one client: (OAB seconds, ASB seconds)."""
    view = memoryview(data)
    if kind == "memstage":
        t0 = time.perf_counter()
        result = write_file(client, f"/bench/round{rnd}/client{index}.bin", view, args["write_size"])
        return time.perf_counter() - t0, result.stats.asb_seconds
    if kind == "disk":
        dt = disk_write_seconds(os.path.join(args["dir"], f"disk-{index}.bin"), view, args["write_size"])
    elif kind == "grpc":
        from memstage.bench.ceiling import push

        dt = push(args["address"], data, args["chunk_size"])
    else:
        from memstage.bench import rawceiling

        dt = rawceiling.push(args[f"{kind}_address"], data, args["chunk_size"],
                             args["tls_folder"] if kind == "tls" else None)
    return dt, dt


def _deployment_cpu(watch: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each group of processes (e.g. benefactors, manager)."""
    from memstage.bench.cpu import total_seconds

    return {who: total_seconds(pids) for who, pids in watch.items()}


def _run_parallel(kind: str, clients: int, args: dict[str, Any]) -> list[tuple[float, float]]:
    """Per round (warm-up excluded): (slowest OAB time, slowest ASB time) over the clients."""
    return _run_clients(kind, clients, args).rounds


def _run_clients(kind: str, clients: int, args: dict[str, Any]) -> Runs:
    """The rounds of _run_parallel, and the CPU seconds the clients (and the deployment's
    processes in args["watch"], for memstage) spent in the measured rounds."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(kind, args, i, barrier, results)) for i in range(clients)]
    for p in procs:
        p.start()
    per_client: list[tuple[int, list[tuple[float, float]], dict[str, float]]] = []
    try:
        while len(per_client) < clients:
            try:
                per_client.append(results.get(timeout=1.0))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise MemstageError(f"a {kind} benchmark client failed (see its messages above)") from None
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    rounds = len(per_client[0][1])
    cpu: dict[str, float] = {}
    for _, _, seconds in per_client:
        for who, s in seconds.items():
            cpu[who] = cpu.get(who, 0.0) + s
    return Runs([(max(c[1][r][0] for c in per_client), max(c[1][r][1] for c in per_client))
                 for r in range(1, rounds)], cpu)


def _median_rate(total: int, times: list[float]) -> float:
    return total / statistics.median(times)


def run_bench(args: argparse.Namespace) -> int:
    if args.manager:
        from memstage.bench.manager import run_manager_bench

        return run_manager_bench(args)
    try:
        size = parse_size(args.size)
        chunk = parse_size(args.chunk_size)
        write_size = parse_size(args.write_size)
        counts = [int(c) for c in str(args.clients).split(",") if c.strip()]
    except ValueError as e:
        raise SettingError(f"bench: {e}") from None
    transports = [t.strip() for t in str(args.transports).split(",") if t.strip()]
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or not transports:
        raise SettingError(f"bench: --transports takes {', '.join(TRANSPORTS)} (comma-separated), not "
                           f"{args.transports!r}")
    args.transports = transports
    args.benefactors_given = args.benefactors is not None
    if args.benefactors is None:
        args.benefactors = 4
    if size <= 0 or write_size <= 0 or not counts or min(counts) <= 0 or args.repeat <= 0 or args.benefactors <= 0:
        raise SettingError("bench: --size, --write-size, --clients, --repeat and --benefactors must be positive")
    if args.timesteps < 0 or not 0 <= args.change <= 1:
        raise SettingError("bench: --timesteps must be 0 or more and --change between 0 and 1")
    if args.n1 and not args.fuse:
        raise SettingError("bench: --n1 is a mode of --fuse (memstage bench --fuse --n1)")
    if args.meta:
        from memstage.bench.meta import run_meta

        return run_meta(args)
    if args.fuse:
        from memstage.bench.fuse import run_fuse, run_n1

        return run_n1(args, size) if args.n1 else run_fuse(args, size)
    if args.drain:
        from memstage.bench.drain import run_drain

        return run_drain(args, size, chunk, write_size)
    if args.restart:
        from memstage.bench.restart import run_restart

        return run_restart(args, size, chunk)
    if args.security:
        if args.insecure:
            raise SettingError("bench: --security measures both ways; leave out --insecure")
        from memstage.bench.security import run_security

        return run_security(args, size, chunk, write_size)
    if args.redundancy:
        from memstage.bench.redundancy import run_redundancy

        return run_redundancy(args, size, chunk, write_size)
    if args.timesteps:
        from memstage.bench.incremental import run_incremental

        return run_incremental(args, size, chunk, write_size)
    rows = _run_plain(args, size, chunk, write_size, counts)
    setup = {"size": size, "benefactors": args.benefactors, "chunk_size": chunk, "write_size": write_size,
             "repeat": args.repeat, "cpus": os.cpu_count(), "insecure": args.insecure}
    if args.json:
        print(json.dumps({"setup": setup, "rows": [r.as_json() for r in rows]}, indent=2))
        return 0
    print(f"memstage bench: {format_size(size)} per client, {args.benefactors} benefactors "
          f"({'insecure' if args.insecure else 'mutual TLS and tokens'}), chunk {format_size(chunk)}, writes of "
          f"{format_size(write_size)}, median of {args.repeat} after a warm-up, {os.cpu_count()} CPUs")
    header = ("clients", "transport", "OAB", "ASB", "ASB/ceiling", "disk+fsync", "grpc ceiling", "tcp ceiling",
              "tls ceiling", "ASB/grpc", "ASB/tls", "ASB/tcp", "ASB/disk", "client CPU-s/GiB", "benefactors CPU-s/GiB",
              "manager CPU-s/GiB")
    table([header] + [(str(r.clients), r.transport, format_rate(r.oab), format_rate(r.asb),
                       f"{r.asb_over_ceiling:.2f} ({r.ceiling_name})", format_rate(r.disk),
                       format_rate(r.grpc), format_rate(r.tcp), format_rate(r.tls), f"{r.asb_over_grpc:.2f}",
                       f"{r.asb_over_tls:.2f}", f"{r.asb_over_tcp:.2f}", f"{r.asb_over_disk:.2f}",
                       f"{r.client_cpu_per_gib:.2f}", f"{r.benefactors_cpu_per_gib:.2f}",
                       f"{r.manager_cpu_per_gib:.2f}") for r in rows])
    return 0


@contextlib.contextmanager
def _sink(argv: list[str]) -> Iterator[str]:
    """A ceiling's sink process (`python -m ARGV`), which prints its address first and stops when
    its stdin closes; its address."""
    sink = subprocess.Popen([sys.executable, "-m", *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        address = sink.stdout.readline().strip()
        if not address:
            raise MemstageError(f"the {argv[0]} sink did not start (see its messages above)")
        yield address
    finally:
        if sink.stdin:
            sink.stdin.close()
        sink.wait(timeout=30)


def _run_plain(args: argparse.Namespace, size: int, chunk: int, write_size: int, counts: list[int]) -> list[Row]:
    from memstage.cli.up import deployment_client, start_deployment, stop_deployment
    from memstage.settings import UpSettings

    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work, contextlib.ExitStack() as stack:
        # Room for the largest round (every client's file) plus a chunk of slack per benefactor.
        memory = (size * max(counts) * 5 // 4) // args.benefactors + 16 * MiB
        progress(f"bench: starting a manager and {args.benefactors} benefactors ({format_size(memory)} each)")
        procs = start_deployment(UpSettings(benefactors=args.benefactors, memory=memory, listen="127.0.0.1:0",
                                            state=os.path.join(work, "state"), pfs=os.path.join(work, "pfs"),
                                            heartbeat_interval=2.0, insecure=args.insecure), log_level=args.log_level)
        stack.callback(stop_deployment, procs)
        # Certificates of their own: the TLS ceiling is measured with --insecure too.
        tls_folder = os.path.join(work, "ceiling-tls")
        raw = ["memstage.bench.rawceiling", "serve", "--chunk-size", str(chunk)]
        common = {"size": size, "write_size": write_size, "chunk_size": chunk, "rounds": args.repeat + 1,
                  "manager": procs[0].address, "dir": work, "client": deployment_client(os.path.join(work, "state")),
                  "watch": {"benefactors": [p.pid for p in procs if p.role == "benefactor"],
                            "manager": [procs[0].pid]},
                  "address": stack.enter_context(_sink(["memstage.bench.ceiling"])),
                  "tcp_address": stack.enter_context(_sink(raw)),
                  "tls_address": stack.enter_context(_sink([*raw, "--tls", tls_folder])), "tls_folder": tls_folder}
        return [row for c in counts for row in _measure_rows(c, size, args, common, work)]


def _measure_rows(c: int, size: int, args: argparse.Namespace, common: dict[str, Any], work: str) -> list[Row]:
    """One row per transport, against the baselines measured once for this client count."""
    total = c * size
    measured = {}
    for name in args.transports:
        progress(f"bench: {c} client(s) x {format_size(size)}: memstage over {name} ...")
        measured[name] = _run_clients("memstage", c, common | {"client": common["client"] | TRANSPORTS[name]})
    progress(f"bench: {c} client(s): disk (write + fsync in {work}) ...")
    disk = _run_parallel("disk", c, common)
    progress(f"bench: {c} client(s): bare grpcio stream to one server ...")
    grpc_t = _run_parallel("grpc", c, common)
    progress(f"bench: {c} client(s): raw TCP, then TLS, to one server ...")
    tcp = _run_parallel("tcp", c, common)
    tls = _run_parallel("tls", c, common)
    gib = args.repeat * total / GiB  # written in the measured rounds
    return [Row(c, name, args.insecure, size, _median_rate(total, [t[0] for t in ms.rounds]),
                _median_rate(total, [t[1] for t in ms.rounds]),
                _median_rate(total, [t[0] for t in disk]), _median_rate(total, [t[0] for t in grpc_t]),
                _median_rate(total, [t[0] for t in tcp]), _median_rate(total, [t[0] for t in tls]),
                client_cpu_per_gib=ms.cpu["client"] / gib, benefactors_cpu_per_gib=ms.cpu["benefactors"] / gib,
                manager_cpu_per_gib=ms.cpu["manager"] / gib) for name, ms in measured.items()]
