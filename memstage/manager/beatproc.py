"""The manager's heartbeat process: answers benefactors' heartbeats on a port of its own.

Started by the manager (`python -m memstage.manager.beatproc FD`) with one end of a socket pair as
FD. The manager sends its configuration first (where to listen, TLS, the cluster proof), then what
the process must know (see BeatDesk); the process sends back ("ready", port) or ("error", why), then
the beats it answered, every BATCH_SECONDS. It also wakes the benefactors for which the manager
says work waits, with the orders it gives (see wakes), and sends back what they acknowledged, so
that the manager's interpreter spends nothing on calls to benefactors. It exits
when the manager closes its end (or dies), so it never outlives the manager. Being a process of
its own, its answers never wait for the manager's interpreter, whatever a commit storm keeps that
busy with.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from concurrent import futures
from multiprocessing.connection import Connection
from typing import Any

import grpc

from memstage import auth
from memstage.boundary import Authenticator, Boundary, Metadata
from memstage.errors import MemstageError, NotFound
from memstage.manager.beatdesk import Beat, BeatDesk
from memstage.manager.wakes import WakeSender
from memstage.proto import manager_pb2
from memstage.rpc import CONTROL_SERVER_OPTIONS, bind

log = logging.getLogger("memstage.manager.heartbeats")

BATCH_SECONDS = 0.02  # beats go to the manager this often (liveness counts from arrival, not from here)
THREADS = 8


MANAGER_SERVICE = manager_pb2.DESCRIPTOR.services_by_name["Manager"].full_name


def authenticator(secret: bytes) -> Authenticator:
    """The heartbeat port's check: a benefactor's own current cluster proof, for its id alone."""

    def authenticate(method: str, metadata: Metadata, request: Any) -> str:
        return auth.require_proof(
            secret, metadata, lambda who: who == auth.benefactor_role(request.benefactor_id),
            "Heartbeat: only benefactors holding this deployment's cluster secret may call it "
            "(benefactor --cluster-secret)")

    return authenticate


class BeatServicer:
    """Heartbeat only: every other method of the Manager service is UNIMPLEMENTED on this port.
    The boundary has checked the caller's cluster proof."""

    def __init__(self, desk: BeatDesk, lock: threading.Lock, epoch: int = 0) -> None:
        self.desk = desk
        self.lock = lock
        self.epoch = epoch  # the manager process's (its orders are numbered in it)
        self.port = 0

    def Heartbeat(self, request: manager_pb2.HeartbeatRequest, context: grpc.ServicerContext
                  ) -> manager_pb2.HeartbeatReply:
        arrived = time.monotonic()
        s = request.stats
        beat = Beat(request.benefactor_id, request.incarnation, arrived,
                    (s.memory_capacity, s.memory_used, s.drain_backlog, s.chunk_count, s.drain_error,
                     s.drained_bytes), tuple(request.sessions))
        with self.lock:
            answer = self.desk.beat(beat)
        if answer is None:
            raise NotFound(f"heartbeat port: benefactor {request.benefactor_id} is not known here as this process; "
                           "send the heartbeat to the manager's port")
        return manager_pb2.HeartbeatReply(known=True, heartbeat_interval_seconds=answer.interval,
                                          orders_waiting=answer.orders_waiting, drain_waiting=answer.drain_waiting,
                                          heartbeat_port=self.port, orders_last=answer.orders_last,
                                          orders_epoch=self.epoch)


def serve(conn: Connection, config: dict[str, Any]) -> None:
    desk = BeatDesk()
    lock = threading.Lock()
    secret = bytes.fromhex(config["secret"]) if config["secret"] else None
    servicer = BeatServicer(desk, lock, config.get("epoch", 0))
    boundary = Boundary("heartbeat process", authenticator(secret) if secret is not None else None)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=THREADS), options=CONTROL_SERVER_OPTIONS,
                         interceptors=[boundary])
    # Heartbeat alone is registered: gRPC answers any other method UNIMPLEMENTED by itself, without
    # calling into a servicer that would log a traceback for each such call.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(MANAGER_SERVICE, {
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            servicer.Heartbeat, request_deserializer=manager_pb2.HeartbeatRequest.FromString,
            response_serializer=manager_pb2.HeartbeatReply.SerializeToString)}),))
    try:
        address = bind(server, config["listen"], "--heartbeat-listen", config["tls"])
    except MemstageError as e:
        conn.send(("error", str(e)))
        return
    servicer.port = int(address.rpartition(":")[2])
    wakes = WakeSender(config["tls"], auth.RoleProof(secret, auth.MANAGER) if secret is not None else "",
                       epoch=config.get("epoch", 0))
    server.start()
    conn.send(("ready", servicer.port))
    stop = threading.Event()

    def forward() -> None:
        while not stop.wait(BATCH_SECONDS):
            with lock:
                beats = desk.take()
            acks, sent, failed = wakes.take_results()
            try:
                if beats:
                    conn.send(("beats", [tuple(b) for b in beats]))
                if acks or sent or failed:
                    conn.send(("acks", (acks, sent, failed)))
            except OSError:
                break

    forwarder = threading.Thread(target=forward, name="forward", daemon=True)
    forwarder.start()
    try:
        while True:
            kind, body = conn.recv()
            with lock:
                if kind == "known":
                    desk.known(body)
                elif kind == "gone":
                    desk.gone(body)
                elif kind == "flags":
                    wakes.wake(desk.flags(body))
                elif kind == "interval":
                    desk.interval = body
    except (EOFError, OSError):
        pass  # the manager stopped (or died): so does this process
    stop.set()
    wakes.stop()
    server.stop(0).wait()  # at once: a manager started again may want the port


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the manager, which stops this process
    conn = Connection(int(argv[0]))
    config = conn.recv()
    logging.basicConfig(level=config["log_level"], format="%(asctime)s %(levelname)s heartbeats: %(message)s")
    serve(conn, config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
