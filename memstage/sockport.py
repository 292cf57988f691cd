"""Listening sockets of a port of the stream wire (memstage.streamwire), each connection served by
a thread of its own: a TCP port (TLS when the role's gRPC port has it, with the same certificate
and client check) and, for clients on this machine, a Unix socket in a directory only this user
can open, whose peers must run as this user or root (SO_PEERCRED). The benefactor's stream data
port and the manager's control port are both served this way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from memstage import streamwire
from memstage.errors import SettingError
from memstage.rpc import check_address

log = logging.getLogger(__name__)

_PEERCRED = struct.Struct("3i")  # pid, uid, gid

# What serves one connection, given the socket (TLS already agreed) and the peer as gRPC names one.
Serve = Callable[[socket.socket, str], None]


class SocketPort:
    """`name` says what the port is in messages; `listen` is HOST:PORT or "off" (setting names
    it in errors); `socket_dir` "" for no Unix socket, else `socket_name` is made in it; `refused`
    counts a refused peer by reason."""

    def __init__(self, name: str, serve: Serve, listen: str, setting: str, tls: ssl.SSLContext | None,
                 socket_dir: str, socket_name: str, refused: Callable[[str], None]) -> None:
        self.name = name
        self._serve_one = serve
        self._tls = tls
        self._refused = refused
        self._listeners: list[socket.socket] = []
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.tcp_port = 0
        self.unix_path = ""
        if listen != "off":
            check_address(listen, setting)
            host, _, port = listen.rpartition(":")
            try:
                tcp = socket.create_server((host.strip("[]"), int(port)), family=_family(host), backlog=128)
            except OSError as e:
                raise SettingError(f"{setting}: cannot listen on {listen} ({e.strerror})") from None
            self._listeners.append(tcp)
            self.tcp_port = tcp.getsockname()[1]
        if socket_dir:
            try:
                self.unix_path = self._unix_listener(Path(socket_dir), socket_name)
            except BaseException:
                for listener in self._listeners:
                    listener.close()
                raise

    def _unix_listener(self, folder: Path, socket_name: str) -> str:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            st = folder.stat()
        except OSError as e:
            raise SettingError(f"socket_dir: cannot make {folder} ({e.strerror})") from None
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise SettingError(f"socket_dir: {folder} must belong to this user and be closed to others "
                               f"(chmod 700); it is mode {oct(st.st_mode & 0o777)}, owner uid {st.st_uid}")
        path = folder / socket_name
        path.unlink(missing_ok=True)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            streamwire.unix_address(unix, str(path), unix.bind)
        except OSError as e:
            unix.close()
            raise SettingError(f"socket_dir: cannot make a socket in {folder} ({e.strerror or e})") from None
        unix.listen(128)
        self._listeners.append(unix)
        return str(path)

    def start(self) -> None:
        for listener in self._listeners:
            threading.Thread(target=self._accept, args=(listener,), name=f"{self.name}-accept", daemon=True).start()

    def stop(self, grace: float = 0.0) -> None:
        """Close the listeners and every connection. With a grace, connections first stop reading:
        an idle one ends at once, one inside a call answers it first (for up to `grace` seconds)."""
        with self._lock:
            self._stopping = True
            conns = set(self._conns)
        for listener in self._listeners:
            _close(listener)
        if self.unix_path:
            Path(self.unix_path).unlink(missing_ok=True)
        if grace > 0:
            for conn in conns:
                with contextlib.suppress(OSError):  # the plain socket's: an SSLSocket's own would end TLS
                    socket.socket.shutdown(conn, socket.SHUT_RD)
            deadline = time.monotonic() + grace
            for thread in list(self._threads):
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            conns, self._conns = set(self._conns), set()
        for conn in conns:
            _close(conn)
        # Until they are gone, connection threads may still use what the role closes next.
        for thread in list(self._threads):
            thread.join(timeout=5)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            thread = threading.Thread(target=self._serve, args=(conn, listener.family == socket.AF_UNIX),
                                      name=f"{self.name}-conn", daemon=True)
            with self._lock:
                if self._stopping:
                    _close(conn)
                    return
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket, local: bool) -> None:
        try:
            if local:
                pid, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               _PEERCRED.size))
                if uid not in (os.geteuid(), 0):
                    self._refused("peer_uid")
                    log.warning("%s socket: refused a process of uid %d (only this user's may connect)", self.name,
                                uid)
                    return
                peer = f"unix:{self.unix_path} (pid {pid}, uid {uid})"
                streamwire.widen(conn)  # chunks read back go out in one piece too
            else:
                host, port = conn.getpeername()[:2]
                peer = f"ipv6:[{host}]:{port}" if conn.family == socket.AF_INET6 else f"ipv4:{host}:{port}"
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls is not None:
                    conn = self._tls.wrap_socket(conn, server_side=True)
            with self._lock:
                if self._stopping:
                    return
                self._conns.add(conn)
            self._serve_one(conn, peer)
        except (OSError, ssl.SSLError) as e:
            if not self._stopping:
                log.info("%s connection ended: %s", self.name, e)
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())
            _close(conn)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
