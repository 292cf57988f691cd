"""Test fixtures: real memstage processes on loopback, stopped by PID whatever the test does."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from memstage.client import Client
from memstage.procs import RoleProcess, spawn

MiB = 1024 * 1024
HEARTBEAT = 0.5  # seconds; dead after 3 missed


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--transport", choices=("stream", "grpc"), default=None,
                     help="how chunk bytes travel in every client, mount and benefactor the tests start "
                          "(default: the settings' default)")


def pytest_configure(config: pytest.Config) -> None:
    # Through the environment, the setting reaches in-process clients and every process started.
    transport = config.getoption("--transport")
    if transport:
        os.environ["MEMSTAGE_TRANSPORT"] = transport


def child_pids(pid: int) -> list[int]:
    """The children of process `pid` (none once it is gone): `memstage up` starts its roles in
    sessions of their own, so a test that kills `up` stops them by these PIDs."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def kill_up(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a `memstage up` still running, with the roles it started: they run in sessions of
    their own, so they are found by PID before `up` goes (then they would be orphans no one can name)."""
    if proc.poll() is not None:
        return
    spawned = child_pids(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in spawned:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll until condition() is truthy; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Cluster:
    root: Path
    heartbeat: float
    manager: RoleProcess | None = None
    benefactors: list[RoleProcess] = field(default_factory=list)
    manager_address: str = ""
    manager_args: tuple[str, ...] = ()
    pfs: Path | None = None  # default: <root>/pfs
    secure: bool = False  # False: --insecure everywhere (today's tests of other things); True: tokens and secret
    tls: dict[str, str] = field(default_factory=dict)  # TLS settings (as `memstage up` makes them), or none
    _clients: list[Client] = field(default_factory=list)
    _status: Any = None  # Connections used by status(), made at the first call
    _logs: list[object] = field(default_factory=list)

    @property
    def state(self) -> str:
        return str(self.root / "state")

    def start_manager(self, listen: str = "127.0.0.1:0") -> RoleProcess:
        self.manager = spawn("manager", ["--listen", listen, "--state", self.state,
                                         "--heartbeat-interval", f"{self.heartbeat}s", "--log-level", "warning",
                                         *([] if self.secure else ["--insecure"]), *self.tls_flags,
                                         *self.manager_args])
        self.manager_address = self.manager.address
        return self.manager

    def add_benefactor(self, memory: int = 64 * MiB, *extra: str, log: Path | None = None) -> RoleProcess:
        """A benefactor process; with `log`, what it says goes to that file (else to the test's output)."""
        out = open(log, "a") if log is not None else None  # noqa: SIM115 (closed with the cluster)
        if out is not None:
            self._logs.append(out)
        bf = spawn("benefactor", ["--manager", self.manager_address, "--memory", str(memory), "--pfs",
                                  str(self.pfs or self.root / "pfs"), "--heartbeat-interval", f"{self.heartbeat}s",
                                  "--log-level", "warning", *self.benefactor_credentials, *self.tls_flags, *extra],
                   stderr=out)
        self.benefactors.append(bf)
        wait_for(lambda: bf.id in self.alive_ids(), what=f"benefactor {bf.id} to register")
        return bf

    @property
    def admin_token(self) -> str:
        """The admin token the manager wrote into its state ("" when insecure)."""
        path = Path(self.state) / "secrets" / "admin.token"
        return path.read_text().strip() if self.secure else ""

    @property
    def tls_flags(self) -> list[str]:
        """The roles' TLS flags (the manager and benefactors: cert.pem)."""
        return [arg for name, value in self.tls.items() for arg in (f"--{name.replace('_', '-')}", value)]

    @property
    def client_tls(self) -> dict[str, str]:
        """A client's TLS settings: client.pem, which cannot serve."""
        from memstage.tls import client_certs

        return client_certs(str(self.root / "tls")) if self.tls else {}

    @property
    def client_tls_flags(self) -> list[str]:
        return [arg for name, value in self.client_tls.items() for arg in (f"--{name.replace('_', '-')}", value)]

    @property
    def secret_file(self) -> str:
        return str(Path(self.state) / "secrets" / "cluster.key")

    @property
    def benefactor_credentials(self) -> list[str]:
        return ["--cluster-secret", self.secret_file] if self.secure else ["--insecure"]

    def restart_manager(self) -> None:
        """SIGKILL the manager and start it again on the same address and state."""
        assert self.manager is not None
        self.manager.kill()
        self.start_manager(self.manager_address)

    def client(self, **settings: object) -> Client:
        settings = {"rpc_timeout": "10s", "full_wait": "1s", **({"token": self.admin_token} if self.secure else {}),
                    **self.client_tls, **settings}
        c = Client(manager=self.manager_address, **settings)
        self._clients.append(c)
        return c

    def status(self) -> dict[str, object]:
        """What `memstage status --json` prints, asked in this process (no interpreter per poll)."""
        from memstage.cli.main import status_json
        from memstage.client.connections import Connections
        from memstage.errors import MemstageError
        from memstage.proto import manager_pb2
        from memstage.tls import load as load_tls

        if self._status is None or self._status.manager_address != self.manager_address:
            tls = load_tls(**{k.removeprefix("tls_"): v for k, v in self.client_tls.items()})
            self._status = Connections(self.manager_address, 10.0, token=self.admin_token, tls=tls)
        try:
            return status_json(self._status.call_manager("Status", manager_pb2.StatusRequest(), "status"))
        except MemstageError:
            # A fresh channel for the next poll: a failed one waits out gRPC's reconnect backoff
            # (a manager restarting would look down for seconds longer than it is).
            self._status.close()
            self._status = None
            raise

    def alive_ids(self) -> set[str]:
        from memstage.errors import Unavailable

        try:
            return {b["id"] for b in self.status()["benefactors"] if b["alive"]}  # type: ignore[index]
        except Unavailable:  # the manager is not up (yet, or again)
            return set()

    def stop(self) -> None:
        for c in self._clients:
            c.connections.close()
        if self._status is not None:
            self._status.close()
        # Benefactors stop together (each says goodbye to the manager), then the manager.
        for p in self.benefactors:
            p.terminate()
        for p in [*self.benefactors, *([self.manager] if self.manager else [])]:
            p.stop(timeout=5)
        for out in self._logs:
            out.close()  # type: ignore[attr-defined]

    def memory_used(self) -> int:
        """Donated memory in use on live benefactors, as the manager reports it."""
        return sum(b["memory_used"] for b in self.status()["benefactors"] if b["alive"])  # type: ignore[index,misc]


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """local_cluster(benefactors=N, memory=SIZE): a manager and N benefactors, real processes."""
    clusters: list[Cluster] = []

    def make(benefactors: int = 2, memory: int = 64 * MiB, heartbeat: float = HEARTBEAT,
             manager_args: tuple[str, ...] = (), pfs: Path | None = None, secure: bool = False,
             tls: bool = False) -> Cluster:
        from memstage.tls import make_deployment_certs

        root = tmp_path / f"cluster{len(clusters)}"
        cluster = Cluster(root, heartbeat, manager_args=manager_args, pfs=pfs, secure=secure,
                          tls=make_deployment_certs(str(root / "tls")) if tls else {})
        clusters.append(cluster)
        cluster.start_manager()
        for _ in range(benefactors):
            cluster.add_benefactor(memory)
        return cluster

    yield make
    for c in clusters:
        c.stop()


class ServicerContext:
    """What a socket-free call of a gRPC servicer needs of its context: an abort raises
    RuntimeError("CODE: details")."""

    def abort(self, code, details):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"{code.name}: {details}")

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def peer(self) -> str:
        return "test"


