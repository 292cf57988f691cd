"""The bench's raw transport ceilings (a real sink process, TCP and TLS) and its CPU accounting."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import MiB

from memstage.bench import cpu, rawceiling

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def sink(*args: str) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "memstage.bench.rawceiling", "serve", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


# A short last chunk, and more chunks than a stream's window.
DATA = os.urandom(40 * MiB + 12345)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_push_round_trip(tmp_path, tls):
    folder = str(tmp_path / "tls") if tls else None
    with sink(*(["--tls", folder] if folder else [])) as address:
        # Every chunk's acknowledgement carries the sink's hash of it, which push checks.
        assert rawceiling.push(address, DATA, MiB, folder) > 0
        assert rawceiling.push(address, DATA[:3], MiB, folder) > 0  # the sink serves connection after connection


def test_tls_sink_requires_a_client_certificate(tmp_path):
    folder = str(tmp_path / "tls")
    with sink("--tls", folder) as address:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(folder, "ca.pem"))
        host, port = address.rsplit(":", 1)
        # TLS 1.3: the client's handshake ends before the sink checks its certificate, so the refusal
        # shows as an alert, a reset or a closed connection, whichever comes first; never an ack.
        try:
            with ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname="memstage") as s:
                s.sendall((1).to_bytes(rawceiling.HEADER, "big") + b"x")  # a whole frame
                ack = s.recv(rawceiling.ACK)
        except (ssl.SSLError, ConnectionError):
            ack = b""
        assert ack == b""


def test_push_refuses_an_acknowledgement_with_another_hash():
    def wrong_sink(listener: socket.socket) -> None:
        for _ in range(rawceiling.STREAMS):
            conn, _ = listener.accept()
            threading.Thread(target=ack_zeros, args=(conn,), daemon=True).start()

    def ack_zeros(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            header = memoryview(bytearray(rawceiling.HEADER))
            while rawceiling._recv_exact(conn, header):
                rawceiling._recv_exact(conn, memoryview(bytearray(int.from_bytes(header, "big"))))
                conn.sendall(b"\0" * rawceiling.ACK)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=wrong_sink, args=(listener,), daemon=True).start()
        with pytest.raises(RuntimeError, match="hash"):
            rawceiling.push(f"127.0.0.1:{listener.getsockname()[1]}", DATA[: 4 * MiB], MiB, None)


def test_push_fails_on_a_frame_larger_than_the_sink_takes():
    with sink("--chunk-size", "1MiB") as address, pytest.raises(OSError):
        rawceiling.push(address, DATA[: 8 * MiB], 2 * MiB, None)


def test_cpu_seconds_of_a_process_and_its_children():
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time\n"
                               f"subprocess.Popen([sys.executable, '-c', {spin!r}])\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while cpu.tree_seconds(parent.pid) - cpu.process_seconds(parent.pid) < 0.25:
            assert time.monotonic() < deadline, "the child's CPU never showed in its parent's tree"
            time.sleep(0.05)
        assert cpu.total_seconds([parent.pid, os.getpid()]) > cpu.tree_seconds(parent.pid)
    finally:
        from memstage.procs import children

        for child in children(parent.pid):
            os.kill(child, 9)
        parent.kill()
        parent.wait()
    assert cpu.process_seconds(parent.pid) == 0.0 and cpu.tree_seconds(parent.pid) == 0.0  # gone
