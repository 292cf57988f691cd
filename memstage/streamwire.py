"""The wire of the stream data port: messages on a plain, TLS or Unix socket.

Each message is an 8-byte prefix (two big-endian uint32: the length of a StreamRequest or
StreamReply, then the length of the raw bytes after it), the message, then the raw bytes. Raw
bytes are sent from the caller's buffers (`sendmsg`, no join) and received with `recv_into` into
the receiver's buffer (a benefactor's arena blocks, a reader's buffer): no protobuf around them.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

from google.protobuf.message import DecodeError, Message

from memstage.chunks import MAX_CHUNK_SIZE

PREFIX = struct.Struct("!II")
MAX_MESSAGE = 64 * 1024  # a request or reply without its bytes: a header, a grant, a receipt
MAX_DATA = MAX_CHUNK_SIZE

Buffer = bytes | bytearray | memoryview
M = TypeVar("M", bound=Message)


class WireError(ConnectionError):
    """The peer closed the connection, or sent what is not a message of this wire."""


class Idle(TimeoutError):
    """No message began within the socket's timeout (the connection is still in step)."""


_SUN_PATH_MAX = 107  # bytes of a Unix socket's path the kernel takes


def unix_address(sock: socket.socket, path: str, act: Callable[[str], None]) -> None:
    """bind or connect `sock` to a Unix socket path of any length: a path longer than the kernel
    takes is reached through a descriptor of its directory."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        act(path)
        return
    folder, name = os.path.split(path)
    fd = os.open(folder or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        act(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


def host_id() -> str:
    """This kernel's boot id: processes that share it may share a Unix socket's directory."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def send(sock: socket.socket, message: Message, data: Sequence[Buffer] = ()) -> None:
    """The message and its raw bytes, from the caller's buffers."""
    head = message.SerializeToString()
    send_parts(sock, [PREFIX.pack(len(head), sum(len(d) for d in data)) + head, *data])


def send_parts(sock: socket.socket, parts: Sequence[Buffer]) -> None:
    """Buffers sent in order as one run of bytes, with no join."""
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg over TLS: each part is encrypted as it goes
        for part in parts:
            sock.sendall(part)
        return
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def recv_into(sock: socket.socket, view: memoryview) -> None:
    """Fill `view` exactly from the socket."""
    pos, end = 0, len(view)
    while pos < end:
        n = sock.recv_into(view[pos:], end - pos)
        if n == 0:
            raise WireError(f"the peer closed the connection {end - pos} bytes short of a message")
        pos += n


def recv(sock: socket.socket, kind: type[M]) -> tuple[M, int] | None:
    """The next message and the length of the raw bytes that follow it (still to be received);
    None when the peer closed the connection between messages."""
    prefix = bytearray(PREFIX.size)
    try:
        first = sock.recv_into(prefix, PREFIX.size)
    except TimeoutError:
        raise Idle("no message") from None
    return None if first == 0 else recv_after(sock, kind, prefix, first)


def poll(sock: socket.socket, kind: type[M]) -> tuple[M, int] | None | Literal[False]:
    """recv() when a message has begun to arrive; False if none has (on a TLS socket, what made it
    readable was the protocol's own, such as a session ticket). For a socket found readable."""
    prefix = bytearray(PREFIX.size)
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        first = sock.recv_into(prefix, PREFIX.size)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    finally:
        sock.settimeout(timeout)
    return None if first == 0 else recv_after(sock, kind, prefix, first)


def recv_after(sock: socket.socket, kind: type[M], prefix: bytearray, first: int) -> tuple[M, int]:
    """The rest of a message whose first `first` bytes of prefix were received."""
    try:
        if first < PREFIX.size:
            recv_into(sock, memoryview(prefix)[first:])
        return _rest(sock, kind, prefix)
    except TimeoutError:
        raise WireError("a message stopped half way (timed out)") from None


def _rest(sock: socket.socket, kind: type[M], prefix: bytearray) -> tuple[M, int]:
    head_len, data_len = PREFIX.unpack(prefix)
    if head_len > MAX_MESSAGE or data_len > MAX_DATA:
        raise WireError(f"a message of {head_len} + {data_len} bytes is over the limit "
                        f"({MAX_MESSAGE} + {MAX_DATA})")
    head = bytearray(head_len)
    recv_into(sock, memoryview(head))
    try:
        return kind.FromString(bytes(head)), data_len
    except DecodeError:
        raise WireError(f"not a {kind.__name__}") from None


def skip(sock: socket.socket, n: int) -> None:
    """Read and drop n raw bytes."""
    scratch = memoryview(bytearray(min(n, 1 << 20)))
    while n > 0:
        part = scratch[: min(n, len(scratch))]
        recv_into(sock, part)
        n -= len(part)


