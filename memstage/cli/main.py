"""The `memstage` command: one subcommand per role, plus status, up and bench.

Flags are generated from the settings dataclasses (memstage.settings), so --help, MEMSTAGE_*
variables and TOML keys always agree. A usage error prints one line and exits 2; no traceback.
"""

from __future__ import annotations

import os

# gRPC's C core prints its own copy of errors we already report in one line (e.g. a port in use);
# it must be told before grpc is first imported. GRPC_VERBOSITY=error brings its messages back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from memstage import __version__  # noqa: E402
from memstage.errors import MemstageError, PermissionDenied, SettingError, Unauthenticated  # noqa: E402
from memstage.progress import Progress  # noqa: E402
from memstage.redundancy import Redundancy
from memstage.settings import (  # noqa: E402
    BenefactorSettings,
    ClientSettings,
    ManagerSettings,
    UpSettings,
    env_name,
    flag_name,
    load,
)
from memstage.tls import load as load_tls  # noqa: E402
from memstage.units import format_size, parse_size  # noqa: E402

log = logging.getLogger("memstage")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _add_settings(parser: argparse.ArgumentParser, cls: type, only: Sequence[str] | None = None) -> None:
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        default = f.default if f.default != "" else "none"
        if f.type in (bool, "bool"):  # a switch: --insecure
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, action="store_const", const=True,
                                help=f"{f.metadata['help']} [{env_name(f.name)}=1]")
            continue
        parser.add_argument(flag_name(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                            help=f"{f.metadata['help']} [{env_name(f.name)}; default {default}]")


TLS_FLAGS = ("tls_ca", "tls_cert", "tls_key", "tls_server_name")


def _client_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The client settings a manager-facing command takes from its flags (`token create` has a
    --namespace of its own: the namespaces a new token grants)."""
    names = ("manager", "namespace", "token", *TLS_FLAGS)
    return {n: getattr(args, n) for n in names if isinstance(getattr(args, n, None), str)}


def _settings_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}


class _Stopper:
    """Ctrl-C and SIGTERM set an event the main thread waits on, so shutdown runs in one place; a
    second one sets `now` (stop without finishing what a clean stop does first)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.now = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            self.now.set()
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(1.0):
            pass


def cmd_manager(args: argparse.Namespace) -> int:
    from memstage.manager.server import create_server
    from memstage.procs import ready_line

    settings = load(ManagerSettings, _settings_flags(args, ManagerSettings), config=args.config)
    stopper = _Stopper()
    server = create_server(settings)
    server.start()
    print(ready_line("manager", "manager", server.address), flush=True)
    stopper.wait()
    log.info("stopping manager")
    server.stop()
    return 0


def cmd_benefactor(args: argparse.Namespace) -> int:
    from memstage.benefactor.server import create_server
    from memstage.procs import ready_line
    from memstage.tuning import keep_large_buffers

    settings = load(BenefactorSettings, _settings_flags(args, BenefactorSettings), config=args.config)
    keep_large_buffers()
    stopper = _Stopper()
    server = create_server(settings)
    server.start()
    print(ready_line("benefactor", server.id, server.address), flush=True)
    stopper.wait()
    log.info("stopping benefactor %s: draining first what is selected for persistence", server.id)
    server.drain_before_stop(stopper.now)
    server.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from memstage.client.connections import Connections
    from memstage.proto import manager_pb2

    settings = load(ClientSettings, _client_flags(args), config=args.config)
    conn = Connections(settings.manager, settings.rpc_timeout, token=settings.token,
                       tls=load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name))
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
        _table(rows)
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
    _table(rows)
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


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise SettingError(f"MOUNTPOINT: {args.mountpoint!r} is not a directory")
    if os.path.ismount(mountpoint):
        raise SettingError(f"MOUNTPOINT: {args.mountpoint!r} is already a mount point")
    settings = load(ClientSettings, _settings_flags(args, ClientSettings), config=args.config)
    log_file = args.log_file
    if args.background and not log_file:
        name = mountpoint.strip("/").replace("/", "_") or "root"
        runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        log_file = os.path.join(runtime, f"memstage-mount.{name}.log")
    if log_file:
        try:
            handler = logging.FileHandler(log_file)
        except OSError as e:
            raise SettingError(f"--log-file: cannot write {log_file!r} ({e.strerror})") from None
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().handlers[:] = [handler]
    if not args.background:
        return _serve_mount(args, settings, mountpoint, None)
    # The parent returns only once the mount is up (0), or with the child's error (2): a script
    # that mounts in the background can rely on the mount being usable when it goes on.
    ready_r, ready_w = os.pipe()
    if os.fork():
        os.close(ready_w)
        with os.fdopen(ready_r) as ready:
            answer = ready.read()
        if answer.startswith("ok"):
            print(f"memstage mount: {mountpoint} mounted; logging to {log_file}", file=sys.stderr)
            return 0
        raise MemstageError(answer.strip() or f"the mount process ended without mounting (see {log_file})")
    os.close(ready_r)
    os.setsid()
    with open(os.devnull, "r+b") as null:  # the terminal it was started from gets nothing more
        for fd in (0, 1, 2):
            os.dup2(null.fileno(), fd)
    try:
        code = _serve_mount(args, settings, mountpoint, ready_w)
    except MemstageError as e:
        log.error("%s", e)
        _tell(ready_w, f"{e}")
        code = 2
    os._exit(code)


