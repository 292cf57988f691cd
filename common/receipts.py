"""Receipts: a benefactor's proof that it stored a chunk for a write session.

Each benefactor process (incarnation) draws a random key and gives it to the manager when it
registers. Its acknowledgement of a chunk carries HMAC-SHA256(key, session, namespace, chunk key),
which the client passes on in its commit: the manager records the location only if the receipt
verifies under the key of that benefactor's current incarnation. A client cannot invent a
location, and a receipt from a process that has since restarted no longer verifies.
"""

from __future__ import annotations

import hmac
import os
import struct

from memstage.chunks import ChunkKey

KEY_BYTES = 32
RECEIPT_BYTES = 16
_FIXED = struct.Struct(">QQ")


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def make(key: bytes, session: int, namespace: str, chunk: ChunkKey) -> bytes:
    message = _FIXED.pack(session, chunk.length) + chunk.hash + namespace.encode()
    return hmac.digest(key, message, "sha256")[:RECEIPT_BYTES]


def verify(key: bytes, session: int, namespace: str, chunk: ChunkKey, receipt: bytes) -> bool:
    return bool(key) and hmac.compare_digest(make(key, session, namespace, chunk), receipt)
