"""Chunks this client changed in place lately, by content key: a file updated in place (open,
patch a few bytes, close, again) reads back as its base the very chunk its previous update sent,
and takes it from here instead of from a benefactor.

A key names its bytes for good (the writer hashed exactly these bytes), so nothing kept here is
ever stale; the least recently used go once `capacity` bytes are kept. Only immutable `bytes`
are kept: the writer's own copy of a chunk, which nothing changes after it is made.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from memstage.chunks import ChunkKey


class ChunkCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._chunks: OrderedDict[ChunkKey, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: ChunkKey) -> bytes | None:
        with self._lock:
            data = self._chunks.get(key)
            if data is not None:
                self._chunks.move_to_end(key)
            return data

    def put(self, key: ChunkKey, data: bytes) -> None:
        if not isinstance(data, bytes) or len(data) != key.length or key.length > self.capacity:
            return
        with self._lock:
            if key in self._chunks:
                self._chunks.move_to_end(key)
                return
            self._chunks[key] = data
            self._bytes += len(data)
            while self._bytes > self.capacity:
                _, old = self._chunks.popitem(last=False)
                self._bytes -= len(old)
