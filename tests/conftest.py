"""Test fixtures: real memstage processes on loopback, stopped by PID whatever the test does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from memstage.client import Client
from memstage.procs import RoleProcess, spawn

MiB = 1024 * 1024
HEARTBEAT = 0.5  # seconds; dead after 3 missed


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
    _clients: list[Client] = field(default_factory=list)

    @property
    def state(self) -> str:
        return str(self.root / "state")

    def start_manager(self, listen: str = "127.0.0.1:0") -> RoleProcess:
        self.manager = spawn("manager", ["--listen", listen, "--state", self.state,
                                         "--heartbeat-interval", f"{self.heartbeat}s", "--log-level", "warning"])
        self.manager_address = self.manager.address
        return self.manager

    def add_benefactor(self, memory: int = 64 * MiB, *extra: str) -> RoleProcess:
        bf = spawn("benefactor", ["--manager", self.manager_address, "--memory", str(memory), "--pfs",
                                  str(self.root / "pfs"), "--heartbeat-interval", f"{self.heartbeat}s",
                                  "--log-level", "warning", *extra])
        self.benefactors.append(bf)
        wait_for(lambda: bf.id in self.alive_ids(), what=f"benefactor {bf.id} to register")
        return bf

    def restart_manager(self) -> None:
        """SIGKILL the manager and start it again on the same address and state."""
        assert self.manager is not None
        self.manager.kill()
        self.start_manager(self.manager_address)

    def client(self, **settings: object) -> Client:
        settings = {"rpc_timeout": "10s", "full_wait": "1s", **settings}
        c = Client(manager=self.manager_address, **settings)
        self._clients.append(c)
        return c

    def status(self) -> dict[str, object]:
        import json
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-m", "memstage", "status", "--manager", self.manager_address,
                              "--json"], capture_output=True, text=True, timeout=30, check=True)
        return json.loads(out.stdout)

    def alive_ids(self) -> set[str]:
        try:
            return {b["id"] for b in self.status()["benefactors"] if b["alive"]}  # type: ignore[index]
        except Exception:
            return set()

    def stop(self) -> None:
        for c in self._clients:
            c.connections.close()
        for p in [*self.benefactors, *([self.manager] if self.manager else [])]:
            p.stop(timeout=5)


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """local_cluster(benefactors=N, memory=SIZE): a manager and N benefactors, real processes."""
    clusters: list[Cluster] = []

    def make(benefactors: int = 2, memory: int = 64 * MiB, heartbeat: float = HEARTBEAT) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", heartbeat)
        clusters.append(cluster)
        cluster.start_manager()
        for _ in range(benefactors):
            cluster.add_benefactor(memory)
        return cluster

    yield make
    for c in clusters:
        c.stop()


def random_bytes(size: int) -> bytes:
    """Incompressible, never-repeating test data: a misplaced chunk cannot go unnoticed."""
    return os.urandom(size)
