"""Commands that ask or tell the manager: status, wait, policy, gc, checkpoints, checkpoint,
token; health, which asks any role whether it serves; and certs, which makes a deployment's TLS
files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from memstage.cli.common import TLS_FLAGS, client_flags, table
from memstage.errors import MemstageError, SettingError
from memstage.progress import Progress, Rate
from memstage.redundancy import Redundancy
from memstage.settings import ClientSettings, env_name, load
from memstage.tls import load as load_tls
from memstage.units import format_size, parse_size


def cmd_status(args: argparse.Namespace) -> int:
    from memstage.client.connections import Connections
    from memstage.proto import manager_pb2

    settings = load(ClientSettings, client_flags(args), config=args.config)
    conn = Connections(settings.manager, settings.rpc_timeout, token=settings.token,
                       tls=load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name),
                       transport=settings.transport, unix_sockets=settings.unix_sockets)
    try:
        reply = conn.call_manager("Status", manager_pb2.StatusRequest(), "status")
    finally:
        conn.close()
    if args.json:
        print(json.dumps(status_json(reply), indent=2))
        return 0
    told = f", state {reply.state_dir}, deployment {reply.deployment}" if reply.deployment else ""
    print(f"manager {settings.manager} (heartbeat {reply.heartbeat_interval_seconds:g}s{told})")
    print()
    if not reply.benefactors:  # a namespace token is told the totals only
        print(f"{reply.benefactors_alive} benefactors alive, {format_size(reply.memory_used)} used of "
              f"{format_size(reply.memory_capacity)}\n")
    rows: list[tuple[str, ...]] = [("BENEFACTOR", "ADDRESS", "ALIVE", "MEMORY USED", "CAPACITY", "USE", "CHUNKS",
                                    "DRAIN BACKLOG", "OLDEST UNDRAINED", "DRAINED", "LAST HB")]
    for b in reply.benefactors:
        s = b.stats
        use = f"{100 * s.memory_used / s.memory_capacity:.0f}%" if s.memory_capacity else "-"
        oldest = f"{b.oldest_undrained_age_seconds:.0f}s" if b.drain_backlog_bytes else "-"
        rows.append((b.id, b.address, "yes" if b.alive else "DEAD", format_size(s.memory_used),
                     format_size(s.memory_capacity), use, str(s.chunk_count), format_size(b.drain_backlog_bytes),
                     oldest, format_size(s.drained_bytes), f"{b.last_heartbeat_age_seconds:.0f}s ago"))
    if reply.benefactors:
        table(rows)
    for b in reply.benefactors:
        if b.stats.drain_error:
            print(f"  {b.id}: DRAIN STUCK: {b.stats.drain_error} (chunks stay in memory; retrying)")
    if reply.benefactors:
        print(f"\n{reply.benefactors_alive} of {len(reply.benefactors)} benefactors alive, "
              f"{format_size(reply.memory_used)} used of {format_size(reply.memory_capacity)}\n")
    rows = [("NAMESPACE", "FILES", "VERSIONS", "COMMITTED", "STORED", "ON PFS", "QUOTA", "REDUNDANCY", "PROTECTED",
             "DEGRADED", "LOST")]
    for n in reply.namespaces:
        quota = f"{format_size(n.memory_used)} of {format_size(n.quota_memory)}" if n.quota_memory else "-"
        rows.append((n.namespace, str(n.files), str(n.versions), format_size(n.bytes_committed),
                     format_size(n.bytes_stored), format_size(n.bytes_on_pfs), quota, n.redundancy or "none",
                     str(n.versions_protected),
                     str(n.versions_degraded), str(n.versions_lost)))
    table(rows)
    if reply.insecure:
        print("\nINSECURE: the manager runs with --insecure: anyone who reaches it may read, write and delete "
              "every namespace")
    r = reply.repair
    if r.stripes or r.chunks_unprotected or r.members_missing or r.copies_made or r.members_encoded:
        print(f"\nredundancy: {r.chunks_unprotected} chunks not yet protected, {r.stripes} stripes, "
              f"{r.members_missing} stripe members missing (rebuilding), {r.in_flight} copies/members in progress; "
              f"since start: {r.copies_made} copies, {r.members_encoded} parity members, {r.members_rebuilt} "
              f"rebuilt members ({format_size(r.bytes_made)} made), {r.stripe_cpu_seconds:.1f} CPU s encoding")
    if reply.lost:
        print(f"\nLOST: {len(reply.lost)} versions can no longer be read:")
        for v in reply.lost:
            print(f"  {v.namespace}:{v.path} version {v.version}{f' ({v.reason})' if v.reason else ''}")
    if reply.drain_failed:
        print(f"\nDRAIN FAILED: {len(reply.drain_failed)} versions cannot be drained (they stay in memory):")
        for v in reply.drain_failed:
            print(f"  {v.namespace}:{v.path} version {v.version} ({v.reason})")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the role at ADDRESS reports SERVING, 1 otherwise (a probe's contract)."""
    import grpc

    from memstage.health import check
    from memstage.units import parse_duration

    # Only the TLS variables: a probe runs with the role's environment, whose other MEMSTAGE_*
    # settings are the role's and not a client's.
    tls_env = {env_name(n): os.environ[env_name(n)] for n in TLS_FLAGS if env_name(n) in os.environ}
    settings = load(ClientSettings, {n: getattr(args, n) for n in TLS_FLAGS}, env=tls_env, config=args.config)
    tls = load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name)
    try:
        status = check(args.address, tls, parse_duration(args.timeout))
    except grpc.RpcError as e:
        detail = e.details() if isinstance(e, grpc.Call) else str(e)
        print(f"{args.address}: cannot be asked ({detail})", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def status_json(reply: Any) -> dict[str, Any]:
    return {
        "heartbeat_interval_seconds": reply.heartbeat_interval_seconds,
        "benefactors_alive": reply.benefactors_alive, "memory_capacity": reply.memory_capacity,
        "memory_used": reply.memory_used,
        "state_dir": reply.state_dir,
        "deployment": reply.deployment,
        "benefactors": [
            {"id": b.id, "address": b.address, "alive": b.alive, "memory_capacity": b.stats.memory_capacity,
             "memory_used": b.stats.memory_used, "drain_backlog": b.drain_backlog_bytes,
             "oldest_undrained_age_seconds": b.oldest_undrained_age_seconds, "drained_bytes": b.stats.drained_bytes,
             "drain_error": b.stats.drain_error, "chunk_count": b.stats.chunk_count,
             "last_heartbeat_age_seconds": b.last_heartbeat_age_seconds}
            for b in reply.benefactors
        ],
        "lost": [{"namespace": v.namespace, "path": v.path, "version": v.version, "reason": v.reason}
                 for v in reply.lost],
        "repair": {f.name: getattr(reply.repair, f.name) for f in reply.repair.DESCRIPTOR.fields},
        "drain_failed": [{"namespace": v.namespace, "path": v.path, "version": v.version, "reason": v.reason}
                         for v in reply.drain_failed],
        "namespaces": [
            {"namespace": n.namespace, "files": n.files, "versions": n.versions,
             "bytes_committed": n.bytes_committed, "bytes_stored": n.bytes_stored, "bytes_on_pfs": n.bytes_on_pfs,
             "quota_memory": n.quota_memory, "memory_used": n.memory_used,
             "redundancy": n.redundancy,
             "versions_protected": n.versions_protected, "versions_degraded": n.versions_degraded,
             "versions_lost": n.versions_lost}
            for n in reply.namespaces
        ],
    }


def cmd_wait(args: argparse.Namespace) -> int:
    import time

    from memstage.client.connections import Connections
    from memstage.errors import Unavailable
    from memstage.proto import manager_pb2
    from memstage.units import parse_duration

    if args.benefactors is None and not args.drained:
        raise SettingError("wait: give --benefactors N, --drained, or both")
    try:
        timeout = parse_duration(args.timeout)
    except ValueError as e:
        raise SettingError(f"--timeout: {e}") from None
    settings = load(ClientSettings, client_flags(args), config=args.config)
    conn = Connections(settings.manager, settings.rpc_timeout, token=settings.token,
                       tls=load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name),
                       transport=settings.transport, unix_sockets=settings.unix_sockets)
    deadline = time.monotonic() + timeout
    last_report = 0.0
    rate = Rate()
    bar = Progress("drained", sys.stderr)  # on a terminal, in place of a line every REPORT_S
    first_drained: int | None = None  # bytes drained in all when the wait began
    last_backlog: int | None = None
    seen_drained = 0
    try:
        while True:
            try:
                reply = conn.call_manager("Status", manager_pb2.StatusRequest(), "status")
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # the manager may still be starting
                continue
            now = time.monotonic()
            # Namespace totals: a namespace token sees its own namespaces' backlog (and no
            # benefactors); the admin token sees every namespace.
            alive = reply.benefactors_alive
            backlog = sum(n.drain_backlog_bytes for n in reply.namespaces)
            oldest = max((b.oldest_undrained_age_seconds for b in reply.benefactors), default=0.0)
            if reply.benefactors:
                drained_total = sum(b.stats.drained_bytes for b in reply.benefactors)
            else:  # what left its namespaces' backlog, as far as this wait saw
                seen_drained += max(0, last_backlog - backlog) if last_backlog is not None else 0
                last_backlog, drained_total = backlog, seen_drained
            rate.add(now, drained_total)
            if first_drained is None or drained_total < first_drained:  # counted from 0 again: a manager restart
                first_drained = drained_total
            enough = args.benefactors is None or alive >= args.benefactors
            drained = not args.drained or backlog == 0
            if args.drained and bar.shown:
                note = "" if enough else f", {alive} of {args.benefactors} benefactors alive"
                done = drained_total - first_drained
                bar.bytes(done, done + backlog, note=note + _drain_note(reply, backlog, rate))
            if enough and drained:
                break
            if now > deadline:
                raise MemstageError(f"timed out after {args.timeout}: {alive} benefactors alive, "
                                    f"{format_size(backlog)} not yet drained")
            if not (args.drained and bar.shown) and now - last_report >= REPORT_S:
                print(f"memstage wait: {alive} benefactors alive; {format_size(backlog)} left to drain"
                      f"{f' (oldest {oldest:.0f}s)' if backlog else ''}{_drain_note(reply, backlog, rate)}",
                      file=sys.stderr, flush=True)
                last_report = now
            time.sleep(0.2)
    finally:
        bar.end()
        conn.close()
    print(f"memstage wait: {alive} benefactors alive, nothing left to drain" if args.drained
          else f"memstage wait: {alive} benefactors alive")
    if reply.lost:
        lost = ", ".join(f"{v.namespace}:{v.path} v{v.version}" for v in reply.lost)
        print(f"memstage wait: LOST before draining: {lost}", file=sys.stderr)
        return 3
    if args.drained and reply.drain_failed:  # nothing left to drain, but these never will be
        failed = "; ".join(f"{v.namespace}:{v.path} v{v.version} ({v.reason})" for v in reply.drain_failed)
        print(f"memstage wait: NOT DRAINED, still in memory only: {failed}", file=sys.stderr)
        return 3
    return 0


