"""gRPC plumbing shared by every role: channel/server options, address parsing, stubs."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import grpc

from memstage.chunks import MAX_MESSAGE_BYTES
from memstage.errors import SettingError
from memstage.tls import Tls

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# A second server on a port already in use must fail, not share it silently.
SERVER_OPTIONS: list[tuple[str, int]] = [*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]

# The manager's messages grow with file size: a version map lists every chunk (~100 bytes each,
# ~10 MB for a 100 GiB file of 1 MiB chunks). 256 MiB covers files of a few TiB.
MOUNT_HEADER = "memstage-mount"  # the mount a manager call comes from (see memstage.manager.watchers)
MAX_CONTROL_MESSAGE_BYTES = 256 * 1024 * 1024
# A channel's reconnect backoff grows by default to two minutes while its peer is down: benefactors
# would then come back long after a restarted manager's grace (one TTL) and be declared dead, what
# only they held lost. Reconnecting within a second costs a restarting manager nothing.
MAX_RECONNECT_BACKOFF_MS = 1000
CONTROL_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_CONTROL_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_CONTROL_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS // 4),
    ("grpc.min_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS // 4),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
]
CONTROL_SERVER_OPTIONS: list[tuple[str, int]] = [*CONTROL_CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]

# Control-plane calls are small; a generous bound still keeps a dead peer from hanging a caller.
CONTROL_TIMEOUT_S = 30.0


def check_address(address: str, setting: str) -> str:
    """'host:port' with a numeric port; the port may be 0 (pick a free one) only for listening."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingError(f"{setting}: {address!r} is not HOST:PORT (e.g. 127.0.0.1:7070)")
    return address


def _open(address: str, options: list[tuple[str, Any]], tls: Tls | None) -> grpc.Channel:
    if tls is not None and tls.enabled:
        return grpc.secure_channel(address, tls.channel_credentials(), options=[*options, *tls.channel_options()])
    return grpc.insecure_channel(address, options=options)


def channel(address: str, tls: Tls | None = None) -> grpc.Channel:
    """A channel to a benefactor (data path: messages of one frame at most); TLS when configured."""
    return _open(address, list(CHANNEL_OPTIONS), tls)


def control_channel(address: str, tls: Tls | None = None) -> grpc.Channel:
    """A channel to the manager; TLS when configured."""
    return _open(address, list(CONTROL_CHANNEL_OPTIONS), tls)


def bind(server: grpc.Server, address: str, setting: str, tls: Tls | None = None) -> str:
    """Bind (TLS when a certificate is configured) and return the address actually listened on."""
    host, _, _ = check_address(address, setting).rpartition(":")
    try:
        if tls is not None and tls.cert:
            port = server.add_secure_port(address, tls.server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise SettingError(f"{setting}: cannot listen on {address} (address in use or not local)")
    return f"{host}:{port}"


Pairs = tuple[tuple[str, Any], ...]
# What to send with a call, from its method's name and its request (None for a stream of them).
Credentials = Callable[[str, Any], Pairs]


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds metadata (a credential) to every call on a channel, as `credentials` says for the call."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def _details(self, details: Any, request: Any) -> Any:
        pairs = self._credentials(details.method.rsplit("/", 1)[-1], request)
        return _CallDetails(details.method, details.timeout, (*(details.metadata or ()), *pairs),
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, request), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, request), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details, None), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details, None), requests)


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):  # type: ignore[misc]
    pass


def with_metadata(ch: grpc.Channel, pairs: Pairs) -> grpc.Channel:
    """The channel, sending these metadata pairs with every call (none: the channel as it is); a
    value may be a callable, asked at each call (a proof that changes with time)."""
    if not pairs:
        return ch
    return with_credentials(ch, lambda method, request: tuple((k, v() if callable(v) else v) for k, v in pairs))


def with_credentials(ch: grpc.Channel, credentials: Credentials) -> grpc.Channel:
    """The channel, sending with each call what `credentials` gives for it (a grant that depends
    on the namespace the request names, say): the one place a client attaches credentials."""
    return grpc.intercept_channel(ch, _Metadata(credentials))
