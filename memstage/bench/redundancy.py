"""`memstage bench --redundancy rs:4+2,replicate:2,...`: what in-memory redundancy costs, against
`none` measured in the same run on the same deployment.

Each policy has a namespace of its own with nothing drained (memory is the only place the data
is); rounds interleave the policies so each sees the deployment in the same state. Per policy,
one client writes `--size` files: OAB and ASB and their ratio to `none`; how long after the
commit the version is fully protected (copies made, or parity encoded by the benefactors; waited
for as fsync waits, with Client.wait_protected) and the redundancy bytes made per second; the
benefactors' CPU seconds spent encoding per GiB written.
Then, per policy, one benefactor is SIGKILLed: reading the measured rounds' files back with what it
held gone (a degraded read: another copy, or a rebuild from the stripe; the median) against normal
reads of the same files before, and how fast the survivors rebuild what it held (bytes it held /
time from the manager declaring it dead, after its heartbeat timeout, until protected again). The
policy's files are then deleted, so the next policy's kill rebuilds only its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

from memstage.bench.measure import write_file
from memstage.bench.report import progress, table
from memstage.errors import MemstageError, SettingError
from memstage.redundancy import Redundancy
from memstage.units import format_rate, format_size

MiB = 1024 * 1024
GiB = 1024 * MiB


def _status(client: Any) -> Any:
    from memstage.proto import manager_pb2

    return client.connections.call_manager("Status", manager_pb2.StatusRequest(), "status")


def _protection(client: Any, namespace: str) -> tuple[int, int]:
    for n in _status(client).namespaces:
        if n.namespace == namespace:
            return n.versions_protected, n.versions_degraded
    return 0, 0


def _wait_protected(client: Any, namespace: str, versions: int, timeout: float = 300.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        protected, degraded = _protection(client, namespace)
        if protected >= versions and degraded == 0:
            return time.perf_counter() - started
        time.sleep(0.02)
    protected, degraded = _protection(client, namespace)
    raise MemstageError(f"bench: {namespace} not fully protected after {timeout:.0f}s ({protected} versions "
                        f"protected, {degraded} degraded; see the manager's log for copies that failed)")


def _wait_dead(client: Any, benefactor: str, timeout: float = 60.0) -> None:
    """Until the manager has declared the benefactor dead (only then does it rebuild)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if not any(b.id == benefactor and b.alive for b in _status(client).benefactors):
            return
        time.sleep(0.05)
    raise MemstageError(f"bench: the manager did not declare the killed benefactor {benefactor} dead in {timeout:.0f}s")


def _held_by(client: Any, paths: list[str], benefactor: str) -> int:
    """Bytes of these files' chunks and stripe members that only `benefactor` holds a copy of here
    (what a rebuild has to make again once it is gone)."""
    from memstage.proto import manager_pb2

    seen: set[bytes] = set()
    total = 0
    for path in paths:
        vmap = client.connections.call_manager("Lookup", manager_pb2.LookupRequest(
            namespace=client.namespace, path=path, stripes=True), path)
        refs = [c for c in vmap.chunks] + [m for c in vmap.chunks for m in c.stripe.members]
        for ref in refs:
            if ref.key.hash in seen:
                continue
            seen.add(ref.key.hash)
            if any(loc.benefactor_id == benefactor for loc in ref.locations):
                total += ref.key.length
    return total


def _read_seconds(client: Any, path: str) -> float:
    t0 = time.perf_counter()
    with client.open(path, "rb") as f:
        while f.read(16 * MiB):
            pass
    return time.perf_counter() - t0


def _width(p: Redundancy) -> int:
    """Benefactors one chunk's protection spans."""
    return p.k + p.m if p.parity else p.copies


def _overhead(p: Redundancy) -> float:
    """Bytes stored per byte written."""
    return (p.k + p.m) / p.k if p.parity else float(p.copies)