REPORT_S = 5.0  # seconds between the lines `wait` prints when its stderr is not a terminal


def _drain_note(reply: Any, backlog: int, rate: Rate) -> str:
    """How the drain goes, as `wait` tells it: stuck (a benefactor says why), its rate and the time
    to go, or that no report came yet. Never "not draining" for want of a report: benefactors
    report a batch only once all of it is written."""
    stuck = [f"{b.id}: {b.stats.drain_error}" for b in reply.benefactors if b.stats.drain_error]
    if stuck:
        return f", NOT DRAINING ({'; '.join(stuck)}; see memstage status)"
    if not backlog:
        return ""
    per_second = rate.per_second()
    if per_second:
        return f", draining at {format_size(per_second)}/s, about {backlog / per_second:.0f}s to go"
    if rate.moved():
        return ", draining (its rate is known at the next report)"
    return ", no drain reported yet"


def cmd_policy(args: argparse.Namespace) -> int:
    from memstage.client import Client

    for flag, value, least in (("--persist-every", args.persist_every, 0), ("--keep-versions", args.keep_versions, 1),
                               ("--pfs-keep", args.pfs_keep, 0), ("--quota-sessions", args.quota_sessions, 0)):
        if value is not None and value < least:
            raise SettingError(f"{flag}: must be {least} or more")
    settings = load(ClientSettings, client_flags(args), config=args.config)
    client = Client(**client_flags(args), config=args.config)
    if args.redundancy is not None:
        Redundancy.parse(args.redundancy, "--redundancy")
    try:
        quota = None
        if args.quota_memory is not None:
            try:
                quota = parse_size(args.quota_memory)
            except ValueError as e:
                raise SettingError(f"--quota-memory: {e}") from None
        policy = client.policy(args.persist_every, args.keep_versions, args.redundancy, args.pfs_keep,
                               quota_memory=quota, quota_sessions=args.quota_sessions,
                               keep_deleted=None if args.keep_deleted is None else args.keep_deleted == "yes")
    finally:
        client.connections.close()
    every = "never" if not policy["persist_every"] else f"every {policy['persist_every']}"
    print(f"namespace {settings.namespace}: persist {every} checkpoint(s) and the first, keep "
          f"{policy['keep_versions']} in memory, redundancy {policy['redundancy']}, keep "
          f"{policy['pfs_keep'] or 'all'} on the PFS (persist_every={policy['persist_every']} "
          f"keep_versions={policy['keep_versions']} redundancy={policy['redundancy']} pfs_keep={policy['pfs_keep']})")
    if policy["quota_memory"] or policy["quota_sessions"]:
        print(f"  quotas: memory {format_size(policy['quota_memory']) if policy['quota_memory'] else 'none'}, "
              f"write sessions {policy['quota_sessions'] or 'no limit'}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from memstage.client import Client

    settings = load(ClientSettings, client_flags(args), config=args.config)
    client = Client(**client_flags(args), config=args.config)
    try:
        reply = client.gc(dry_run=args.dry_run)
    finally:
        client.connections.close()
    orphans = reply["orphans"]
    for o in orphans:
        print(f"{o['path']}  {format_size(o['bytes'])}  ({o['why']})")
    freed = sum(o["bytes"] for o in orphans)
    if args.dry_run:
        print(f"namespace {settings.namespace}: {len(orphans)} orphan files on the PFS ({format_size(freed)} would be "
              "freed); nothing removed (--dry-run)")
    else:
        print(f"namespace {settings.namespace}: removed {reply['removed_files']} orphan files from the PFS "
              f"({format_size(reply['removed_bytes'])} freed)")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from memstage.client import Client

    settings = load(ClientSettings, client_flags(args), config=args.config)
    client = Client(**client_flags(args), config=args.config)
    try:
        listed = client.checkpoints()
    finally:
        client.connections.close()
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    if not listed:
        print(f"namespace {settings.namespace}: no checkpoints of per-step directories or step-numbered files")
        return 0
    rows: list[tuple[str, ...]] = [("SERIES", "STEP", "#", "FILES", "SIZE", "PERSIST", "STATE")]
    for c in listed:
        rows.append((str(c["series"]), str(c["step"]), str(c["seq"]), str(c["files"]), format_size(int(c["bytes"])),
                     "yes" if c["persist"] else "no", str(c["state"])))
    table(rows)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from memstage.client import Client

    settings = load(ClientSettings, client_flags(args), config=args.config)
    if args.action == "begin":
        if args.step is None or args.step < 0:
            raise SettingError("checkpoint begin: STEP (a number, 0 or more) is required")
    elif args.step is not None:
        raise SettingError("checkpoint end: takes no STEP (it ends the namespace's open checkpoint)")
    client = Client(**client_flags(args), config=args.config)
    try:
        ended = client.begin_checkpoint(int(args.step or 0)) if args.action == "begin" else client.end_checkpoint()
    finally:
        client.connections.close()
    ns = settings.namespace
    if args.action == "begin":
        print(f"namespace {ns}: checkpoint {args.step} begins" + (f" (checkpoint {ended} ended)" if ended is not None
                                                                    else ""))
    elif ended is None:
        print(f"namespace {ns}: no checkpoint was open")
    else:
        print(f"namespace {ns}: checkpoint {ended} ended")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from memstage.tls import client_certs, make_deployment_certs

    paths = make_deployment_certs(args.directory)
    if args.client:
        paths = client_certs(args.directory)
    for name, value in paths.items():
        print(f"MEMSTAGE_{name.upper()}={value}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    import time

    from memstage.client.connections import Connections
    from memstage.proto import manager_pb2

    settings = load(ClientSettings, client_flags(args), config=args.config)
    conn = Connections(settings.manager, settings.rpc_timeout, token=settings.token,
                       tls=load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name),
                       transport=settings.transport, unix_sockets=settings.unix_sockets)
    try:
        if args.action == "create":
            if args.admin == bool(args.namespace):
                raise SettingError("token create: give --namespace NS (one or more), or --admin")
            mode = "r" if args.read_only else "rw"
            grants = ([manager_pb2.TokenGrant(namespace="*", mode="admin")] if args.admin else
                      [manager_pb2.TokenGrant(namespace=ns, mode=mode) for ns in args.namespace])
            reply = conn.call_manager("CreateToken", manager_pb2.TokenRequest(grants=grants, note=args.note or ""),
                                      "token create")
            print(reply.token)
            print(f"(token {reply.id}: {'admin' if args.admin else ('read' if args.read_only else 'read-write')}"
                  f"{'' if args.admin else ' on ' + ', '.join(args.namespace)}; give it to clients as MEMSTAGE_TOKEN "
                  "or --token; it is shown only this once)", file=sys.stderr)
        elif args.action == "revoke":
            if not args.id:
                raise SettingError("token revoke: give the token's id (memstage token list)")
            conn.call_manager("RevokeToken", manager_pb2.TokenRequest(id=args.id), f"token {args.id}")
            print(f"token {args.id} revoked")
        else:
            listed = conn.call_manager("ListTokens", manager_pb2.TokenRequest(), "token list")
            rows: list[tuple[str, ...]] = [("ID", "GRANTS", "CREATED", "REVOKED", "NOTE")]
            for t in listed.tokens:
                granted = ", ".join(f"{g.mode} {g.namespace}" for g in t.grants)
                rows.append((t.id, granted, time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created_at)),
                             "yes" if t.revoked else "", t.note))
            table(rows)
    finally:
        conn.close()
    return 0