def free_port() -> int:
    """A loopback port free now (for a process told to listen on it), below the kernel's ephemeral
    range: a port the kernel hands out there (bind to 0, or any outgoing connection of a test
    running alongside) could be taken before the process binds it, as it once was ("Address
    already in use")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def rpc_calls(port: int, context: ssl.SSLContext | None = None) -> dict[str, float]:
    """Calls the manager answered, per method, from its /metrics on `port` (https with a context)."""
    scheme = "https" if context is not None else "http"
    text = urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics", context=context, timeout=10).read().decode()
    return {m: float(v) for m, v in re.findall(r'memstage_rpc_calls_total\{method="(\w+)"\} (\S+)', text)}


def metric(port: int, name: str, context: ssl.SSLContext | None = None, **labels: str) -> float:
    """One sample of the manager's /metrics on `port` (0 when it has none yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    scheme = "https" if context is not None else "http"
    text = urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics", context=context, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def random_bytes(size: int) -> bytes:
    """Incompressible, never-repeating test data: a misplaced chunk cannot go unnoticed."""
    return os.urandom(size)


@pytest.fixture
def mounted(local_cluster, tmp_path):
    """mounted(benefactors, memory) -> (mountpoint, cluster, mount process): a real FUSE mount."""
    if not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (Debian's fuse3)")
    mounts = []

    def make(benefactors: int = 2, memory: int = 192 * MiB, cluster: Cluster | None = None, *extra: str,
             point: Path | None = None):
        cluster = cluster or local_cluster(benefactors=benefactors, memory=memory)
        if point is None:
            point = tmp_path / f"mnt{len(mounts)}"
            point.mkdir()
        token = ["--token", cluster.admin_token] if cluster.secure else []
        proc = subprocess.Popen([sys.executable, "-m", "memstage", "mount", str(point), "--manager",
                                 cluster.manager_address, "--full-wait", "1s", "--log-level", "warning", *token,
                                 *cluster.client_tls_flags, *extra])
        mounts.append((point, proc))
        wait_for(lambda: os.path.ismount(point) or proc.poll() is not None, what="the mount")
        assert proc.poll() is None, "memstage mount exited"
        return point, cluster, proc

    yield make
    for point, proc in mounts:
        if listed_mount(point):
            subprocess.run(["fusermount3", "-u", str(point)], check=False)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-uz", str(point)], check=False)
            proc.kill()
            proc.wait()
        if listed_mount(point):  # its process died under it: the kernel still lists it
            subprocess.run(["fusermount3", "-uz", str(point)], check=False)


def listed_mount(point: Path | str) -> bool:
    """Whether the kernel lists a mount at `point`: unlike os.path.ismount, also one whose FUSE
    process is gone (it answers ENOTCONN)."""
    return f" {point} " in Path("/proc/mounts").read_text()


@pytest.fixture
def inproc_cluster(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """inproc_cluster(benefactors=N, heartbeat=S, session_lease=S): a manager and N benefactors as
    servers in this process, timed by one ManualClock (see tests/inproc.py); stopped at the end."""
    from inproc import InprocCluster

    clusters: list[InprocCluster] = []

    def make(**kwargs: Any) -> InprocCluster:
        cluster = InprocCluster(tmp_path / f"inproc{len(clusters)}", **kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    for c in clusters:
        c.stop()