def run_redundancy(args: argparse.Namespace, size: int, chunk: int, write_size: int) -> int:
    from memstage.cli.up import deployment_client, start_deployment, stop_deployment
    from memstage.client import Client
    from memstage.settings import UpSettings

    asked = [Redundancy.parse(p, "--redundancy") for p in str(args.redundancy).split(",") if p.strip()]
    tolerant = [p for p in asked if p.tolerates]
    # Each tolerant policy kills one benefactor, and its rebuild needs a benefactor beyond its width.
    needed = max([_width(p) + 1 + i for i, p in enumerate(sorted(tolerant, key=_width, reverse=True))] or [1])
    benefactors = args.benefactors
    if benefactors < needed:
        if getattr(args, "benefactors_given", True):
            raise SettingError(f"bench --redundancy: {', '.join(map(str, tolerant))} with one SIGKILLed benefactor "
                               f"each and a rebuild need at least {needed} benefactors (--benefactors {benefactors})")
        benefactors = needed
    # Widest first: it still has every benefactor when its victim is killed.
    policies = [Redundancy(1), *sorted(tolerant, key=_width, reverse=True)]
    names = {str(p): f"bench-{str(p).replace(':', '-').replace('+', '-')}" for p in policies}
    rounds = args.repeat + 1
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        # Every policy's files at once (with parity padding), on the benefactors left after the kills.
        total = sum(_overhead(p) for p in policies) * size * rounds
        memory = int(total * 3 // 2 // max(1, benefactors - len(tolerant))) + 64 * MiB
        progress(f"bench: starting a manager and {benefactors} benefactors ({format_size(memory)} each)")
        procs = start_deployment(UpSettings(benefactors=benefactors, memory=memory, listen="127.0.0.1:0",
                                            state=os.path.join(work, "state"), pfs=os.path.join(work, "pfs"),
                                            heartbeat_interval=0.5, persist_every=0, keep_versions=rounds),
                                 log_level=args.log_level)
        victims = list(procs[1:])
        results: dict[str, dict[str, float]] = {}
        clients: dict[str, Any] = {}
        try:
            for policy in policies:
                name = str(policy)
                clients[name] = Client(manager=procs[0].address, namespace=names[name], chunk_size=chunk,
                                       **deployment_client(os.path.join(work, "state")))
                clients[name].policy(persist_every=0, keep_versions=rounds, redundancy=name)
            samples: dict[str, dict[str, list[float]]] = {str(p): {"oab": [], "asb": [], "protect": [], "cpu": []}
                                                          for p in policies}
            # Rounds interleave the policies, so that each sees the deployment in the same state on average;
            # the first round warms up.
            for rnd in range(rounds):
                for policy in policies:
                    name, client = str(policy), clients[str(policy)]
                    progress(f"bench: round {rnd + 1} of {rounds}: {name} ({format_size(size)})")
                    data = memoryview(os.urandom(size))  # new bytes each round: nothing deduplicates
                    cpu0 = _status(client).repair.stripe_cpu_seconds
                    t0 = time.perf_counter()
                    result = write_file(client, f"/r{rnd}.bin", data, write_size)
                    wrote = time.perf_counter() - t0
                    # As fsync waits: the manager answers once the version is protected.
                    started = time.perf_counter()
                    client.wait_protected(f"/r{rnd}.bin", timeout=300.0)
                    protected = time.perf_counter() - started
                    if rnd:
                        got = samples[name]
                        got["oab"].append(wrote)
                        got["asb"].append(result.stats.asb_seconds)
                        got["protect"].append(protected)
                        got["cpu"].append(_status(client).repair.stripe_cpu_seconds - cpu0)
            for policy in policies:
                name, got = str(policy), samples[str(policy)]
                protect = statistics.median(got["protect"])
                results[name] = {
                    "oab": size / statistics.median(got["oab"]), "asb": size / statistics.median(got["asb"]),
                    "protected_after": protect,
                    "redundancy_rate": (_overhead(policy) - 1) * size / max(protect, 1e-9),
                    "encode_cpu_per_gib": statistics.median(got["cpu"]) / (size / GiB),
                    # Every measured round's file once (none is in any cache), the median.
                    "read": size / statistics.median(_read_seconds(clients[name], f"/r{rnd}.bin")
                                                      for rnd in range(1, rounds))}
            for policy in policies[1:]:
                name, client, r = str(policy), clients[str(policy)], results[str(policy)]
                victim = victims.pop(0)
                lost = _held_by(client, [f"/r{rnd}.bin" for rnd in range(rounds)], victim.id)
                progress(f"bench: {name}: SIGKILL of benefactor {victim.id} ({format_size(lost)} of its "
                         "redundancy): degraded read and rebuild")
                victim.proc.kill()
                victim.proc.wait()
                t0 = time.perf_counter()
                r["degraded_read"] = size / statistics.median(_read_seconds(client, f"/r{rnd}.bin")
                                                              for rnd in range(1, rounds))
                _wait_dead(client, victim.id)
                r["detected_after"] = time.perf_counter() - t0
                r["rebuilt_bytes"] = lost
                r["rebuild_rate"] = lost / _wait_protected(client, names[name], rounds)
                for rnd in range(rounds):  # the next policy's kill rebuilds only its own files
                    client.rm(f"/r{rnd}.bin")
        finally:
            for client in clients.values():
                client.close()
            stop_deployment([p for p in procs if p.proc.poll() is None])
    base = results["none"]
    rows = [(name, format_rate(r["oab"]), format_rate(r["asb"]), f"{r['oab'] / base['oab']:.2f}",
             f"{r['asb'] / base['asb']:.2f}", f"{r['protected_after']:.2f} s",
             format_rate(r["redundancy_rate"]) if name != "none" else "-",
             f"{r['encode_cpu_per_gib']:.2f}" if Redundancy.parse(name).parity else "-",
             f"{r['degraded_read'] / r['read']:.2f}" if "degraded_read" in r else "-",
             format_rate(r["rebuild_rate"]) if "rebuild_rate" in r else "-")
            for name, r in results.items()]
    if args.json:
        print(json.dumps({"setup": {"size": size, "benefactors": benefactors, "chunk_size": chunk,
                                    "repeat": args.repeat, "cpus": os.cpu_count()}, "policies": results}, indent=2))
        return 0
    print(f"memstage bench --redundancy: {format_size(size)} per round, {benefactors} benefactors, chunk "
          f"{format_size(chunk)}, median of {args.repeat} after a warm-up, {os.cpu_count()} CPUs; ratios against "
          "none in this run")
    table([("policy", "OAB", "ASB", "OAB/none", "ASB/none", "protected after", "redundancy made",
            "encode CPU s/GiB", "degraded/normal read", "rebuild rate")] + rows)
    return 0
