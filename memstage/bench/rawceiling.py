"""Transport ceilings below gRPC: raw TCP and TLS 1.3 over loopback, no memstage code on the path.

A sink process accepts connections and serves each on a thread of its own: it reads frames (an
8-byte length, then the chunk) with recv_into straight into an mmap arena reused round-robin,
hashes each chunk in place (xxh3_128, as a benefactor hashes what it stores) and acknowledges it
with 8 bytes of that hash. A client pushes its buffer over STREAMS connections as chunks sliced
from that buffer, hashing each before it sends it, with at most WINDOW chunks unacknowledged per
connection. With TLS (1.3, mutual: the sink requires a client certificate), the same through
Python's ssl, which cannot sendmsg (a frame is two sendall calls) and whose recv_into returns one
TLS record (16 KiB) at most: the sink takes the GIL some 64 times per chunk, which makes this
ceiling sensitive to a busy machine.

`python -m memstage.bench.rawceiling serve [--tls CERTDIR]` runs the sink until its stdin closes
and prints its address first; push() is the client.
"""

from __future__ import annotations

import argparse
import mmap
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence

import xxhash

STREAMS = 2  # connections per client
WINDOW = 8  # chunks a stream may have unacknowledged
ARENA_SLOTS = 4  # chunks a connection's arena holds
HEADER = 8  # the length prefix of a frame
ACK = 8  # bytes of the chunk's hash the sink sends back


# -- both ends ----------------------------------------------------------------------------------

def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill `view` from the socket; False if the peer closed before its first byte."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return False
            raise ConnectionError(f"peer closed after {got} of {len(view)} bytes")
        got += n
    return True


def _no_delay(sock: socket.socket) -> socket.socket:
    # Acks and TLS length records are small: Nagle would hold them back behind unacknowledged data.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- the sink -----------------------------------------------------------------------------------

def _server_context(folder: str) -> ssl.SSLContext:
    from memstage.tls import make_deployment_certs

    paths = make_deployment_certs(folder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(paths["tls_cert"], paths["tls_key"])
    ctx.load_verify_locations(paths["tls_ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _sink_connection(conn: socket.socket, context: ssl.SSLContext | None, slot_size: int) -> None:
    try:
        if context is not None:
            conn = context.wrap_socket(conn, server_side=True)  # the handshake, on this thread
        # Populated up front: page faults are not the transport's cost. Reused round-robin, so the
        # next chunk lands in memory the last one did not just warm, as in a benefactor's arena.
        arena = mmap.mmap(-1, slot_size * ARENA_SLOTS,
                          flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0))
        slots = memoryview(arena)
        header = memoryview(bytearray(HEADER))
        received = 0
        while _recv_exact(conn, header):
            length = int.from_bytes(header, "big")
            if length > slot_size:
                raise ConnectionError(f"a frame of {length} bytes is larger than the sink's {slot_size}")
            start = (received % ARENA_SLOTS) * slot_size
            chunk = slots[start : start + length]
            if not _recv_exact(conn, chunk):
                raise ConnectionError("peer closed between a frame's length and its bytes")
            conn.sendall(xxhash.xxh3_128_digest(chunk)[:ACK])
            received += 1
    except OSError as e:  # ConnectionError and ssl.SSLError among them
        print(f"rawceiling sink: {e}", file=sys.stderr, flush=True)
    finally:
        conn.close()


def _accept(listener: socket.socket, context: ssl.SSLContext | None, slot_size: int) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # the listener closed: the sink stops
            return
        threading.Thread(target=_sink_connection, args=(_no_delay(conn), context, slot_size), daemon=True).start()


def serve(tls_folder: str | None, slot_size: int) -> None:
    """Run the sink until stdin closes; prints its address first."""
    context = _server_context(tls_folder) if tls_folder else None
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    print(f"127.0.0.1:{listener.getsockname()[1]}", flush=True)
    threading.Thread(target=_accept, args=(listener, context, slot_size), daemon=True).start()
    sys.stdin.read()
    listener.close()


# -- the client ---------------------------------------------------------------------------------

def _client_context(folder: str) -> tuple[ssl.SSLContext, str]:
    """The client's TLS context and the name the sink's certificate must carry."""
    from memstage.tls import client_certs

    paths = client_certs(folder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(paths["tls_ca"])
    ctx.load_cert_chain(paths["tls_cert"], paths["tls_key"])
    return ctx, paths["tls_server_name"]


def _connect(address: str, tls: tuple[ssl.SSLContext, str] | None) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = _no_delay(socket.create_connection((host, int(port))))
    if tls is None:
        return sock
    context, name = tls
    return context.wrap_socket(sock, server_hostname=name)


def _send_frame(sock: socket.socket, chunk: memoryview) -> None:
    prefix = len(chunk).to_bytes(HEADER, "big")
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(prefix)
        sock.sendall(chunk)
        return
    sent = sock.sendmsg([prefix, chunk])
    # A blocking sendmsg sends it all unless a signal cut it short: then send the rest.
    if sent < HEADER:
        sock.sendall(prefix[sent:])
        sock.sendall(chunk)
    elif sent < HEADER + len(chunk):
        sock.sendall(chunk[sent - HEADER :])


def _take_ack(sock: socket.socket, ack: memoryview, expected: deque[bytes]) -> None:
    if not _recv_exact(sock, ack):
        raise ConnectionError("the sink closed the stream before acknowledging every chunk")
    if ack != expected.popleft():
        raise RuntimeError("the sink's hash of a chunk differs from the client's")


def _stream(sock: socket.socket, view: memoryview, starts: Sequence[int], chunk_size: int,
            errors: list[BaseException]) -> None:
    try:
        expected: deque[bytes] = deque()
        ack = memoryview(bytearray(ACK))
        for start in starts:
            chunk = view[start : start + chunk_size]
            while len(expected) >= WINDOW:
                _take_ack(sock, ack, expected)
            expected.append(xxhash.xxh3_128_digest(chunk)[:ACK])
            _send_frame(sock, chunk)
        while expected:
            _take_ack(sock, ack, expected)
    except BaseException as e:  # handed to push(), which raises it
        errors.append(e)


def push(address: str, data: bytes, chunk_size: int, tls_folder: str | None) -> float:
    """Send `data` to the sink as chunks over STREAMS connections (TLS with the client certificate
    in tls_folder, if given); the seconds from the first frame to the last acknowledgement, the
    connections (and TLS handshakes) made before."""
    tls = _client_context(tls_folder) if tls_folder else None
    view = memoryview(data)
    starts = range(0, len(view), chunk_size)
    errors: list[BaseException] = []
    socks: list[socket.socket] = []
    try:
        for _ in range(STREAMS):
            socks.append(_connect(address, tls))
        # Chunks dealt round-robin over the streams, as a client stripes them over benefactors.
        threads = [threading.Thread(target=_stream, args=(sock, view, starts[i::STREAMS], chunk_size, errors))
                   for i, sock in enumerate(socks)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        for sock in socks:
            sock.close()
    if errors:
        raise errors[0]
    return elapsed


def main(argv: list[str] | None = None) -> None:
    from memstage.units import parse_size

    p = argparse.ArgumentParser(prog="python -m memstage.bench.rawceiling")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the sink until stdin closes; prints its address first")
    s.add_argument("--tls", metavar="CERTDIR", default=None,
                   help="serve TLS 1.3 with the deployment certificates in CERTDIR (made if missing)")
    s.add_argument("--chunk-size", default="1MiB", help="largest frame accepted (default 1MiB)")
    args = p.parse_args(argv)
    serve(args.tls, parse_size(args.chunk_size))


if __name__ == "__main__":
    main()
