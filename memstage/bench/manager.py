"""`memstage bench --manager`: a checkpoint storm against a real manager process.

A load generator speaks the manager's gRPC protocol as benefactors and writers do, without moving
any data: `--sim-benefactors` simulated benefactors register (with the cluster secret) and
heartbeat every `--sim-heartbeat`, each at its own phase, or at the longer period the manager's
replies ask for (it stretches the period of a large deployment to bound its heartbeat load);
the heartbeats go from a process of their own, so that building commits does not delay them
(their latency is the manager's, not the generator's), and a benefactor told that orders wait
(woken by the manager's Wake call, which that process serves for all of them at one address, or
by a heartbeat reply) takes them at once, as a real one does: it acknowledges the orders a wake
brings in its reply, and fetches and acknowledges the others;
`--committers` concurrent writers each open a write session, ask for a striping map and commit
a file of `--chunks` new 1 MiB chunks, placed round-robin on the map, each with the receipt the
benefactor would have given. With
`--commit-rate 0` the writers commit `--commits` files as fast as they can; with a rate they
commit at that rate for `--duration` seconds.

Reported: heartbeats and commits per second asked and done, their latency percentiles, false
deaths (simulated benefactors the manager stopped knowing, or shows dead at the end, although
every heartbeat was sent), failed commits, the spread of striping maps, and the manager's CPU
seconds and resident memory per chunk entry. The generator shares the machine with the manager:
read the figures as lower bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memstage.bench.report import progress, table
from memstage.errors import MemstageError, SettingError

MiB = 1024 * 1024


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _proc_cpu_rss(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def _cpu(pid: int | None) -> float:
    """CPU seconds of a process (0 once it exited)."""
    try:
        return _proc_cpu_rss(pid)[0] if pid else 0.0
    except OSError:
        return 0.0


def _machine_times() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (Linux /proc/stat): iowait counts as idle."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def _helpers_cpu(pid: int) -> float:
    """CPU seconds of the processes a process started (the manager's heartbeat process and its
    receipt checkers)."""
    from memstage.procs import children

    total = 0.0
    for child in children(pid):
        with contextlib.suppress(OSError):  # it exited
            total += _proc_cpu_rss(child)[0]
    return total


class Storm:
    def __init__(self, args: argparse.Namespace, address: str, secret: bytes, token: str) -> None:
        import grpc

        from memstage import auth
        from memstage.proto import manager_pb2_grpc
        from memstage.rpc import CONTROL_CHANNEL_OPTIONS

        self.args = args
        self.n = args.sim_benefactors
        self.interval = args.sim_heartbeat
        # A few connections, as many benefactor processes would have (one HTTP/2 connection each).
        options = [*CONTROL_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(4)]
        self.stubs = [manager_pb2_grpc.ManagerStub(c) for c in self.channels]
        self.address, self._options = address, options
        self.beat_port = 0  # the manager's heartbeat port, as its registration replies tell
        self.beat_stubs: list[Any] = []
        self.secret = secret
        self.client_meta = ((auth.TOKEN_HEADER, f"Bearer {token}"),)
        self.ids = [f"sim-{i:06d}" for i in range(self.n)]
        # Each simulated benefactor proves itself with its own proof, as real ones do.
        self._proofs = {bf: auth.RoleProof(secret, auth.benefactor_role(bf)) for bf in self.ids}
        self.index = {bf: i for i, bf in enumerate(self.ids)}
        self.wake_address = ""  # where every simulated benefactor is woken (the heartbeat process serves it)
        self.wakes = 0  # received
        self._taking: dict[str, bool] = {}  # benefactors fetching orders now -> woken again meanwhile
        self.takes: set[asyncio.Task[None]] = set()
        self.incarnation = {bf: random.getrandbits(62) + 1 for bf in self.ids}
        self.keys = {bf: os.urandom(32) for bf in self.ids}
        self.heartbeats = Tally()
        self.commits = Tally()
        self.maps = Tally()
        self.unknown: set[str] = set()  # told "unknown" (declared dead) by the manager
        self.placed: dict[str, int] = {}  # chunks placed per benefactor
        self.beats_sent = 0
        self.told = self.interval  # the period the manager's replies ask for
        self.examples: dict[str, str] = {}  # a message of each kind of failed commit
        self.order_state: dict[str, tuple[int, int]] = {}  # per benefactor: manager epoch, last order acked
        self.orders_calls = 0
        self.beat_fallbacks = 0  # heartbeats the heartbeat port sent on to the manager's port
        self.placements: Any = None  # a pipe of chunks placed: writers send, heartbeats (another process) read

    def stub(self, i: int) -> Any:
        return self.stubs[i % len(self.stubs)]

    def use_beat_port(self, port: int) -> None:
        """Heartbeats go to the manager's heartbeat port, as a benefactor's do (own connections)."""
        import grpc

        from memstage.proto import manager_pb2_grpc

        self.beat_port = port
        if port:
            address = f"{self.address.rpartition(':')[0]}:{port}"
            channels = [grpc.aio.insecure_channel(address, options=self._options) for _ in range(4)]
            self.channels += channels
            self.beat_stubs = [manager_pb2_grpc.ManagerStub(c) for c in channels]

    def bf_meta(self, bf: str) -> tuple[tuple[str, str], ...]:
        from memstage.auth import CLUSTER_HEADER

        return ((CLUSTER_HEADER, self._proofs[bf]()),)

    async def register_all(self) -> float:
        from memstage.proto import manager_pb2

        sem = asyncio.Semaphore(256)
        started = time.perf_counter()

        async def one(i: int, bf: str) -> None:
            async with sem:
                reply = await self.stub(i).Register(manager_pb2.RegisterRequest(
                    benefactor_id=bf, address=self.wake_address, incarnation=self.incarnation[bf],
                    receipt_key=self.keys[bf], stats=manager_pb2.BenefactorStats(memory_capacity=1 << 40)),
                    metadata=self.bf_meta(bf), timeout=120)
                self.told = max(self.told, reply.heartbeat_interval_seconds)
                self.beat_port = reply.heartbeat_port or self.beat_port  # 0 while it was starting

        await asyncio.gather(*(one(i, bf) for i, bf in enumerate(self.ids)))
        return self.n / (time.perf_counter() - started)

    async def heartbeat_loop(self, stop: asyncio.Event, mark: Any = None) -> None:
        """Every benefactor beats once per period, at its own phase, and adopts the period the
        manager's replies tell (it stretches in a large deployment); late beats go at once."""
        import heapq

        import grpc

        from memstage.proto import manager_pb2

        started = time.perf_counter()
        # Phases spread over the period the registration replies told (a benefactor adopts it at once).
        first = max(self.interval, self.told)
        due = [(started + random.random() * first, i) for i in range(self.n)]
        heapq.heapify(due)
        pending: set[asyncio.Task[None]] = set()

        async def beat(i: int) -> None:
            bf = self.ids[i]
            t0 = time.perf_counter()
            request = manager_pb2.HeartbeatRequest(
                benefactor_id=bf, incarnation=self.incarnation[bf],
                stats=manager_pb2.BenefactorStats(memory_capacity=1 << 40, memory_used=self.placed.get(bf, 0) * MiB))
            try:
                reply = None
                if self.beat_stubs:
                    try:
                        reply = await self.beat_stubs[i % len(self.beat_stubs)].Heartbeat(
                            request, metadata=self.bf_meta(bf), timeout=30)
                    except grpc.aio.AioRpcError as e:
                        if e.code() != grpc.StatusCode.NOT_FOUND:  # not known there: the manager's port decides
                            raise
                        self.beat_fallbacks += 1
                if reply is None:
                    reply = await self.stub(i).Heartbeat(request, metadata=self.bf_meta(bf), timeout=30)
                self.heartbeats.latencies.append(time.perf_counter() - t0)
                if not reply.known:
                    self.unknown.add(bf)
                if reply.heartbeat_interval_seconds:
                    self.told = reply.heartbeat_interval_seconds
                if reply.orders_waiting:
                    self.take_soon(bf)
            except Exception as e:  # noqa: BLE001 (counted, by kind)
                code = getattr(e, "code", None)
                self.heartbeats.fail(str(code()) if callable(code) else type(e).__name__)

        while not stop.is_set():
            if mark is not None and mark.poll():  # the parent's word: "mark" (the storm starts) or "stop"
                if mark.recv() == "stop":
                    break
                mark.send((self.beats_sent, len(self.heartbeats.latencies)))
            while self.placements is not None and self.placements.poll():  # chunks placed by the writers
                for bf, n in self.placements.recv().items():
                    self.placed[bf] = self.placed.get(bf, 0) + n
            now = time.perf_counter()
            while due[0][0] <= now:
                _, i = heapq.heappop(due)
                heapq.heappush(due, (now + self.told, i))
                task = asyncio.create_task(beat(i))
                pending.add(task)
                task.add_done_callback(pending.discard)
                self.beats_sent += 1
            await asyncio.sleep(0.01)
        if pending:
            await asyncio.wait(pending, timeout=30)

    async def commit_one(self, w: int, n: int) -> None:
        from memstage.proto import manager_pb2

        stub = self.stub(w)
        ns = "storm"
        t0 = time.perf_counter()
        try:
            m0 = time.perf_counter()  # a session and its first striping map, in one call as a client asks
            opened = await stub.OpenSession(manager_pb2.OpenSessionRequest(
                namespace=ns, path=f"/w{w}/f{n}", striping=manager_pb2.StripingRequest(chunk_size=MiB)),
                metadata=self.client_meta, timeout=60)
            self.maps.latencies.append(time.perf_counter() - m0)
            session = opened.session
            targets = [loc.benefactor_id for loc in opened.map.benefactors]
            if not targets:
                raise RuntimeError("the session came without a striping map")
            packed, placed = self.packed_refs(session, ns, targets)
            for bf, n in placed.items():
                self.placed[bf] = self.placed.get(bf, 0) + n
            if self.placements is not None:  # so that heartbeats report the memory in use
                self.placements.send(placed)
            c0 = time.perf_counter()
            await stub.Commit(manager_pb2.CommitRequest(namespace=ns, path=f"/w{w}/f{n}", size=self.args.chunks * MiB,
                                                        packed=packed, session=session),
                              metadata=self.client_meta, timeout=120)
            self.commits.latencies.append(time.perf_counter() - c0)
        except Exception as e:  # noqa: BLE001 (counted, by kind, with the first message of each)
            code = getattr(e, "code", None)
            kind = str(code()) if callable(code) else type(e).__name__
            self.commits.fail(kind)
            details = getattr(e, "details", None)
            self.examples.setdefault(kind, details() if callable(details) else str(e))
        del t0

    def packed_refs(self, session: int, ns: str, targets: list[str]) -> tuple[Any, dict[str, int]]:
        """A file of `--chunks` new chunks placed round-robin on the map, packed as a client packs
        them, with the receipts the benefactors would give (computed in one batch: the
        generator's own CPU would otherwise take the manager's share of this machine)."""
        import struct

        from memstage import receipts
        from memstage.proto import manager_pb2

        n = self.args.chunks
        targets = targets[:n]
        width = len(targets)
        hashes = os.urandom(16 * n)
        length = MiB.to_bytes(8, "big")
        keys = length.join([hashes[at:at + 16] for at in range(0, 16 * n, 16)]) + length
        where = [c % width for c in range(n)]
        signed = receipts.expected_packed(session, ns, keys, where, [self.keys[bf] for bf in targets])
        packed = manager_pb2.PackedChunks(keys=keys, counts=b"\x01" * n, benefactors=targets,
                                          locations=struct.pack(f">{n}I", *where), receipts=signed)
        return packed, {bf: len(range(i, n, width)) for i, bf in enumerate(targets)}

    async def commit_storm(self) -> float:
        """`--commits` commits by `--committers` writers as fast as they go; returns the seconds taken."""
        counter = iter(range(self.args.commits))

        async def writer(w: int) -> None:
            for n in counter:
                await self.commit_one(w, n)

        started = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(self.args.committers)))
        return time.perf_counter() - started

    async def commit_at_rate(self, seconds: float) -> float:
        """Commits started at `--commit-rate` per second for `seconds` (each by its own writer)."""
        rate = self.args.commit_rate
        started = time.perf_counter()
        tasks = []
        n = 0
        while time.perf_counter() - started < seconds:
            due = started + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(self.commit_one(n, n)))
            n += 1
        await asyncio.gather(*tasks)
        return time.perf_counter() - started

    async def alive_at_end(self) -> set[str]:
        from memstage.proto import manager_pb2

        reply = await self.stubs[0].Status(manager_pb2.StatusRequest(), metadata=self.client_meta, timeout=120)
        return {b.id for b in reply.benefactors if b.alive}

    async def serve_wakes(self) -> Any:
        """The Wake call of every simulated benefactor, at one address; returns the started server."""

        import grpc

        from memstage import auth
        from memstage.proto import benefactor_pb2, manager_pb2

        async def wake(request: Any, context: Any) -> Any:
            given = dict(context.invocation_metadata()).get(auth.CLUSTER_HEADER, "")
            if auth.proof_holder(self.secret, given) != auth.MANAGER:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no cluster proof")
            bf = request.benefactor_id
            if bf not in self.index or request.incarnation != self.incarnation[bf]:
                return benefactor_pb2.WakeReply(known=False)
            self.wakes += 1
            if request.orders_reply:  # carried out at once (a real benefactor applies them), acknowledged
                pushed = manager_pb2.OrdersReply.FromString(request.orders_reply)
                epoch, acked = self.order_state.get(bf, (0, 0))
                if pushed.epoch != epoch:
                    acked = 0
                acked = max([acked, *(o.seq for o in pushed.orders)])
                self.order_state[bf] = (pushed.epoch, acked)
                if len(pushed.orders) >= 256:  # more wait
                    self.take_soon(bf)
                return benefactor_pb2.WakeReply(known=True, epoch=pushed.epoch, acked=acked)
            if request.orders:
                self.take_soon(bf)
            return benefactor_pb2.WakeReply(known=True)

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("memstage.v1.Benefactor", {
            "Wake": grpc.unary_unary_rpc_method_handler(
                wake, request_deserializer=benefactor_pb2.WakeRequest.FromString,
                response_serializer=benefactor_pb2.WakeReply.SerializeToString)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.wake_address = f"127.0.0.1:{port}"
        return server

    def take_soon(self, bf: str) -> None:
        """Fetch the orders waiting for `bf` now (once more after this fetch if it is fetching)."""
        if bf in self._taking:
            self._taking[bf] = True
            return
        self._taking[bf] = False

        async def take() -> None:
            try:
                while True:
                    await self.take_orders(self.index[bf])
                    if not self._taking[bf]:
                        break
                    self._taking[bf] = False
            except Exception:  # noqa: BLE001 (a lost fetch: the next wake or heartbeat reply tells again)
                pass
            finally:
                del self._taking[bf]

        task = asyncio.create_task(take())
        self.takes.add(task)
        task.add_done_callback(self.takes.discard)

    async def take_orders(self, i: int) -> None:
        """Fetch and acknowledge the orders waiting (the holds of commits), as a benefactor does when
        told: orders nobody takes would stay queued in the manager's memory."""
        from memstage.proto import manager_pb2

        bf = self.ids[i]
        for _ in range(16):
            epoch, acked = self.order_state.get(bf, (0, 0))
            reply = await self.stub(i).Orders(manager_pb2.OrdersRequest(
                benefactor_id=bf, incarnation=self.incarnation[bf], acked=acked, epoch=epoch),
                metadata=self.bf_meta(bf), timeout=30)
            self.orders_calls += 1
            if reply.epoch != epoch:
                acked = 0
            if not reply.orders:
                self.order_state[bf] = (reply.epoch, acked)
                return
            self.order_state[bf] = (reply.epoch, max(o.seq for o in reply.orders))

    async def close(self) -> None:
        for c in self.channels:
            await c.close(None)


def _beat_in_child(conn: Any, placements: Any, args: argparse.Namespace, address: str, secret: bytes) -> None:
    """The simulated benefactors' heartbeats and wakes, in a process of their own: the writers'
    event loop (building commits) must not delay them, or their latency would be the generator's.
    Sends the address of its Wake server, then takes the benefactors' incarnations, the period
    told and the heartbeat port once the parent registered them there."""

    async def main() -> None:
        storm = Storm(args, address, secret, "")
        server = await storm.serve_wakes()
        conn.send(storm.wake_address)
        storm.incarnation, storm.told, beat_port = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        storm.placements = placements
        storm.use_beat_port(beat_port)
        try:
            await storm.heartbeat_loop(asyncio.Event(), mark=conn)
            if storm.takes:
                await asyncio.wait(storm.takes, timeout=30)
        finally:
            await server.stop(None)
            await storm.close()
        h = storm.heartbeats
        conn.send({"latencies": h.latencies, "failed": h.failed, "errors": h.errors, "unknown": sorted(storm.unknown),
                   "beats_sent": storm.beats_sent, "told": storm.told, "orders_calls": storm.orders_calls,
                   "beat_fallbacks": storm.beat_fallbacks, "wakes": storm.wakes})

    asyncio.run(main())


async def _run(args: argparse.Namespace, address: str, secret: bytes, token: str, pid: int) -> dict[str, Any]:
    import multiprocessing

    storm = Storm(args, address, secret, token)
    beater = None
    try:
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        placements_in, storm.placements = ctx.Pipe(duplex=False)
        beater = ctx.Process(target=_beat_in_child, args=(child_conn, placements_in, args, address, secret),
                             daemon=True)
        beater.start()
        if not await asyncio.get_running_loop().run_in_executor(None, conn.poll, 60):
            raise MemstageError("bench --manager: the simulated benefactors' process did not start")
        storm.wake_address = conn.recv()
        progress(f"bench: registering {storm.n} simulated benefactors ...")
        registration_rate = await storm.register_all()
        cpu0, rss0 = _proc_cpu_rss(pid)
        helpers0 = _helpers_cpu(pid)
        conn.send((storm.incarnation, storm.told, storm.beat_port))
        await asyncio.sleep(min(5.0, args.sim_heartbeat / 2))  # heartbeats under way before the storm
        wall0 = time.perf_counter()
        # CPU during the storm itself, of the manager (with its helper processes) and of this
        # generator (with its heartbeat process): on a shared machine, what the load takes is
        # not the manager's.
        manager_at, load_at = _proc_cpu_rss(pid)[0] + _helpers_cpu(pid), time.process_time() + _cpu(beater.pid)
        machine_at = _machine_times()
        conn.send("mark")
        beats0, done0 = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        if args.commit_rate:
            progress(f"bench: {args.commit_rate:g} commits/s of {args.chunks} chunks for {args.duration:g}s, "
                     f"heartbeats every {args.sim_heartbeat:g}s ...")
            storm_seconds = await storm.commit_at_rate(args.duration)
        else:
            progress(f"bench: {args.commits} commits of {args.chunks} chunks by {args.committers} writers, "
                     f"heartbeats every {args.sim_heartbeat:g}s ...")
            storm_seconds = await storm.commit_storm()
        manager_storm_cpu = _proc_cpu_rss(pid)[0] + _helpers_cpu(pid) - manager_at
        load_storm_cpu = time.process_time() + _cpu(beater.pid) - load_at
        busy, total = (now - then for now, then in zip(_machine_times(), machine_at, strict=True))
        # Liveness is judged after the storm too: a TTL of heartbeats more.
        settle = min(3 * args.sim_heartbeat, 10.0)
        await asyncio.sleep(settle)
        wall = time.perf_counter() - wall0
        conn.send("stop")
        beats = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        beater.join(timeout=30)
        storm.heartbeats = Tally(beats["latencies"], beats["failed"], beats["errors"])
        storm.unknown, storm.beats_sent, storm.told = set(beats["unknown"]), beats["beats_sent"], beats["told"]
        cpu1, rss1 = _proc_cpu_rss(pid)
        helpers = _helpers_cpu(pid) - helpers0
        alive = await storm.alive_at_end()
        false_deaths = storm.unknown | (set(storm.ids) - alive)
        entries = len(storm.commits.latencies) * args.chunks
        placed = sorted(storm.placed.values())
        return {
            "sim_benefactors": storm.n, "sim_heartbeat": args.sim_heartbeat, "registration_per_s": registration_rate,
            "heartbeat_period_told": storm.told, "heartbeats_asked_per_s": storm.n / storm.told,
            "heartbeats_done_per_s": (len(storm.heartbeats.latencies) - done0) / wall,
            "heartbeats_sent": storm.beats_sent - beats0, "heartbeats_failed": storm.heartbeats.failed,
            "heartbeat_errors": storm.heartbeats.errors,
            "heartbeat_p50_s": _percentile(storm.heartbeats.latencies, 0.5),
            "heartbeat_p99_s": _percentile(storm.heartbeats.latencies, 0.99),
            "commits_asked": args.commits if not args.commit_rate else int(args.commit_rate * args.duration),
            "commits_done": len(storm.commits.latencies), "commits_failed": storm.commits.failed,
            "commit_errors": storm.commits.errors, "commit_error_examples": storm.examples,
            "storm_seconds": storm_seconds,
            "commits_per_s": len(storm.commits.latencies) / storm_seconds,
            "commit_p50_s": _percentile(storm.commits.latencies, 0.5),
            "commit_p99_s": _percentile(storm.commits.latencies, 0.99),
            "map_p99_s": _percentile(storm.maps.latencies, 0.99),
            "maps_distinct_benefactors": len(placed), "placed_max_over_mean": (
                placed[-1] / statistics.mean(placed)) if placed else 0.0,
            "orders_calls": beats["orders_calls"], "wakes": beats["wakes"], "heartbeat_port": storm.beat_port,
            "heartbeats_to_manager_port": beats["beat_fallbacks"], "false_deaths": len(false_deaths),
            "manager_cpu_seconds": cpu1 - cpu0 + helpers, "helper_processes_cpu_seconds": helpers,
            "storm_manager_cpu_seconds": manager_storm_cpu, "storm_generator_cpu_seconds": load_storm_cpu,
            "storm_machine_busy": busy / total if total else 0.0,
            "manager_rss_bytes": rss1, "chunk_entries": entries,
            "rss_per_entry_bytes": (rss1 - rss0) / entries if entries else 0.0,
        }
    finally:
        if beater is not None and beater.is_alive():  # stopped by an error: it goes too
            beater.terminate()
            beater.join(timeout=10)
        await storm.close()


def run_manager_bench(args: argparse.Namespace) -> int:
    from memstage.procs import spawn

    if args.sim_benefactors <= 0 or args.sim_heartbeat <= 0 or args.chunks <= 0 or args.committers <= 0:
        raise SettingError("bench --manager: --sim-benefactors, --sim-heartbeat, --chunks and --committers must be "
                           "positive")
    if args.commit_rate < 0 or (not args.commit_rate and args.commits <= 0):
        raise SettingError("bench --manager: give --commits (as fast as possible) or a positive --commit-rate")
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        state = Path(work) / "state"
        progress("bench: starting a manager")
        manager = spawn("manager", ["--listen", "127.0.0.1:0", "--state", str(state), "--heartbeat-interval",
                                    f"{args.sim_heartbeat}s", "--log-level", "warning",
                                    *(["--heartbeat-listen", args.heartbeat_listen] if args.heartbeat_listen else [])])
        try:
            secret = bytes.fromhex((state / "secrets" / "cluster.key").read_text().strip())
            token = (state / "secrets" / "admin.token").read_text().strip()
            result = asyncio.run(_run(args, manager.address, secret, token, manager.pid))
        finally:
            manager.stop(timeout=30)
    if result["commits_done"] == 0 and result["commits_failed"]:
        raise MemstageError(f"bench --manager: every commit failed: {result['commit_errors']}, for example: "
                            f"{result['commit_error_examples']}")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    r = result
    print(f"memstage bench --manager: {r['sim_benefactors']} simulated benefactors at {r['sim_heartbeat']:g}s "
          f"heartbeats (the manager asked for {r['heartbeat_period_told']:g}s), commits of {args.chunks} chunks, "
          f"{os.cpu_count()} CPUs shared by the manager and the load")
    table([("measure", "asked", "done", "p50", "p99", "failed"),
           ("heartbeats/s", f"{r['heartbeats_asked_per_s']:.0f}", f"{r['heartbeats_done_per_s']:.0f}",
            f"{r['heartbeat_p50_s'] * 1000:.1f} ms", f"{r['heartbeat_p99_s'] * 1000:.1f} ms",
            str(r["heartbeats_failed"])),
           ("commits", str(r["commits_asked"]), f"{r['commits_done']} in {r['storm_seconds']:.1f}s "
            f"({r['commits_per_s']:.1f}/s)", f"{r['commit_p50_s']:.2f} s", f"{r['commit_p99_s']:.2f} s",
            str(r["commits_failed"]))])
    print(f"false deaths: {r['false_deaths']}; registration: {r['registration_per_s']:.0f}/s; sessions opened with "
          f"their striping maps: p99 {r['map_p99_s'] * 1000:.1f} ms, {r['maps_distinct_benefactors']} benefactors "
          f"used, busiest {r['placed_max_over_mean']:.1f}x the mean")
    print(f"orders: {r['wakes']} wakes from the manager, {r['orders_calls']} Orders calls by the benefactors")
    beats = (f" ({r['helper_processes_cpu_seconds']:.1f} s of it in its heartbeat process, port "
             f"{r['heartbeat_port']}, and receipt checkers)" if r["heartbeat_port"] else
             f" ({r['helper_processes_cpu_seconds']:.1f} s of it in its receipt checkers; heartbeats answered by "
             "the manager process)")
    print(f"manager: {r['manager_cpu_seconds']:.1f} CPU s{beats}, RSS {r['manager_rss_bytes'] / MiB:.0f} MiB, "
          f"{r['rss_per_entry_bytes']:.0f} bytes per chunk entry ({r['chunk_entries']} entries)")
    print(f"during the {r['storm_seconds']:.1f}s of commits: manager {r['storm_manager_cpu_seconds']:.1f} CPU s "
          f"({r['storm_manager_cpu_seconds'] / max(1, r['commits_done']) * 1000:.1f} ms per commit), load generator "
          f"{r['storm_generator_cpu_seconds']:.1f} CPU s, of {os.cpu_count()} CPUs x {r['storm_seconds']:.1f}s "
          f"({r['storm_machine_busy']:.0%} of the machine busy)")
    if r["heartbeat_errors"]:
        print(f"heartbeat errors: {r['heartbeat_errors']}")
    if r["commit_errors"]:
        print(f"commit errors: {r['commit_errors']}, for example: {r['commit_error_examples']}")
    return 0
