"""`memstage up`: the embedded default, a manager and N benefactors on this machine, in the foreground.

Each role is its own process (the data path is CPU-bound in Python: one process per role uses
every core). Ctrl-C or SIGTERM stops the benefactors, then the manager, and waits for them.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from memstage.errors import MemstageError, SettingError
from memstage.procs import RoleProcess, spawn
from memstage.settings import UpSettings
from memstage.units import format_size

log = logging.getLogger(__name__)


def _mkdir(path: str, setting: str) -> str:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingError(f"{setting}: cannot create directory {path!r} ({e.strerror})") from None
    return str(Path(path).resolve())


def start_deployment(settings: UpSettings, config: str | None = None) -> list[RoleProcess]:
    """Start the manager, then the benefactors; on any failure stop what was started."""
    if settings.mount:
        raise SettingError("--mount: the FUSE mount is not available in this version of memstage")
    state = _mkdir(settings.state, "--state")
    pfs = _mkdir(settings.pfs, "--pfs")
    interval = f"{settings.heartbeat_interval}s"
    extra = ["--config", config] if config else []
    procs: list[RoleProcess] = []
    try:
        port = settings.metrics_port
        procs.append(spawn("manager", ["--listen", settings.listen, "--state", state, "--heartbeat-interval",
                                       interval, "--persist-every", str(settings.persist_every),
                                       "--keep-versions", str(settings.keep_versions), "--metrics-port", str(port),
                                       *extra]))
        manager = procs[0].address
        for i in range(settings.benefactors):
            procs.append(spawn("benefactor", ["--manager", manager, "--memory", str(settings.memory), "--pfs", pfs,
                                              "--heartbeat-interval", interval,
                                              "--drain-bandwidth", str(settings.drain_bandwidth),
                                              "--metrics-port", str(port + 1 + i if port else 0), *extra]))
    except BaseException:
        stop_deployment(procs)
        raise
    return procs


def stop_deployment(procs: list[RoleProcess]) -> None:
    for p in reversed(procs):  # benefactors first, the manager last
        p.stop()


def run_up(settings: UpSettings, config: str | None = None) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    procs = start_deployment(settings, config)
    manager = procs[0]
    total = settings.memory * settings.benefactors
    print(f"memstage up: manager on {manager.address}, {settings.benefactors} benefactors donating "
          f"{format_size(settings.memory)} each ({format_size(total)} in all)", flush=True)
    print(f"  try:  memstage status --manager {manager.address}", flush=True)
    print(f"        python -c \"from memstage.client import Client; "
          f"Client(manager='{manager.address}').pipe('/hello.txt', b'hi')\"", flush=True)
    print("Ctrl-C stops everything.", flush=True)
    code = 0
    try:
        while not stop.wait(0.5):
            dead = [p for p in procs if not p.alive()]
            if manager in dead:
                log.error("the manager exited (code %s); stopping", manager.proc.returncode)
                code = 1
                break
            for p in dead:
                log.error("benefactor %s exited (code %s); its chunks are lost", p.id, p.proc.returncode)
                procs.remove(p)
    finally:
        print("memstage up: stopping ...", flush=True)
        stop_deployment(procs)
    if code:
        raise MemstageError("the manager stopped unexpectedly")
    print("memstage up: stopped", flush=True)
    return 0
