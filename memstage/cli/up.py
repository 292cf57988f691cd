"""`memstage up`: the embedded default, a manager and N benefactors on this machine, in the foreground.

Each role is its own process (the data path is CPU-bound in Python: one process per role uses
every core). Ctrl-C or SIGTERM stops the benefactors, then the manager, and waits for them.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

from memstage.errors import MemstageError, SettingError
from memstage.procs import RoleProcess, spawn
from memstage.settings import UpSettings, flag_name
from memstage.signalflag import SignalFlag
from memstage.units import format_size

log = logging.getLogger(__name__)


def _mkdir(path: str, setting: str) -> str:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingError(f"{setting}: cannot create directory {path!r} ({e.strerror})") from None
    return str(Path(path).resolve())


def deployment_token(state: str) -> str:
    """The admin token a secure manager wrote into its state directory ("" if there is none: --insecure)."""
    try:
        return (Path(state) / "secrets" / "admin.token").read_text().strip()
    except OSError:
        return ""


def deployment_client(state: str, transport: str = "stream") -> dict[str, Any]:
    """Client settings for a deployment `memstage up` started on `state`: its admin token and TLS
    files (none of them for an insecure one), and the transport it was started with."""
    from memstage.tls import client_certs

    out: dict[str, Any] = {"transport": transport}
    if deployment_token(state):
        out["token"] = deployment_token(state)
    if (Path(state) / "tls" / "ca.pem").exists():
        out.update(client_certs(str(Path(state) / "tls")))
    return out


def deployment_tls(state: str, insecure: bool) -> dict[str, str]:
    """TLS settings of a deployment `memstage up` secures: its CA and certificate under <state>/tls."""
    if insecure:
        return {}
    from memstage.tls import make_deployment_certs

    return make_deployment_certs(str(Path(state) / "tls"))


def client_tls(state: str) -> dict[str, str]:
    """The client TLS settings of a deployment `memstage up` secured (client use only)."""
    from memstage.tls import client_certs

    return client_certs(str(Path(state) / "tls"))


def tls_flags(tls: dict[str, str]) -> list[str]:
    return [arg for name, value in tls.items() for arg in (flag_name(name), value)]


def write_client_settings(state: str, manager: str, tls: dict[str, str] | None = None,
                          transport: str = "stream") -> str:
    """<state>/client.toml (0600): the manager's address, the admin token, the TLS files and the
    transport, for Client(), the CLI and `memstage mount` through MEMSTAGE_CONFIG (or --config)."""
    path = Path(state) / "client.toml"
    token = deployment_token(state)
    lines = ["[client]", f'manager = "{manager}"', f'transport = "{transport}"']
    lines += [f'token = "{token}"'] if token else []
    lines += [f'{name} = "{value}"' for name, value in (tls or {}).items()]
    # Written aside and renamed: whoever sees the file (a script waiting for it) sees all of it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return str(path)


def start_deployment(settings: UpSettings, config: str | None = None, log_level: str = "info"
                     ) -> list[RoleProcess]:
    """Start the manager, then the benefactors; on any failure stop what was started. Each logs at
    `log_level` (the command's --log-level: `--log-level warning` quiets the whole deployment)."""
    if settings.mount and not os.path.isdir(settings.mount):
        raise SettingError(f"--mount: {settings.mount!r} is not a directory")
    state = _mkdir(settings.state, "--state")
    pfs = _mkdir(settings.pfs, "--pfs")
    interval = f"{settings.heartbeat_interval}s"
    extra = [*(["--config", config] if config else []), "--log-level", log_level]
    procs: list[RoleProcess] = []
    tls = tls_flags(deployment_tls(state, settings.insecure))
    try:
        port = settings.metrics_port
        procs.append(spawn("manager", ["--listen", settings.listen, "--state", state, "--heartbeat-interval",
                                       interval, "--persist-every", str(settings.persist_every),
                                       "--keep-versions", str(settings.keep_versions), "--metrics-port", str(port),
                                       "--pfs", pfs, "--sync-interval", f"{settings.sync_interval}s",
                                       # Clients of this machine reach its control port by Unix socket.
                                       "--socket-dir", os.path.join(state, "sockets"),
                                       *(["--insecure"] if settings.insecure else []), *tls, *extra]))
        manager = procs[0].address
        # The manager wrote the cluster secret and an admin token into its state as it started.
        secret = ["--insecure"] if settings.insecure else ["--cluster-secret", os.path.join(state, "secrets",
                                                                                            "cluster.key")]
        for i in range(settings.benefactors):
            # Stable ids: after a restart on the same state, the manager knows at once that what the
            # previous processes held is gone (a new incarnation of the same id).
            procs.append(spawn("benefactor", ["--manager", manager, "--memory", str(settings.memory), "--pfs", pfs,
                                              "--heartbeat-interval", interval, "--id", f"up-{i}",
                                              "--drain-bandwidth", str(settings.drain_bandwidth),
                                              "--stop-timeout", f"{settings.stop_timeout}s",
                                              "--metrics-port", str(port + 1 + i if port else 0), *secret,
                                              # Clients of this machine reach them by Unix socket.
                                              "--socket-dir", os.path.join(state, "sockets"),
                                              "--transport", settings.transport, *tls, *extra]))
        if settings.mount:
            token = deployment_token(state)
            mount_tls = [] if settings.insecure else tls_flags(client_tls(state))
            procs.append(_mount(settings.mount, manager, [*mount_tls, "--transport", settings.transport, *extra],
                                token))
    except BaseException:
        stop_deployment(procs)
        raise
    return procs


def _mount(mountpoint: str, manager: str, extra: list[str], token: str = "") -> RoleProcess:
    """`memstage mount` as a child; it has no ready line, so wait for the mount point to appear.
    The token goes by environment: a command line is visible to every local user (ps)."""
    import subprocess
    import sys
    import time

    path = os.path.abspath(mountpoint)
    env = {**os.environ, "MEMSTAGE_TOKEN": token} if token else None
    proc = subprocess.Popen([sys.executable, "-m", "memstage", "mount", path, "--manager", manager, *extra],
                            start_new_session=True, text=True, env=env)
    deadline = time.monotonic() + 30
    while not os.path.ismount(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise MemstageError(f"--mount: could not mount {path} (see the messages above)")
        time.sleep(0.05)
    return RoleProcess("mount", path, path, proc)


def stop_deployment(procs: list[RoleProcess], drain_timeout: float = 0.0, again: SignalFlag | None = None
                    ) -> None:
    """The mount first, then the benefactors (each drains what is selected for persistence first,
    for up to drain_timeout; `again` set passes a second Ctrl-C on: stop now), the manager last."""
    import signal as signals
    import time

    mounts = [p for p in procs if p.role == "mount"]
    benefactors = [p for p in procs if p.role == "benefactor"]
    for p in mounts:
        p.stop()
    for p in benefactors:
        if p.alive():
            p.proc.send_signal(signals.SIGTERM)
    started = time.monotonic()
    deadline = started + drain_timeout + 30
    told = passed_on = False
    while any(p.alive() for p in benefactors) and time.monotonic() < deadline:
        if not told and time.monotonic() > started + 1:
            print("memstage up: benefactors are draining what is selected for persistence to the PFS before "
                  "they stop (Ctrl-C again to stop now; what is not drained is reported lost)", flush=True)
            told = True
        if again is not None and again.is_set() and not passed_on:
            for p in benefactors:
                if p.alive():
                    p.proc.send_signal(signals.SIGTERM)
            passed_on = True
        time.sleep(0.2)
    for p in [*benefactors, *(p for p in procs if p.role == "manager")]:
        p.stop()


def _prefetch_latest(manager: str, settings: UpSettings) -> None:
    """The restart's checkpoint back in memory before the application reads it; a failure is said,
    not fatal (the checkpoint is still read from the PFS)."""
    from memstage.client import Client

    client = Client(manager=manager, namespace="default", **deployment_client(settings.state))
    try:
        done = client.prefetch("/", latest=True)
    except MemstageError as e:
        print(f"memstage up: prefetch of the latest checkpoint failed ({e}); it is read from the PFS", flush=True)
        return
    finally:
        client.connections.close()
    print(f"memstage up: prefetched the latest checkpoint: {done['files']} files, "
          f"{format_size(int(done['loaded_bytes']))} of {format_size(int(done['bytes']))} in memory"
          + (f" ({done['failed_chunks']} chunks not loaded: {done['error']})" if done["failed_chunks"] else ""),
          flush=True)


def run_up(settings: UpSettings, config: str | None = None, log_level: str = "info") -> int:
    stop, again = SignalFlag(), SignalFlag()  # set by the signal handler: see memstage.signalflag

    def handle(*_: object) -> None:
        if stop.is_set():
            again.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    procs = start_deployment(settings, config, log_level)
    manager = procs[0]
    total = settings.memory * settings.benefactors
    print(f"memstage up: manager on {manager.address}, {settings.benefactors} benefactors donating "
          f"{format_size(settings.memory)} each ({format_size(total)} in all)", flush=True)
    if settings.mount:
        print(f"  staging directory: {os.path.abspath(settings.mount)}", flush=True)
    client_file = write_client_settings(settings.state, manager.address,
                                        {} if settings.insecure else client_tls(settings.state), settings.transport)
    if settings.insecure:
        print("  INSECURE (--insecure): no token or secret is checked; anyone who reaches these ports may read, "
              "write and delete everything", flush=True)
    else:
        print(f"  secured: TLS on every port (CA and certificate in "
              f"{os.path.join(os.path.abspath(settings.state), 'tls')}); clients need a token; the admin token and "
              f"the cluster secret are in {os.path.join(os.path.abspath(settings.state), 'secrets')} (mode 0600)",
              flush=True)
    print(f"  client settings (manager address{'' if settings.insecure else ' and admin token'}): {client_file}",
          flush=True)
    print(f"  try:  export MEMSTAGE_CONFIG={os.path.abspath(client_file)}", flush=True)
    print("        memstage status", flush=True)
    print("        python -c \"from memstage.client import Client; Client().pipe('/hello.txt', b'hi')\"", flush=True)
    if not settings.insecure:
        print("        memstage token create --namespace NS   (a token for one namespace, to give to a job)",
              flush=True)
    print("Ctrl-C stops everything.", flush=True)
    if settings.prefetch_latest:
        _prefetch_latest(manager.address, settings)
    code = 0
    try:
        while not stop.wait(0.5):
            dead = [p for p in procs if not p.alive()]
            if manager in dead:
                log.error("the manager exited (code %s); stopping", manager.proc.returncode)
                code = 1
                break
            for p in dead:
                if p.role == "mount":
                    log.error("the mount of %s exited (code %s)", p.id, p.proc.returncode)
                else:
                    log.error("benefactor %s exited (code %s); its chunks are lost", p.id, p.proc.returncode)
                procs.remove(p)
    finally:
        print("memstage up: stopping ...", flush=True)
        stop_deployment(procs, settings.stop_timeout, again)
    if code:
        raise MemstageError("the manager stopped unexpectedly")
    print("memstage up: stopped", flush=True)
    return 0
