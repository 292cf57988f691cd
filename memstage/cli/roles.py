"""Commands that run a role in the foreground: manager, benefactor, a mount (and umount), up,
bench. Each imports its role's package when it runs, so the rest of the command line stays quick
to start."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile

from memstage.cli.common import LOG_FORMAT, log, settings_flags
from memstage.errors import MemstageError, PermissionDenied, SettingError, Unauthenticated
from memstage.settings import BenefactorSettings, ClientSettings, ManagerSettings, UpSettings, load
from memstage.signalflag import SignalFlag


class _Stopper:
    """Ctrl-C and SIGTERM set a flag the main thread waits on, so shutdown runs in one place; a
    second one sets `now` (stop without finishing what a clean stop does first). Flags, not
    threading.Events: see memstage.signalflag."""

    def __init__(self) -> None:
        self.event = SignalFlag()
        self.now = SignalFlag()
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

    settings = load(ManagerSettings, settings_flags(args, ManagerSettings), config=args.config)
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

    settings = load(BenefactorSettings, settings_flags(args, BenefactorSettings), config=args.config)
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


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise SettingError(f"MOUNTPOINT: {args.mountpoint!r} is not a directory")
    if os.path.ismount(mountpoint):
        raise SettingError(f"MOUNTPOINT: {args.mountpoint!r} is already a mount point")
    if not args.nonempty and (entries := os.listdir(mountpoint)):
        raise SettingError(f"MOUNTPOINT: {args.mountpoint!r} is not empty ({len(entries)} entries, e.g. "
                           f"{sorted(entries)[0]!r}): the mount would hide them; use an empty directory, or "
                           "--nonempty to mount over them anyway")
    settings = load(ClientSettings, settings_flags(args, ClientSettings), config=args.config)
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
    client = Client(**{k: v for k, v in settings_flags(args, ClientSettings).items() if v is not None},
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


def cmd_up(args: argparse.Namespace) -> int:
    from memstage.cli.up import run_up

    settings = load(UpSettings, settings_flags(args, UpSettings), config=args.config)
    return run_up(settings, config=args.config, log_level=args.log_level)


def cmd_bench(args: argparse.Namespace) -> int:
    from memstage.bench.run import run_bench

    return run_bench(args)
