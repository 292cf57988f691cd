"""`memstage bench --redundancy replicate:2,...`: what in-memory redundancy costs, against `none`
measured in the same run on the same deployment.

Per policy, one client writes `--size` files (a namespace per policy, nothing drained so memory is
the only place the data is): OAB and ASB, their ratio to `none`, and how long after the commit the
version is fully protected (its copies made), as copy bytes per second. Then one benefactor is
SIGKILLed: reading a file back with some first copies gone (a degraded read) against a normal read
before, and how fast the survivors rebuild what it held.
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


def _protection(client: Any, namespace: str) -> tuple[int, int]:
    from memstage.proto import manager_pb2

    reply = client.connections.call_manager("Status", manager_pb2.StatusRequest(), "status")
    for n in reply.namespaces:
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


def _read_seconds(client: Any, path: str) -> float:
    t0 = time.perf_counter()
    with client.open(path, "rb") as f:
        while f.read(16 * MiB):
            pass
    return time.perf_counter() - t0


def run_redundancy(args: argparse.Namespace, size: int, chunk: int, write_size: int) -> int:
    from memstage.client import Client
    from memstage.settings import UpSettings
    from memstage.up import start_deployment, stop_deployment

    try:
        policies = [Redundancy.parse(p, "--redundancy") for p in str(args.redundancy).split(",") if p.strip()]
    except SettingError:
        raise
    policies = [Redundancy(1)] + [p for p in policies if p.copies > 1]
    most = max(p.copies for p in policies)
    if args.benefactors < most + 1:
        raise SettingError(f"bench --redundancy: {most} copies and a rebuild need at least {most + 1} benefactors "
                           f"(--benefactors {args.benefactors})")
    rounds = args.repeat + 1
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        total = sum(p.copies for p in policies) * size * rounds
        # Room for everything on the survivors of the kill, with slack: a survivor may have to hold
        # a copy of every chunk of the widest policy.
        memory = total * 3 // 2 // (args.benefactors - 1) + 64 * MiB
        progress(f"bench: starting a manager and {args.benefactors} benefactors ({format_size(memory)} each)")
        procs = start_deployment(UpSettings(benefactors=args.benefactors, memory=memory, listen="127.0.0.1:0",
                                            state=os.path.join(work, "state"), pfs=os.path.join(work, "pfs"),
                                            heartbeat_interval=0.5, persist_every=0, keep_versions=rounds))
        results: dict[str, dict[str, float]] = {}
        try:
            for policy in policies:
                name = str(policy)
                namespace = f"bench-{name.replace(':', '-')}"
                client = Client(manager=procs[0].address, namespace=namespace, chunk_size=chunk)
                client.policy(persist_every=0, keep_versions=rounds, redundancy=name)
                oab, asb, protect = [], [], []
                for rnd in range(rounds):
                    progress(f"bench: {name}: round {rnd + 1} of {rounds} ({format_size(size)})")
                    data = memoryview(os.urandom(size))  # new bytes each round: nothing deduplicates
                    t0 = time.perf_counter()
                    result = write_file(client, f"/r{rnd}.bin", data, write_size)
                    wrote = time.perf_counter() - t0
                    protected = _wait_protected(client, namespace, rnd + 1)
                    if rnd:  # the first round warms up
                        oab.append(wrote)
                        asb.append(result.stats.asb_seconds)
                        protect.append(protected)
                results[name] = {"oab": size / statistics.median(oab), "asb": size / statistics.median(asb),
                                 "protected_after": statistics.median(protect),
                                 "copy_rate": (policy.copies - 1) * size / max(statistics.median(protect), 1e-9),
                                 "read": size / _read_seconds(client, f"/r{rounds - 1}.bin")}
                client.close()
            replicated = [p for p in policies if p.copies > 1]
            if replicated:
                victim = procs[1]
                progress(f"bench: SIGKILL of benefactor {victim.id}: degraded reads and rebuild")
                victim.proc.kill()
                victim.proc.wait()
                for policy in replicated:
                    name = str(policy)
                    namespace = f"bench-{name.replace(':', '-')}"
                    client = Client(manager=procs[0].address, namespace=namespace, chunk_size=chunk)
                    t0 = time.perf_counter()
                    results[name]["degraded_read"] = size / _read_seconds(client, f"/r{rounds - 1}.bin")
                    rebuild = time.perf_counter() - t0 + _wait_protected(client, namespace, rounds)
                    lost_share = 1 / args.benefactors  # what one benefactor held, on average
                    results[name]["rebuild_rate"] = policy.copies * size * rounds * lost_share / rebuild
                    client.close()
        finally:
            stop_deployment([p for p in procs if p.proc.poll() is None])
    base = results["none"]
    rows = [(name, format_rate(r["oab"]), format_rate(r["asb"]), f"{r['oab'] / base['oab']:.2f}",
             f"{r['asb'] / base['asb']:.2f}", f"{r['protected_after']:.2f} s",
             format_rate(r["copy_rate"]) if name != "none" else "-",
             f"{r['degraded_read'] / r['read']:.2f}" if "degraded_read" in r else "-",
             format_rate(r["rebuild_rate"]) if "rebuild_rate" in r else "-")
            for name, r in results.items()]
    if args.json:
        print(json.dumps({"setup": {"size": size, "benefactors": args.benefactors, "chunk_size": chunk,
                                    "repeat": args.repeat, "cpus": os.cpu_count()}, "policies": results}, indent=2))
        return 0
    print(f"memstage bench --redundancy: {format_size(size)} per round, {args.benefactors} benefactors, chunk "
          f"{format_size(chunk)}, median of {args.repeat} after a warm-up, {os.cpu_count()} CPUs; ratios against "
          "none in this run")
    table([("policy", "OAB", "ASB", "OAB/none", "ASB/none", "protected after", "copy rate", "degraded/normal read",
            "rebuild rate")] + rows)
    return 0