def send_frame(sock: socket.socket, head: bytes, data: Buffer = b"") -> None:
    """A message already serialized and its raw bytes, in one system call where the socket allows:
    a small call's cost is mostly system calls."""
    prefix = PREFIX.pack(len(head), len(data))
    if len(data) <= _JOIN_UP_TO:  # copying a small message costs less than gathering it
        sock.sendall(b"".join((prefix, head, data)))
    elif isinstance(sock, ssl.SSLSocket):
        sock.sendall(prefix + head)
        sock.sendall(data)
    else:
        send_parts(sock, [prefix + head, data])


_JOIN_UP_TO = 256 * 1024


class Reader:
    """Messages of one connection, read ahead into a buffer: a small message takes one recv, not
    three (its prefix, the message, its bytes). For one reader thread; a message larger than the
    buffer is read into its own."""

    def __init__(self, sock: socket.socket, max_data: int = MAX_DATA, size: int = 64 * 1024) -> None:
        self.sock = sock
        self.max_data = max_data
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = self._end = 0

    def read(self, deadline: float | None = None) -> tuple[bytes, bytes] | None:
        """The next message and its raw bytes, as bytes the caller may keep; None when the peer
        closed the connection between messages. TimeoutError past `deadline` (time.monotonic)."""
        if self._end - self._start < PREFIX.size and not self._fill(PREFIX.size, deadline, between=True):
            return None
        head_len, data_len = PREFIX.unpack_from(self._buf, self._start)
        if head_len > MAX_MESSAGE or data_len > self.max_data:
            raise WireError(f"a message of {head_len} + {data_len} bytes is over the limit "
                            f"({MAX_MESSAGE} + {self.max_data})")
        total = PREFIX.size + head_len + data_len
        if total <= len(self._buf):
            self._fill(total, deadline)
            at = self._start + PREFIX.size
            self._start += total
            return bytes(self._view[at:at + head_len]), bytes(self._view[at + head_len:at - PREFIX.size + total])
        # Too large for the buffer: what arrived, then the rest as it comes (memory grows with what
        # the peer sends, not with what its prefix claims).
        whole = bytearray(self._view[self._start + PREFIX.size:self._end])
        self._start = self._end = 0
        size = head_len + data_len
        while len(whole) < size:
            piece = self._view[: min(size - len(whole), len(self._buf))]
            whole += piece[: self._recv(piece, deadline)]
        out = memoryview(whole)
        return bytes(out[:head_len]), bytes(out[head_len:])  # a copy costs little beside decoding it

    def _fill(self, n: int, deadline: float | None, between: bool = False) -> bool:
        """At least n bytes buffered from the start of the next message; False if the peer closed
        first, with nothing of a message received."""
        if self._start + n > len(self._buf):  # move what is left of the buffer to its start
            left = self._end - self._start
            self._view[:left] = self._view[self._start:self._end]
            self._start, self._end = 0, left
        while self._end - self._start < n:
            got = self._recv(self._view[self._end:], deadline, between and self._end == self._start)
            if got == 0:
                return False
            self._end += got
        return True

    def _recv(self, into: memoryview, deadline: float | None, may_end: bool = False) -> int:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            self.sock.settimeout(left)
        got = self.sock.recv_into(into)
        if got == 0 and not may_end:
            raise WireError("the peer closed the connection in the middle of a message")
        return got


# A Unix socket's sender holds at most its send buffer of unread bytes, 208 KiB by default: a 1 MiB
# chunk then goes in five pieces, each waiting for the reader to wake and take the last. With 4 MiB
# (Linux caps it at net.core.wmem_max) a chunk goes in one: 1.3 -> 1.7-2.0 GB/s of puts measured.
UNIX_SEND_BUFFER = 4 << 20


def widen(sock: socket.socket) -> None:
    """A Unix socket's send buffer raised to UNIX_SEND_BUFFER (TCP tunes its own)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)


def dial(host: str, port: int, unix_path: str, tls: ssl.SSLContext | None, server_name: str,
         timeout: float) -> socket.socket:
    """A connection to a port of this wire: its Unix socket when `unix_path` is given, else TCP
    with TCP_NODELAY and TLS when `tls` is given (the certificate checked against `server_name`,
    or the host); `timeout` on every operation."""
    if unix_path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            widen(sock)
            sock.settimeout(timeout)
            unix_address(sock, unix_path, sock.connect)
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        try:
            sock = tls.wrap_socket(sock, server_hostname=server_name or host)
        except (OSError, ssl.SSLError):
            sock.close()
            raise
    return sock
