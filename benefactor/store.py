"""ChunkStore: the benefactor's in-memory chunks and its capacity accounting. No networking.

Chunks are keyed by (namespace, ChunkKey), since deduplication is scoped to a namespace and a
chunk is only freed when its own namespace no longer references it. Space is reserved before a
chunk's bytes arrive, so the donated capacity is never exceeded, whatever the concurrency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from memstage.chunks import ChunkKey

StoreKey = tuple[str, ChunkKey]


@dataclass(slots=True)
class StoredChunk:
    data: memoryview | bytes
    stored_at: float
    confirmed: bool = False  # the manager said a committed version references it


@dataclass(slots=True)
class ChunkStore:
    capacity: int
    _chunks: dict[StoreKey, StoredChunk] = field(default_factory=dict)
    _used: int = 0
    _reserved: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def used(self) -> int:
        return self._used

    @property
    def free(self) -> int:
        return self.capacity - self._used - self._reserved

    def __len__(self) -> int:
        return len(self._chunks)

    def has(self, key: StoreKey) -> bool:
        return key in self._chunks

    def reserve(self, nbytes: int) -> bool:
        """Set nbytes aside for a chunk being received; False if that would pass capacity."""
        with self._lock:
            if self._used + self._reserved + nbytes > self.capacity:
                return False
            self._reserved += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes

    def put_reserved(self, key: StoreKey, data: memoryview | bytes, now: float | None = None) -> None:
        """Store a chunk whose space was reserved; storing one already held just frees the reservation."""
        with self._lock:
            self._reserved -= len(data)
            if key in self._chunks:
                return
            self._chunks[key] = StoredChunk(data, time.monotonic() if now is None else now)
            self._used += len(data)

    def get(self, key: StoreKey) -> memoryview | bytes | None:
        chunk = self._chunks.get(key)
        return None if chunk is None else chunk.data

    def delete(self, keys: Iterable[StoreKey]) -> int:
        freed = 0
        with self._lock:
            for key in keys:
                chunk = self._chunks.pop(key, None)
                if chunk is not None:
                    freed += len(chunk.data)
            self._used -= freed
        return freed

    def keys(self) -> list[StoreKey]:
        with self._lock:
            return list(self._chunks)

    def unconfirmed_older_than(self, age: float, now: float | None = None) -> list[StoreKey]:
        cutoff = (time.monotonic() if now is None else now) - age
        with self._lock:
            return [k for k, c in self._chunks.items() if not c.confirmed and c.stored_at <= cutoff]

    def confirm(self, keys: Iterable[StoreKey]) -> None:
        with self._lock:
            for key in keys:
                chunk = self._chunks.get(key)
                if chunk is not None:
                    chunk.confirmed = True
