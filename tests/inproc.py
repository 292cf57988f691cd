"""An in-process cluster: the real manager and benefactor gRPC servers and servicers, on
127.0.0.1:0 in the test's own process, all timed by one ManualClock, with clients connected to
them. Timing tests advance the clock instead of sleeping: a lease or a TTL runs out when told,
and calls are counted per second of clock time, however loaded the machine is.

The heartbeat process (a process of its own, on real time) is off: the manager answers
heartbeats itself. Faults that need real processes (SIGKILL, SIGSTOP) stay with local_cluster."""

from __future__ import annotations

import gc
from pathlib import Path

from conftest import MiB, wait_for

from memstage.benefactor.server import BenefactorServer
from memstage.client import Client
from memstage.clock import ManualClock
from memstage.manager.server import ManagerServer
from memstage.settings import BenefactorSettings, ManagerSettings


class InprocCluster:
    def __init__(self, root: Path, benefactors: int = 2, memory: int = 64 * MiB, heartbeat: float = 2.0,
                 session_lease: float = 30.0) -> None:
        self.root = root
        self.clock = ManualClock()
        self.heartbeat = heartbeat
        self.memory = memory
        self._gc = gc.get_threshold()  # the manager tunes the collector for its process: given back at stop
        self.manager = ManagerServer(ManagerSettings(
            listen="127.0.0.1:0", state=str(root / "state"), heartbeat_interval=heartbeat, heartbeat_listen="off",
            session_lease=session_lease, insecure=True), self.clock)
        self.manager.start()
        self.benefactors: list[BenefactorServer] = []
        self.clients: list[Client] = []
        self._stopped: set[str] = set()
        try:
            for _ in range(benefactors):
                self.add_benefactor()
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return self.manager.address

    def add_benefactor(self) -> BenefactorServer:
        bf = BenefactorServer(BenefactorSettings(
            manager=self.address, listen="127.0.0.1:0", memory=self.memory, pfs=str(self.root / "pfs"),
            heartbeat_interval=self.heartbeat, insecure=True), self.clock)
        self.benefactors.append(bf)
        bf.start()
        wait_for(lambda: bf.id in self.alive_ids(), what=f"benefactor {bf.id} to register")
        return bf

    def stop_benefactor(self, bf: BenefactorServer) -> None:
        """Its threads and server end (as if it died: it does not leave the deployment)."""
        bf.stop(grace=0)
        self._stopped.add(bf.id)

    def client(self, **settings: object) -> Client:
        c = Client(manager=self.address, **{"rpc_timeout": "10s", "full_wait": "1s", **settings})
        c._lease_clock = self.clock  # its renewals keep the manager's time
        self.clients.append(c)
        return c

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Move the clock on by `seconds`, `step` at a time; after each step, what it caused is done
        (the loops it woke are waiting again). Steps stay below the heartbeat period: a larger leap
        looks to the manager as if it could not run (see ManagerServer._housekeeping)."""
        assert step < self.heartbeat
        left = seconds
        while left > 1e-9:
            self.clock.advance(min(step, left))
            left -= step
            self.clock.settle()

    def calls(self, methods: str = "Orders|DrainWork") -> int:
        """Calls of these methods the manager answered (its /metrics counter, read in-process)."""
        registry = self.manager.registry
        return int(sum(registry.get_sample_value("memstage_rpc_calls_total", {"method": m}) or 0.0
                       for m in methods.split("|")))

    def alive_ids(self) -> set[str]:
        service = self.manager.service
        return {b.id for b in service.status.reply().benefactors if b.alive}

    def memory_used(self) -> int:
        return sum(b.stats.memory_used for b in self.manager.service.status.reply().benefactors if b.alive)

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        for bf in self.benefactors:
            if bf.id not in self._stopped:
                bf.stop(grace=0)
        self.manager.stop(grace=0)
        gc.unfreeze()
        gc.set_threshold(*self._gc)
