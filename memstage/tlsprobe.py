"""Does a peer speak TLS? Asked only after a plaintext call to it failed as unreachable: a manager
serving TLS closes a plaintext connection at once, which gRPC reports as "Socket closed", and the
user is better told which settings are missing."""

from __future__ import annotations

import functools
import socket
import ssl


@functools.lru_cache(maxsize=16)
def speaks_tls(address: str, timeout: float = 2.0) -> bool:
    """Whether HOST:PORT answers a TLS handshake (its certificate is not checked: only whether it
    speaks TLS at all)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        with socket.create_connection((host, int(port)), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.version()
            return True
    except ssl.SSLError as e:
        # A server that wants a client certificate may end the handshake with an alert: it spoke TLS.
        return "alert" in str(e).lower() or "certificate" in str(e).lower()
    except (OSError, ValueError):
        return False


def missing_tls(role: str, address: str) -> str:
    return (f"{role} {address} speaks TLS and this side has no tls_ca: set tls_ca (and tls_cert and tls_key "
            "when it asks for a client certificate), e.g. MEMSTAGE_CONFIG=<state>/client.toml of `memstage up`, "
            "or MEMSTAGE_TLS_CA, MEMSTAGE_TLS_CERT, MEMSTAGE_TLS_KEY")