def _tell(fd: int | None, message: str) -> None:
    if fd is not None:
        try:
            os.write(fd, message.encode())
            os.close(fd)
        except OSError:
            pass  # told already, or the parent is gone


def _serve_mount(args: argparse.Namespace, settings: ClientSettings, mountpoint: str, ready: int | None) -> int:
    from memstage.client import Client
    from memstage.client.mount import mount
    from memstage.metrics import serve_metrics
    from memstage.proto import manager_pb2
    from memstage.tuning import keep_large_buffers

    keep_large_buffers()
    client = Client(**{k: v for k, v in _settings_flags(args, ClientSettings).items() if v is not None},
                    config=args.config)
    server = None
    try:
        # A mount whose manager does not answer would only give EIO: refuse it now, naming it.
        try:
            client.connections.call_manager("Stat", manager_pb2.PathRequest(namespace=settings.namespace, path="/"),
                                            f"namespace {settings.namespace}")
        except (Unauthenticated, PermissionDenied) as e:
            raise MemstageError(f"--token: refused by {settings.manager}, nothing mounted ({e})") from None
        except MemstageError as e:
            raise MemstageError(f"--manager {settings.manager}: no answer, nothing mounted ({e})") from None
        server = serve_metrics(client.metrics_registry, args.metrics_port or 0, "127.0.0.1")
        log.info("mounting namespace %s of %s on %s", settings.namespace, settings.manager, mountpoint)
        # returns when unmounted: libfuse turns Ctrl-C/SIGTERM into an unmount
        mount(client, mountpoint, allow_other=args.allow_other, on_ready=lambda: _tell(ready, "ok"))
    finally:
        if server is not None:
            server.shutdown()
        client.close()
    log.info("unmounted %s", mountpoint)
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    import subprocess

    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.ismount(mountpoint):
        raise SettingError(f"MOUNTPOINT: {args.mountpoint!r} is not mounted")
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode:
        raise MemstageError(f"cannot unmount {mountpoint}: {result.stderr.strip() or 'fusermount3 failed'}")
    return 0


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
    settings = load(ClientSettings, _client_flags(args), config=args.config)
    conn = Connections(settings.manager, settings.rpc_timeout, token=settings.token,
                       tls=load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name))
    deadline = time.monotonic() + timeout
    last_report = 0.0
    last_drained: tuple[float, int] | None = None  # (when, bytes drained in all) at the last report
    try:
        while True:
            try:
                reply = conn.call_manager("Status", manager_pb2.StatusRequest(), "status")
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # the manager may still be starting
                continue
            alive = sum(1 for b in reply.benefactors if b.alive)
            backlog = sum(b.drain_backlog_bytes for b in reply.benefactors)
            oldest = max((b.oldest_undrained_age_seconds for b in reply.benefactors), default=0.0)
            enough = args.benefactors is None or alive >= args.benefactors
            drained = not args.drained or backlog == 0
            if enough and drained:
                break
            now = time.monotonic()
            if now > deadline:
                raise MemstageError(f"timed out after {args.timeout}: {alive} benefactors alive, "
                                    f"{format_size(backlog)} not yet drained")
            if now - last_report >= 5:
                drained_total = sum(b.stats.drained_bytes for b in reply.benefactors)
                progress = ""
                if backlog and last_drained is not None and now > last_drained[0]:
                    rate = max(0, drained_total - last_drained[1]) / (now - last_drained[0])
                    eta = f"about {backlog / rate:.0f}s to go" if rate > 0 else "not draining (see memstage status)"
                    progress = f", draining at {format_size(rate)}/s, {eta}"
                last_drained = (now, drained_total)
                print(f"memstage wait: {alive} benefactors alive; {format_size(backlog)} left to drain"
                      f"{f' (oldest {oldest:.0f}s)' if backlog else ''}{progress}", file=sys.stderr, flush=True)
                last_report = now
            time.sleep(0.2)
    finally:
        conn.close()
    print(f"memstage wait: {alive} benefactors alive, nothing left to drain" if args.drained
          else f"memstage wait: {alive} benefactors alive")
    if reply.lost:
        lost = ", ".join(f"{v.namespace}:{v.path} v{v.version}" for v in reply.lost)
        print(f"memstage wait: LOST before draining: {lost}", file=sys.stderr)
        return 3
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from memstage.client import Client

    for flag, value, least in (("--persist-every", args.persist_every, 0), ("--keep-versions", args.keep_versions, 1),
                               ("--pfs-keep", args.pfs_keep, 0), ("--quota-sessions", args.quota_sessions, 0)):
        if value is not None and value < least:
            raise SettingError(f"{flag}: must be {least} or more")
    settings = load(ClientSettings, _client_flags(args), config=args.config)
    client = Client(**_client_flags(args), config=args.config)
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

    settings = load(ClientSettings, _client_flags(args), config=args.config)
    client = Client(**_client_flags(args), config=args.config)
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

    settings = load(ClientSettings, _client_flags(args), config=args.config)
    client = Client(**_client_flags(args), config=args.config)
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
    _table(rows)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from memstage.client import Client

    settings = load(ClientSettings, _client_flags(args), config=args.config)
    if args.action == "begin":
        if args.step is None or args.step < 0:
            raise SettingError("checkpoint begin: STEP (a number, 0 or more) is required")
    elif args.step is not None:
        raise SettingError("checkpoint end: takes no STEP (it ends the namespace's open checkpoint)")
    client = Client(**_client_flags(args), config=args.config)
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


