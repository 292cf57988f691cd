"""`memstage bench --security`: what TLS and tokens cost, against a deployment without them
measured in the same run.

Two deployments run side by side on the same machine: one as `memstage up` makes it (mutual TLS on
every port, tokens, signed grants) and one with `--insecure`. For each client count, rounds
alternate between them (which one goes first alternates too), each round one warm-up and one
measured write of `--size` per client, so both see the machine in the same state. Reported: OAB and
ASB of each (median over --repeat rounds) and their ratio, secure over insecure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from typing import Any

from memstage.bench.report import progress, table
from memstage.units import format_rate, format_size

MiB = 1024 * 1024


def run_security(args: argparse.Namespace, size: int, chunk: int, write_size: int) -> int:
    from memstage.bench.run import _run_parallel
    from memstage.cli.up import deployment_client, start_deployment, stop_deployment
    from memstage.settings import UpSettings

    counts = [int(c) for c in str(args.clients).split(",") if c.strip()]
    kinds = ("secure", "insecure")
    samples: dict[int, dict[str, dict[str, list[float]]]] = {
        c: {k: {"oab": [], "asb": []} for k in kinds} for c in counts}
    with tempfile.TemporaryDirectory(prefix="memstage-bench-", dir=args.dir) as work:
        memory = (size * max(counts) * 5 // 4) // args.benefactors + 16 * MiB
        deployments: dict[str, list[Any]] = {}
        try:
            for kind in kinds:
                progress(f"bench: starting a {kind} deployment: a manager and {args.benefactors} benefactors "
                         f"({format_size(memory)} each)")
                state = os.path.join(work, kind, "state")
                deployments[kind] = start_deployment(UpSettings(
                    benefactors=args.benefactors, memory=memory, listen="127.0.0.1:0", state=state,
                    pfs=os.path.join(work, kind, "pfs"), heartbeat_interval=2.0, insecure=kind == "insecure"),
                    log_level=args.log_level)
            common = {kind: {"size": size, "write_size": write_size, "chunk_size": chunk, "rounds": 2,
                             "manager": deployments[kind][0].address, "dir": work,
                             "client": deployment_client(os.path.join(work, kind, "state"))} for kind in kinds}
            for c in counts:
                for rnd in range(args.repeat):
                    order = kinds if rnd % 2 == 0 else kinds[::-1]
                    for kind in order:
                        progress(f"bench: {c} client(s) x {format_size(size)}, round {rnd + 1}/{args.repeat}: "
                                 f"{kind} ...")
                        (oab_t, asb_t), = _run_parallel("memstage", c, common[kind])
                        samples[c][kind]["oab"].append(c * size / oab_t)
                        samples[c][kind]["asb"].append(c * size / asb_t)
        finally:
            for procs in deployments.values():
                stop_deployment(procs)
    rows: list[dict[str, Any]] = []
    for c in counts:
        med = {k: {m: statistics.median(v) for m, v in samples[c][k].items()} for k in kinds}
        rows.append({"clients": c, "secure": med["secure"], "insecure": med["insecure"],
                     "oab_ratio": med["secure"]["oab"] / med["insecure"]["oab"],
                     "asb_ratio": med["secure"]["asb"] / med["insecure"]["asb"]})
    if args.json:
        print(json.dumps({"setup": {"size": size, "benefactors": args.benefactors, "chunk_size": chunk,
                                    "write_size": write_size, "repeat": args.repeat, "cpus": os.cpu_count()},
                          "rows": rows, "samples": samples}, indent=2))
        return 0
    print(f"memstage bench --security: {format_size(size)} per client, {args.benefactors} benefactors, chunk "
          f"{format_size(chunk)}, secure (mutual TLS, tokens, grants) vs --insecure in alternating rounds, "
          f"median of {args.repeat}, {os.cpu_count()} CPUs")
    header = ("clients", "OAB secure", "OAB insecure", "OAB ratio", "ASB secure", "ASB insecure", "ASB ratio")
    table([header] + [(str(r["clients"]), format_rate(r["secure"]["oab"]), format_rate(r["insecure"]["oab"]),
                       f"{r['oab_ratio']:.2f}", format_rate(r["secure"]["asb"]), format_rate(r["insecure"]["asb"]),
                       f"{r['asb_ratio']:.2f}") for r in rows])
    return 0
