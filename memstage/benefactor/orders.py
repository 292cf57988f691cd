"""OrderLoop: the benefactor carries out the manager's orders (session ends, holds, releases, frees,
copies of chunks from other benefactors for replicas and rebuild, and Reed-Solomon stripe members
computed from other members: new parity, or a member rebuilt after a loss).

The manager is the only one who decides that a chunk may go. Its orders wait in a per-benefactor
queue at the manager; this loop fetches them, applies them in sequence to the
ChunkStore and acknowledges them with the next fetch, so an order whose reply was lost is simply
fetched again (each is idempotent). An idle loop does not poll: the manager wakes it when orders
wait (see Waker), and mostly pushes the orders with the wake, acknowledged in its reply (deliver).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import grpc

from memstage.benefactor.inbox import Inbox
from memstage.benefactor.store import ChunkStore
from memstage.benefactor.waker import Waker
from memstage.chunks import HASH_BYTES, HELD_PACKED, ChunkKey
from memstage.clock import SYSTEM_CLOCK, Clock
from memstage.paths import split_drained
from memstage.peers import Peers, proof_credentials
from memstage.proto import common_pb2, manager_pb2, manager_pb2_grpc
from memstage.rpc import CONTROL_TIMEOUT_S
from memstage.streamtransport import transport_for
from memstage.stripes import StripeUnavailable, build_member, encode_parity
from memstage.tls import Tls
from memstage.transport import ChunkUnavailable

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between fetches while the queue is empty
COPY_WORKERS = 4  # copies and stripe members made at once (each mostly waits on other benefactors)


def apply_order(store: ChunkStore, order: manager_pb2.Order) -> int:
    """Carry out one order; returns the bytes of donation it gave back."""
    ns = order.namespace
    if order.hold:
        store.hold(((ns, ChunkKey.from_pb(h.key)), h.gen) for h in order.hold)
    if order.hold_packed:
        store.hold(((ns, ChunkKey(h, n)), gen) for h, n, gen in HELD_PACKED.iter_unpack(order.hold_packed))
    if order.hold_hashes:
        hashes, length, gen = order.hold_hashes, order.hold_length, order.hold_gen
        store.hold(((ns, ChunkKey(hashes[at:at + HASH_BYTES], length)), gen)
                   for at in range(0, len(hashes), HASH_BYTES))
    freed = 0
    if order.release:
        freed += store.unpin(order.session, [(ns, ChunkKey.from_pb(k)) for k in order.release])
    if order.end_session:
        freed += store.end_session(order.session)
    if order.free:
        freed += store.free(((ns, ChunkKey.from_pb(h.key)), h.gen) for h in order.free)
    return freed


def _no_pfs(drained: str, key: ChunkKey) -> bytes:
    raise FileNotFoundError("this benefactor has no PFS directory")


class OrderLoop:
    def __init__(self, store: ChunkStore, benefactor_id: str, incarnation: int,
                 stub: manager_pb2_grpc.ManagerStub, address: str = "", cluster_proof: str | Callable[[], str] = "",
                 tls: Tls | None = None, ceiling: Callable[[], float] = lambda: POLL,
                 on_hold: Callable[[], None] = lambda: None,
                 read_drained: Callable[[str, ChunkKey], bytes] | None = None, transport: str = "grpc",
                 on_revoked: Callable[[list[str]], None] = lambda tokens: None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self._on_revoked = on_revoked  # the manager revoked tokens: their grants are refused here
        self._read_drained = read_drained or _no_pfs
        # Idle, it waits to be told (the manager's Wake, or a heartbeat reply) rather than polling.
        self.waker = Waker(POLL, ceiling, clock)
        self._on_hold = on_hold  # chunks held for a committed version: their drain tasks are likely queued
        # Members on the PFS are read through this benefactor's own ReadDrained.
        self._readers = [common_pb2.Location(benefactor_id=benefactor_id, address=address)] if address else []
        self.id = benefactor_id
        self.incarnation = incarnation
        self._stub = stub
        self.inbox = Inbox()  # the manager process's epoch and the last order carried out
        self._copied: list[manager_pb2.CopyResult] = []  # copy orders done, reported with the next fetch
        self._copying: list[Future[manager_pb2.CopyResult | list[manager_pb2.CopyResult]]] = []
        self._pool = ThreadPoolExecutor(max_workers=COPY_WORKERS, thread_name_prefix="copy")
        # Copies are fetched from other benefactors the way clients read them.
        self._transport = transport_for(transport, Peers(CONTROL_TIMEOUT_S, tls, proof_credentials(cluster_proof)))
        self._lock = threading.Lock()  # the sequence of orders carried out (inbox, _copying)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orders", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.waker.wake()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._transport.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                got = self.fetch_and_apply()
            except grpc.RpcError:
                got = 0  # the heartbeat logs manager outages
            except Exception:  # a bug must not end the loop: the orders stay queued at the manager
                log.exception("carrying out the manager's orders failed")
                got = 0
            if got:
                self.waker.worked()
            elif self._copying:  # report a finished copy as soon as it is done
                wait(self._copying, timeout=POLL, return_when=FIRST_COMPLETED)
            else:
                self.waker.idle()

    def fetch_and_apply(self) -> int:
        """Fetch the next orders (reporting the copies finished since), carry them out; copies and
        stripe members are made on a few threads meanwhile. Returns how much happened."""
        with self._lock:
            finished = [f for f in self._copying if f.done()]
            self._copying = [f for f in self._copying if not f.done()]
        for f in finished:
            if f.exception() is None:
                done = f.result()
                self._copied.extend(done if isinstance(done, list) else [done])
            else:  # a bug: the manager's deadline plans the work again
                log.error("a copy failed: %r", f.exception())
        reported = len(self._copied)
        with self._lock:
            epoch, acked = self.inbox.ack()
        reply = self._stub.Orders(manager_pb2.OrdersRequest(benefactor_id=self.id, incarnation=self.incarnation,
                                                            acked=acked, epoch=epoch,
                                                            memory_used=self.store.used, copied=self._copied),
                                  timeout=CONTROL_TIMEOUT_S)
        self._copied = []  # delivered (kept for the next fetch when the call failed)
        return self._carry_out(reply, pushed=False) + reported

    def deliver(self, reply: manager_pb2.OrdersReply) -> tuple[int, int]:
        """Orders the manager pushed with a wake (a reply to Orders it did not wait for): carried
        out as fetched ones are, if they follow on from what was done here. Returns (epoch, last
        order carried out) to acknowledge them."""
        self._carry_out(reply, pushed=True)
        with self._lock:
            epoch, acked = self.inbox.ack()
            fetch = self.inbox.fetch_after_push([o.seq for o in reply.orders], bool(self._copying))
        if fetch:
            self.waker.wake()
        return epoch, acked

    def told(self, epoch: int, last: int) -> bool:
        """A heartbeat reply says orders wait, the last numbered `last` by manager process `epoch`
        (0: not said): the loop looks now, unless that order was carried out here already (a wake
        brought it and its acknowledgement is on its way; should that be lost, the idle loop's next
        look acknowledges it). Returns whether the loop was woken."""
        with self._lock:
            fetch = self.inbox.fetch_when_told(epoch, last)
        if fetch:
            self.waker.wake()
        return fetch

    def _carry_out(self, reply: manager_pb2.OrdersReply, pushed: bool) -> int:
        """Carry out the orders of a reply in sequence, skipping those already done; copies and
        stripe members are made on the pool. Returns the number of orders in the reply. Pushed
        orders are carried out only in this loop's epoch (a wake from a manager process that has
        since stopped must not turn it back) and only where they follow on from the last done."""
        freed = 0
        held = False
        with self._lock:  # fetched and pushed orders arrive on two threads: one at a time, in sequence
            for at in self.inbox.plan(reply.epoch, [o.seq for o in reply.orders], pushed):
                order = reply.orders[at]
                freed += apply_order(self.store, order)
                if order.revoked_tokens:
                    self._on_revoked(list(order.revoked_tokens))
                held = held or bool(order.hold_packed or order.hold or order.hold_hashes)
                for copy in order.copy:
                    work = (self._encode if copy.ship else self._build) if copy.HasField("stripe") else self._copy
                    self._copying.append(self._pool.submit(work, order.namespace, copy))
                self.inbox.applied(order.seq)
        if freed:
            log.debug("freed %d bytes on the manager's orders", freed)
        if held:
            self._on_hold()
        return len(reply.orders)

    def _copy(self, namespace: str, order: manager_pb2.CopyOrder) -> manager_pb2.CopyResult:
        """Fetch a chunk from another benefactor (or, for a prefetch, read its chunk file on the PFS),
        verify it, and hold it at the order's generation."""
        key = ChunkKey.from_pb(order.key)
        source = f"the PFS ({order.drained})" if order.drained else order.source_id
        result = manager_pb2.CopyResult(namespace=namespace, key=order.key, gen=order.gen, loaded=bool(order.drained))
        ident = (namespace, key)
        if self.store.has(ident):
            self.store.hold([(ident, order.gen)])
            return result
        data: bytes | memoryview
        try:
            if order.drained:
                if split_drained(order.drained)[0] != namespace:
                    raise PermissionError(f"{order.drained} is not in namespace {namespace}")
                data = self._read_drained(order.drained, key)
            else:
                data = self._transport.get(order.source_address, namespace, key)
        except Exception as e:  # unreachable, gone: the manager plans the copy again elsewhere
            result.error = f"fetching it from {source}: {e}"
            return result
        if not key.matches(data):
            result.error = f"the copy from {source} does not match its hash"
        elif not self.store.store_copy(ident, data, order.gen):
            result.error = "no room for it here"
        return result

    def _encode(self, namespace: str, order: manager_pb2.CopyOrder) -> list[manager_pb2.CopyResult]:
        """New parity: every parity member of the stripe from one fetch of its data members; this
        benefactor's own is held here, the others are handed to the benefactors the order names."""
        spec = order.stripe
        own = manager_pb2.CopyResult(namespace=namespace, gen=order.gen, stripe=spec.id, index=spec.index)
        shipped = [manager_pb2.CopyResult(namespace=namespace, gen=s.gen, stripe=spec.id, index=s.index,
                                          holder=s.benefactor_id) for s in order.ship]
        results = [own, *shipped]
        try:
            parity, cpu = encode_parity(self._transport, namespace, spec, self._readers)
        except (StripeUnavailable, ValueError) as e:
            for r in results:
                r.error = str(e)
            return results
        except Exception as e:  # a codec failure must not stop the order loop
            log.exception("stripe %d parity", spec.id)
            for r in results:
                r.error = f"computing it failed: {e}"
            return results
        own.cpu_seconds = cpu
        for result in results:
            data = parity[result.index - spec.k]
            key = ChunkKey.of(data)
            result.key.CopyFrom(key.to_pb())
            if result is own:
                if not self.store.store_copy((namespace, key), data, order.gen):
                    result.error = "no room for it here"
                continue
            ship = order.ship[shipped.index(result)]
            try:
                self._transport.hold(ship.address, namespace, key, ship.gen, data)
            except ChunkUnavailable as e:
                result.error = f"handing it to {ship.benefactor_id}: {e}"
        return results

    def _build(self, namespace: str, order: manager_pb2.CopyOrder) -> manager_pb2.CopyResult:
        """Compute a stripe member from the others, verify it (a rebuilt one against its key), and
        hold it at the order's generation."""
        spec = order.stripe
        result = manager_pb2.CopyResult(namespace=namespace, key=order.key, gen=order.gen, stripe=spec.id,
                                        index=spec.index)
        known = ChunkKey.from_pb(order.key) if order.key.hash else None
        if known is not None and self.store.has((namespace, known)):
            self.store.hold([((namespace, known), order.gen)])
            return result
        try:
            data, cpu = build_member(self._transport, namespace, spec, self._readers)
        except (StripeUnavailable, ValueError) as e:
            result.error = str(e)
            return result
        except Exception as e:  # a codec failure must not stop the order loop
            log.exception("stripe %d member %d", spec.id, spec.index)
            result.error = f"computing it failed: {e}"
            return result
        result.cpu_seconds = cpu
        key = ChunkKey.of(data)
        if known is not None and key != known:
            result.error = "the rebuilt member does not match its hash"
            return result
        result.key.CopyFrom(key.to_pb())
        if not self.store.store_copy((namespace, key), data, order.gen):
            result.error = "no room for it here"
        return result