def cmd_prefetch(args: argparse.Namespace) -> int:
    from memstage.client import Client

    client = Client(**_client_flags(args), config=args.config)
    shown = Progress("loaded", sys.stderr)
    try:
        done = client.prefetch(args.path, progress=lambda loaded, total: shown.bytes(loaded, total),
                               timeout=args.timeout, latest=args.latest)
    finally:
        shown.end()
        client.connections.close()
    what = f"the latest checkpoint below {args.path}" if args.latest else args.path
    print(f"prefetched {what}: {done['files']} files, {format_size(int(done['loaded_bytes']))} of "
          f"{format_size(int(done['bytes']))} in memory")
    if done["failed_chunks"]:
        print(f"{done['failed_chunks']} chunks could not be loaded ({done['error']}); they are read from the PFS",
              file=sys.stderr)
        return 1
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    import time

    from memstage.drainer.restore import is_tree, list_pfs, restore, restore_tree

    if args.version is not None and args.version <= 0:
        raise SettingError("--version: must be 1 or more")
    if args.workers <= 0:
        raise SettingError("--workers: must be 1 or more")
    if args.list:
        namespace = args.namespace or ("default" if args.path else None)
        rows = [("NAMESPACE", "PATH", "DEPLOYMENT", "VERSION", "COMMITTED", "SIZE", "COMPLETE")]
        for v in list_pfs(args.pfs, namespace, args.path):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.committed_ms / 1000)) if v.committed_ms else "-"
            rows.append((v.namespace, v.path, v.deployment or "-", str(v.version), when, format_size(v.size),
                         "yes" if v.complete else f"no ({v.chunks} of {v.count} chunks)"))
        _table(rows)
        return 0
    if not args.path or not args.out:
        raise SettingError("restore: PATH and --out are required (or --list to see what the PFS holds)")
    namespace = args.namespace or "default"
    if is_tree(args.pfs, namespace, args.path):
        if args.version is not None or args.deployment is not None:
            raise SettingError(f"--version and --deployment pick a version of one file; {namespace}:{args.path} "
                               "is a directory, restored as each file's complete version committed last")
        shown = Progress("restored", sys.stderr)
        try:
            tree = restore_tree(args.pfs, namespace, args.path, args.out, args.workers,
                                lambda done, total, files, of: shown.bytes(done, total, (files, of)))
        finally:
            shown.end()
        for path, why in tree.failures:
            print(f"memstage restore: not restored: {namespace}:{path}: {why}", file=sys.stderr)
        print(f"restored {tree.files} of {tree.total_files} files ({format_size(tree.size)}) of "
              f"{namespace}:{args.path} to {args.out}" + (f", {len(tree.failures)} failed" if tree.failures else ""))
        return 1 if tree.failures else 0
    result = restore(args.pfs, namespace, args.path, args.out, args.version or 0, args.deployment)
    print(f"restored {namespace}:{args.path} version {result.version}"
          f"{f' of deployment {result.deployment}' if result.deployment else ''} ({format_size(result.size)}, "
          f"{result.chunks} chunks) to {args.out}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from memstage.cli.up import run_up

    settings = load(UpSettings, _settings_flags(args, UpSettings), config=args.config)
    return run_up(settings, config=args.config)


def cmd_bench(args: argparse.Namespace) -> int:
    from memstage.bench.run import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memstage",
        description="Checkpoint staging in the aggregate memory of many processes, drained to the PFS.",
    )
    parser.add_argument("--version", action="version", version=f"memstage {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML settings file [MEMSTAGE_CONFIG]")
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", parents=[common], help="a manager and N benefactors on this machine, in the foreground",
                       description="Start a manager and N benefactors on this machine. Ctrl-C stops them all.")
    _add_settings(p, UpSettings)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("manager", parents=[common], help="run the manager",
                       description="Run the manager: benefactor registry, striping maps, namespace, versions.")
    _add_settings(p, ManagerSettings)
    p.set_defaults(func=cmd_manager)

    p = sub.add_parser("benefactor", parents=[common], help="run a benefactor donating memory",
                       description="Run a benefactor: donate memory to the staging area and serve chunks.")
    _add_settings(p, BenefactorSettings)
    p.set_defaults(func=cmd_benefactor)

    p = sub.add_parser("status", parents=[common], help="benefactors, memory and files of a deployment",
                       description="Show benefactors (alive, memory used/capacity, drain backlog) and namespaces.")
    _add_settings(p, ClientSettings, only=["manager", "token", *TLS_FLAGS])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("policy", parents=[common], help="show or set a namespace's persistence policy",
                       description="Show the policy of a namespace; with --persist-every or --keep-versions, set it.")
    _add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("--persist-every", type=int, default=None, metavar="N",
                   help="drain the first and every N-th checkpoint to the PFS; 0 = never (a checkpoint: a "
                        "per-step directory such as step_100/, files named ..._step100..., or a version of "
                        "any other file)")
    p.add_argument("--keep-versions", "--keep", type=int, default=None, metavar="K",
                   help="checkpoints kept readable in memory besides one being written (older ones: PFS only, "
                        "or deleted)")
    p.add_argument("--redundancy", default=None, metavar="POLICY",
                   help="none; replicate:R: R copies of each chunk on distinct benefactors (R-1 may fail); or "
                        "rs:K+M: stripes of K chunks and M parity chunks on distinct benefactors (M may fail)")
    p.add_argument("--pfs-keep", type=int, default=None, metavar="K",
                   help="persisted checkpoints kept on the PFS (older ones are removed from it); 0 = all")
    p.add_argument("--quota-memory", default=None, metavar="SIZE",
                   help="memory the namespace may use, committed and uncommitted (e.g. 8GiB); 0 = no limit "
                        "(admin token)")
    p.add_argument("--keep-deleted", choices=["yes", "no"], default=None,
                   help="yes: a deleted file's drained copy stays on the PFS (restore and gc still see it); "
                        "no (the default): it is removed with the file")
    p.add_argument("--quota-sessions", type=int, default=None, metavar="N",
                   help="write sessions (files being written) it may have open at once; 0 = no limit (admin)")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("gc", parents=[common], help="remove drained files no version references from the PFS",
                       description="Remove from the PFS the chunk files of a namespace that no version the "
                                   "manager knows references (left by a crash, by deletes while the manager had "
                                   "no pfs setting, or by a deployment whose state was lost), and temporary files "
                                   "of drains that did not finish. Files another deployment is writing into the "
                                   "same directory now are left alone. Needs the manager's pfs setting.")
    _add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("checkpoints", parents=[common], help="list a namespace's checkpoints and their state",
                       description="List the checkpoints of a namespace (per-step directories and step-numbered "
                                   "files), oldest first: files, bytes, whether persist_every selects them, and "
                                   "their state (in_memory; protected: in memory with the redundancy its policy "
                                   "asks; draining; persisted; lost).")
    _add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=cmd_checkpoints)

    p = sub.add_parser("checkpoint", parents=[common], help="begin or end a checkpoint of a namespace",
                       description="Files any writer commits in the namespace between `begin STEP` and `end` "
                                   "(through the mount, the library or other processes) form checkpoint STEP, "
                                   "whatever their names: persist_every, keep and pfs_keep count it as one. For "
                                   "layouts memstage does not recognise itself (per-step directories such as "
                                   "step_100/ and step-numbered files need nothing); a path naming a step keeps it. "
                                   "A begin ends the checkpoint that was open.")
    _add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("action", choices=["begin", "end"], help="begin STEP, or end the open checkpoint")
    p.add_argument("step", type=int, nargs="?", default=None, metavar="STEP", help="the checkpoint's step (begin)")
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser("prefetch", parents=[common], help="load persisted files back into memory from the PFS",
                       description="Load the latest version of every file at or below PATH (a file, a checkpoint "
                                   "directory, or / for the whole namespace) back into memory from the PFS, so a "
                                   "restarted job reads it at memory speed: a checkpoint an earlier job drained, "
                                   "or one that left memory. The benefactors read the chunk files in parallel; "
                                   "what cannot be loaded (no room) is still read from the PFS. Exit code 1 then.")
    _add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("path", metavar="PATH", nargs="?", default="/",
                   help="a file or directory of the namespace (default: /)")
    p.add_argument("--latest", action="store_true",
                   help="only the newest persisted checkpoint of each step series below PATH (what a restart "
                        "reads), not every file")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up after this long (default: wait until done)")
    p.set_defaults(func=cmd_prefetch)

    p = sub.add_parser("certs", parents=[common], help="make a CA and certificates for a deployment's TLS",
                       description="Write ca.pem, cert.pem and key.pem (0600), client.pem and client-key.pem (0600) "
                                   "into DIRECTORY, unless they are there already. cert.pem is the roles' identity "
                                   "(the manager and benefactors serve with it and dial each other with it): give "
                                   "it to them only. client.pem is for clients (applications, mounts, the CLI): its "
                                   "key usage is client authentication only, so a client cannot pose as a server. "
                                   "Both name 'memstage' (and 127.0.0.1, localhost, this host): "
                                   "tls_server_name=memstage. Prints the roles' settings as environment variables "
                                   "(with --client, the clients').")
    p.add_argument("directory")
    p.add_argument("--client", action="store_true", help="print the client certificate's settings")
    p.set_defaults(func=cmd_certs)

    p = sub.add_parser("token", parents=[common], help="create, revoke or list access tokens (admin token needed)",
                       description="Tokens give clients read or read-write access to named namespaces (or admin "
                                   "access to all). The manager keeps only a hash of each; a new token is printed "
                                   "once.")
    p.add_argument("action", choices=["create", "revoke", "list"])
    p.add_argument("id", nargs="?", default="", help="revoke: the token's id (as `memstage token list` shows it)")
    p.add_argument("--namespace", action="append", default=[], metavar="NS",
                   help="create: a namespace the token grants (repeat for several)")
    p.add_argument("--read-only", action="store_true", help="create: read access only")
    p.add_argument("--admin", action="store_true", help="create: an admin token (every namespace, tokens, policy)")
    p.add_argument("--note", default="", help="create: who or what the token is for")
    _add_settings(p, ClientSettings, only=["manager", "token", *TLS_FLAGS])
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("mount", parents=[common], help="mount a namespace as a staging directory (FUSE)",
                       description="Mount a namespace as a POSIX directory: files written there are checkpoints in "
                                   "memstage. Runs in the foreground; Ctrl-C or SIGTERM unmounts cleanly.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    _add_settings(p, ClientSettings)
    p.add_argument("--background", action="store_true",
                   help="detach once mounted (exits 0 when the mount is usable, 2 with the reason if not)")
    p.add_argument("--log-file", metavar="PATH", default=None,
                   help="write the mount's log here (default: the terminal; with --background, "
                        "$XDG_RUNTIME_DIR or /tmp/memstage-mount.<mountpoint>.log)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users use the mount, the kernel checking each file's mode and owner "
                        "(needs user_allow_other in /etc/fuse.conf unless run as root)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve the client's /metrics here (0 = off)")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", parents=[common], help="unmount a staging directory",
                       description="Unmount a directory mounted with memstage mount.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("wait", parents=[common], help="wait for benefactors to be up or for the drain to finish",
                       description="Wait until N benefactors are alive and/or nothing is left to drain to the PFS "
                                   "(e.g. at the end of a batch job). Exit 0 when done, 2 on timeout, 3 if a version "
                                   "was lost before it could be drained.")
    _add_settings(p, ClientSettings, only=["manager", "token", *TLS_FLAGS])
    p.add_argument("--benefactors", type=int, default=None, metavar="N", help="wait until N benefactors are alive")
    p.add_argument("--drained", action="store_true", help="wait until every selected version is on the PFS")
    p.add_argument("--timeout", default="1h", help="give up after this long (default 1h)")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("restore", parents=[common], help="rebuild a file or a directory tree from the PFS alone",
                       description="Rebuild a persisted version of a file from the PFS alone (no manager, no "
                                   "database), verifying every chunk's hash. PATH may be a directory (or /): then "
                                   "every file below it is restored, each as its complete version committed last, "
                                   "into OUT with the same tree and the commit time as modification time; exit "
                                   "code 1 if some file could not be restored.")
    p.add_argument("--pfs", required=True, metavar="DIR", help="the PFS directory benefactors drain to")
    p.add_argument("--namespace", default=None, help="namespace of the file (default: default)")
    p.add_argument("path", metavar="PATH", nargs="?",
                   help="the file's path in its namespace, e.g. /run42/rank0.bin, or a directory, e.g. /run42 or /")
    p.add_argument("--version", type=int, default=None,
                   help="version to restore (default: the complete version committed last)")
    p.add_argument("--deployment", default=None,
                   help="the deployment that drained it, when several share the PFS directory (see --list)")
    p.add_argument("--list", action="store_true",
                   help="list what the PFS holds (namespaces, files, deployments, versions, complete or not)")
    p.add_argument("--out", metavar="OUT",
                   help="where to write the file; for a directory, the directory to restore into (created if missing)")
    p.add_argument("--workers", type=int, default=8, metavar="N",
                   help="for a directory: files restored in parallel (default 8)")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("bench", parents=[common], help="measure OAB/ASB against disk and bare-gRPC baselines",
                       description="Write checkpoint files to a local deployment and compare with baselines "
                                   "measured in the same run.")
    from memstage.bench.run import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


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

    settings = load(ClientSettings, _client_flags(args), config=args.config)
    conn = Connections(settings.manager, settings.rpc_timeout, token=settings.token,
                       tls=load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name))
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
            _table(rows)
    finally:
        conn.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format=LOG_FORMAT)
    try:
        return int(args.func(args) or 0)
    except MemstageError as e:
        print(f"memstage {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
