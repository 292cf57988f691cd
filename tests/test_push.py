"""Work is pushed to benefactors, not polled for: the manager wakes a benefactor when work waits
for it (the timing of it, on a manual clock, is in test_timing.py)."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.request

import pytest
from conftest import MiB, free_port, random_bytes, wait_for
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from memstage.benefactor.waker import Waker

pytestmark = pytest.mark.timeout(120)


def test_an_idle_loop_backs_off_to_its_ceiling_and_a_wake_ends_the_wait():
    waker = Waker(0.01, lambda: 0.04)
    waits = [waker.idle() for _ in range(5)]
    assert waits == [0.01, 0.02, 0.04, 0.04, 0.04]
    waker.worked()
    assert waker.idle() == 0.01
    waker = Waker(0.01, lambda: 30.0)
    for _ in range(4):
        waker.idle()  # backed off to 0.16 s
    threading.Timer(0.02, waker.wake).start()
    started = time.monotonic()
    waker.idle()
    assert time.monotonic() - started < 0.15, "a wake ends the wait"
    assert waker.idle() == 0.01, "woken: the next wait starts over"


def _metric(port: int, context: ssl.SSLContext, name: str) -> float:
    text = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_the_heartbeat_process_wakes_a_benefactor_over_tls_with_the_cluster_secret(local_cluster):
    """As deployed: the manager's heartbeat process (a process of its own, on real time) sends the
    wakes, over TLS with the cluster secret, and a commit is drained. That an idle benefactor does
    not poll and that the wake alone brings the drain is timed on a manual clock in test_timing.py."""
    port = free_port()
    cluster = local_cluster(benefactors=1, heartbeat=2.0, secure=True, tls=True,
                            manager_args=("--metrics-port", str(port)))
    context = ssl.create_default_context(cafile=cluster.tls["tls_ca"])
    context.check_hostname = False  # the certificate names the deployment, not this address
    context.load_cert_chain(cluster.tls["tls_cert"], cluster.tls["tls_key"])
    client = cluster.client()
    client.pipe("/warm", random_bytes(MiB))
    wait_for(lambda: client.versions("/warm")[0]["persisted"], timeout=10, what="the first drain")
    # While its loops still look every few tenths of a second they may find the work before a wake
    # comes: wait until they have backed off (no look for 1.5 s), so that the wake brings the drain.
    looks = [-1, time.monotonic()]

    def backed_off() -> bool:
        now = _metric(port, context, 'memstage_rpc_calls_total{method="DrainWork"}') + _metric(
            port, context, 'memstage_rpc_calls_total{method="Orders"}')
        if now != looks[0]:
            looks[:] = [now, time.monotonic()]
        return time.monotonic() - looks[1] > 1.5

    wait_for(backed_off, timeout=30, what="the benefactor's loops to back off")
    client.pipe("/ckpt", random_bytes(2 * MiB))
    wait_for(lambda: client.versions("/ckpt")[0]["persisted"], timeout=10, what="the drain of /ckpt")
    wait_for(lambda: _metric(port, context, 'memstage_benefactor_wakes_total{result="sent"}') >= 1, timeout=10,
             what="the wakes to show in the manager's /metrics")
    assert _metric(port, context, 'memstage_benefactor_wakes_total{result="failed"}') == 0


def test_only_the_manager_may_wake_a_benefactor_and_only_it_may_give_orders(local_cluster):
    """Wake needs the cluster secret (a client's grant does not do); a wake for another process
    that had the same id is ignored; and orders in a wake are carried out only under the MAC of
    the key the benefactor gave the manager (the cluster secret, which every benefactor holds,
    does not let one order another to free its chunks)."""
    import sqlite3

    import grpc

    from memstage import auth
    from memstage.chunks import ChunkKey
    from memstage.proto import benefactor_pb2, benefactor_pb2_grpc, manager_pb2

    cluster = local_cluster(benefactors=1, secure=True)
    bf = cluster.benefactors[0]
    client = cluster.client()
    data = random_bytes(MiB)
    client.pipe("/kept", data)
    with sqlite3.connect(f"file:{cluster.state}/manager.sqlite3?mode=ro", uri=True) as db:
        (incarnation,) = db.execute("SELECT incarnation FROM benefactors WHERE id = ?", (bf.id,)).fetchone()
    key = ChunkKey.of(data).to_pb()
    forged = manager_pb2.OrdersReply(known=True, epoch=1, orders=[
        manager_pb2.Order(seq=1, namespace="default", free=[manager_pb2.HeldChunk(key=key, gen=g) for g in range(8)])])
    with grpc.insecure_channel(bf.address) as channel:
        stub = benefactor_pb2_grpc.BenefactorStub(channel)
        request = benefactor_pb2.WakeRequest(benefactor_id=bf.id, incarnation=1, orders=True)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Wake(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        secret = auth.read_secret_file(cluster.secret_file, "secret")
        proof = ((auth.CLUSTER_HEADER, auth.role_proof(secret, auth.MANAGER)),)  # a secret holder's
        reply = stub.Wake(request, metadata=proof, timeout=10)
        assert not reply.known  # incarnation 1 is not this process (a random 63-bit number)
        reply = stub.Wake(benefactor_pb2.WakeRequest(
            benefactor_id=bf.id, incarnation=incarnation, orders=True, orders_reply=forged.SerializeToString(),
            orders_mac=b"\0" * 16), metadata=proof, timeout=10)
        assert reply.known and reply.acked == 0, "forged orders were carried out"
    assert client.cat("/kept") == data
class _ManagerEnd:
    """The manager's side of Orders for one benefactor, over its real OrderQueues (no sockets)."""

    def __init__(self, queues, epoch: int = 5) -> None:
        self.queues = queues
        self.epoch = epoch

    def batch(self):
        from memstage.proto import manager_pb2

        return manager_pb2.OrdersReply(known=True, epoch=self.epoch, orders=self.queues.take("bf", 0))

    def Orders(self, request, timeout=None):  # noqa: N802 (the stub's method)
        from memstage.proto import manager_pb2

        acked = request.acked if request.epoch == self.epoch else 0
        return manager_pb2.OrdersReply(known=True, epoch=self.epoch, orders=self.queues.take("bf", acked))


class PushedAndFetchedOrders(RuleBasedStateMachine):
    """Orders reach a benefactor in wakes (maybe late, maybe their acknowledgement lost) and in
    fetches, in any interleaving: each is carried out once, in sequence, and a final fetch leaves
    nothing behind."""

    def __init__(self) -> None:
        super().__init__()
        import memstage.benefactor.orders as orders_module
        from memstage.benefactor.orders import OrderLoop
        from memstage.benefactor.store import ChunkStore
        from memstage.manager.orders import OrderQueues

        self.module = orders_module
        self.real_apply = orders_module.apply_order
        self.done: list[int] = []
        orders_module.apply_order = lambda store, order: self.done.append(order.seq) or 0
        self.manager = _ManagerEnd(OrderQueues())
        self.loop = OrderLoop(ChunkStore(capacity=1 << 20, prefault=False), "bf", 1, self.manager)  # type: ignore[arg-type]
        self.queued = 0
        self.wakes: list[object] = []  # batches on their way, in any order

    def teardown(self) -> None:
        self.module.apply_order = self.real_apply
        self.loop.stop()

    @rule()
    def queue(self):
        self.queued += 1
        self.manager.queues.push("bf", "", session=self.queued, end_session=True)
        self.wakes.append(self.manager.batch())  # the wake for it, with what waits

    @rule(data=st.data(), ack_lost=st.booleans())
    def a_wake_arrives(self, data, ack_lost):
        if not self.wakes:
            return
        batch = self.wakes.pop(data.draw(st.integers(0, len(self.wakes) - 1)))
        epoch, acked = self.loop.deliver(batch)
        if not ack_lost and epoch == self.manager.epoch:
            self.manager.queues.take("bf", acked)

    @rule()
    def a_wake_missing_earlier_orders_arrives(self):
        """Never sent as such (a wake brings every order waiting), but should one arrive: nothing
        is carried out out of sequence, and the loop is told to fetch."""
        batch = self.manager.batch()
        if not batch.orders or batch.orders[-1].seq <= self.loop.inbox.acked + 1:
            return
        del batch.orders[:-1]
        self.loop.waker._event.clear()
        self.loop.deliver(batch)
        assert self.loop.waker._event.is_set(), "the loop was not told to fetch what is missing"

    @rule()
    def a_late_wake_of_a_stopped_manager_process_arrives(self):
        """It must not turn the loop back to that process's numbering (its orders are void). (A
        loop that has heard of no manager process yet takes it: those orders were meant for it.)"""
        from memstage.proto import manager_pb2

        if not self.loop.inbox.epoch:
            return

        stale = manager_pb2.OrdersReply(known=True, epoch=self.manager.epoch + 1, orders=[
            manager_pb2.Order(seq=s, end_session=True, session=900 + s) for s in range(1, 4)])
        done = list(self.done)
        epoch, _ = self.loop.deliver(stale)
        assert self.done == done and epoch == self.manager.epoch

    @rule(restarted=st.booleans())
    def a_heartbeat_reply_says_orders_wait(self, restarted):
        """It names the last order waiting: the loop fetches unless that one was carried out here
        (a wake brought it, its acknowledgement still on its way), or the orders are another
        manager process's."""
        last = self.manager.queues.last("bf")
        if not last:
            return
        self.loop.waker._event.clear()
        epoch = self.manager.epoch + 1 if restarted else self.manager.epoch
        woken = self.loop.told(epoch, last)
        assert woken == (restarted or last > max(self.done, default=0))
        assert self.loop.waker._event.is_set() == woken

    @rule()
    def fetch(self):
        self.loop.fetch_and_apply()

    @invariant()
    def each_once_in_sequence(self):
        assert self.done == list(range(1, len(self.done) + 1))

    @rule()
    def all_fetched(self):
        while self.loop.fetch_and_apply():
            pass
        assert self.done == list(range(1, self.queued + 1))
        assert self.manager.queues.waiting("bf") == 0


TestPushedAndFetchedOrders = PushedAndFetchedOrders.TestCase
TestPushedAndFetchedOrders.settings = settings(max_examples=150, stateful_step_count=25, deadline=None)
