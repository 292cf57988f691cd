"""WakeSender: tells benefactors that orders or drain tasks wait for them (their Wake call).

A benefactor learns of its orders when told, not by polling: ten thousand benefactors holding a
checkpoint's open write sessions would otherwise ask several times a second each. A wake carries
the orders waiting when the manager gave them (the benefactor carries them out and acknowledges
them in its reply, which saves the manager two calls per benefactor and commit: the fetch and its
acknowledgement); the acknowledgements are collected for the manager (take_results). Wakes are sent
without waiting for their answers (a few hundred at once at most), and a wake for a benefactor
already waiting to be woken is replaced by the newer one (whose orders include the older ones'). A
wake that does not arrive costs time, never an order: the orders stay queued at the manager until
acknowledged, and the benefactor's next heartbeat reply says they wait. Channels to the
benefactors woken most recently are kept (a checkpoint wakes the same ones again and again);
older ones are closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import grpc

from memstage import auth
from memstage.proto import benefactor_pb2, benefactor_pb2_grpc
from memstage.receipts import sign_orders
from memstage.rpc import control_channel, with_metadata
from memstage.tls import Tls

log = logging.getLogger(__name__)

IN_FLIGHT = 256
CHANNELS = 256
TIMEOUT_S = 5.0
WARN_EVERY_S = 60.0  # a benefactor that cannot be woken is logged at most this often


# What the manager tells of a benefactor whose work waiting changed: id, incarnation, orders
# waiting, drain tasks waiting, whether it was given work since it was last told (then it is
# woken), the orders waiting as a serialized OrdersReply when it was given orders (else b""), and
# the sequence number of the last order waiting (0: none).
Flags = tuple[str, int, int, bool, bool, bytes, int]
# An acknowledgement in a wake's reply: benefactor, incarnation, epoch, last order carried out.
Ack = tuple[str, int, int, int]


class Wake(NamedTuple):
    benefactor: str
    incarnation: int
    address: str
    orders: bool
    drain: bool
    orders_reply: bytes = b""
    orders_mac: bytes = b""  # receipts.sign_orders under the benefactor's key
    orders_last: int = 0  # the sequence number of the last order waiting


def wake_of(flag: Flags, incarnation: int, address: str, key: bytes) -> Wake | None:
    """The wake for a benefactor's flags, when it runs as `incarnation` at `address` under receipt
    key `key`: only one given work that still waits is woken, with the orders it was given (signed)."""
    bf, flagged, orders, drains, new, orders_reply, last = flag
    if not new or not (orders or drains) or flagged != incarnation:
        return None
    mac = sign_orders(key, orders_reply) if orders_reply else b""
    return Wake(bf, incarnation, address, orders > 0, drains, orders_reply, mac, last)


def merge(had: Wake | None, w: Wake) -> Wake:
    """A wake replacing one still waiting to be sent to the same benefactor: of the same process,
    it tells all the older one told (its pushed orders, when it brings none of its own)."""
    if had is None or had.incarnation != w.incarnation:
        return w
    if not w.orders_reply:
        w = w._replace(orders_reply=had.orders_reply, orders_mac=had.orders_mac)
    return w._replace(orders=w.orders or had.orders, drain=w.drain or had.drain)


class WakeSender:
    def __init__(self, tls: Tls | None, proof: str | Callable[[], str], in_flight: int = IN_FLIGHT,
                 channels: int = CHANNELS, epoch: int = 0) -> None:
        self._tls = tls
        self._epoch = epoch  # the manager process's, which numbered the orders
        self._metadata = ((auth.CLUSTER_HEADER, proof),) if proof else ()
        self._max_in_flight = in_flight
        self._max_channels = channels
        self._pending: dict[str, Wake] = {}
        self._in_flight = 0
        self._cv = threading.Condition()
        self._channels: OrderedDict[str, tuple[grpc.Channel, benefactor_pb2_grpc.BenefactorStub]] = OrderedDict()
        self._warned: dict[str, float] = {}
        self._acks: list[Ack] = []
        self._sent = 0  # since take_results
        self._failed = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="wakes", daemon=True)
        self._thread.start()

    def wake(self, wakes: list[Wake]) -> None:
        """Send these wakes soon (never blocks)."""
        if not wakes:
            return
        with self._cv:
            for w in wakes:
                self._pending[w.benefactor] = merge(self._pending.get(w.benefactor), w)
            self._cv.notify()

    def take_results(self) -> tuple[list[Ack], int, int]:
        """Orders the benefactors acknowledged in their replies since the last call, and the wakes
        that arrived and that failed since then."""
        with self._cv:
            acks, self._acks = self._acks, []
            sent, failed, self._sent, self._failed = self._sent, self._failed, 0, 0
            return acks, sent, failed

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)
        for channel, _ in self._channels.values():
            channel.close()
        self._channels.clear()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (not self._pending or self._in_flight >= self._max_in_flight):
                    self._cv.wait()
                if self._stop:
                    return
                room = self._max_in_flight - self._in_flight
                batch = [self._pending.pop(bf) for bf in list(self._pending)[:room]]
                self._in_flight += len(batch)
            for w in batch:
                try:
                    self._send(w)
                except Exception:  # a bad address must not end the sender
                    log.exception("waking benefactor %s at %s", w.benefactor, w.address)
                    self._done(w, None)

    def _send(self, w: Wake) -> None:
        stub = self._stub(w.address)
        future = stub.Wake.future(benefactor_pb2.WakeRequest(benefactor_id=w.benefactor, incarnation=w.incarnation,
                                                             orders=w.orders, drain=w.drain,
                                                             orders_reply=w.orders_reply, orders_mac=w.orders_mac,
                                                             orders_last=w.orders_last, orders_epoch=self._epoch),
                                  timeout=TIMEOUT_S)
        future.add_done_callback(lambda f: self._done(w, f))

    def _stub(self, address: str) -> benefactor_pb2_grpc.BenefactorStub:
        entry = self._channels.get(address)
        if entry is not None:
            self._channels.move_to_end(address)
            return entry[1]
        if len(self._channels) >= self._max_channels:
            _, (old, _) = self._channels.popitem(last=False)
            old.close()
        channel = control_channel(address, self._tls)
        stub = benefactor_pb2_grpc.BenefactorStub(with_metadata(channel, self._metadata))
        self._channels[address] = (channel, stub)
        return stub

    def _done(self, w: Wake, future: grpc.Future | None) -> None:
        # None: a bug; cancelled: its channel was closed meanwhile.
        error = "not sent" if future is None or future.cancelled() else future.exception()
        with self._cv:
            self._in_flight -= 1
            self._cv.notify()
            if error is None:
                self._sent += 1
                assert future is not None
                reply = future.result()
                if reply.acked:
                    self._acks.append((w.benefactor, w.incarnation, reply.epoch, reply.acked))
                return
            self._failed += 1
            now = time.monotonic()
            if now - self._warned.get(w.benefactor, -WARN_EVERY_S) < WARN_EVERY_S:
                return
            self._warned[w.benefactor] = now
            if len(self._warned) > 4 * self._max_channels:
                self._warned = {bf: t for bf, t in self._warned.items() if now - t < WARN_EVERY_S}
        code = error.code() if isinstance(error, grpc.Call) else error
        log.warning("benefactor %s at %s cannot be woken (%s): its orders and drain tasks wait for its heartbeat "
                    "(the manager must reach the address the benefactor registered)", w.benefactor, w.address, code)
