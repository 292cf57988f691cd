"""ChunkStore: the benefactor's chunks, kept in its Arena, and their capacity accounting. No networking.

Chunks are keyed by (namespace, ChunkKey): deduplication is scoped to a namespace, and a chunk is
freed only when its own namespace no longer references it. Blocks are reserved when a chunk's
header arrives, so concurrent streams can never overrun the donation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from memstage.benefactor.arena import BLOCK_SIZE, Arena, Run, blocks_for
from memstage.chunks import ChunkKey

StoreKey = tuple[str, ChunkKey]


@dataclass(slots=True)
class StoredChunk:
    runs: tuple[Run, ...]
    stored_at: float
    confirmed: bool = False  # the manager said a committed version references it
    # Put again while held: a writer may be about to commit it here, and a drop the manager decided
    # before that commit may still be on its way. The next drop is skipped (and clears this); if
    # nothing references the chunk after all, the orphan check frees it later.
    reput: bool = False


class ChunkStore:
    def __init__(self, capacity: int, prefault: bool = True) -> None:
        self._arena = Arena(capacity, prefault)
        self._chunks: dict[StoreKey, StoredChunk] = {}
        self._reserved = 0  # blocks
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self._arena.capacity

    @property
    def used(self) -> int:
        """Bytes of the donation in use (whole blocks)."""
        return (self._arena.blocks - self._arena.free_blocks) * BLOCK_SIZE

    def __len__(self) -> int:
        return len(self._chunks)

    def has(self, key: StoreKey) -> bool:
        return key in self._chunks

    def keep(self, keys: Iterable[StoreKey], now: float | None = None) -> list[bool]:
        """Which of these are held; the unconfirmed ones among them count as stored now (a writer
        still needs them, so they are no orphans yet)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            present = []
            for key in keys:
                chunk = self._chunks.get(key)
                if chunk is not None and not chunk.confirmed:
                    chunk.stored_at = now
                present.append(chunk is not None)
            return present

    def reserve(self, nbytes: int) -> bool:
        """Set blocks aside for a chunk being received; False if the donation cannot take it."""
        need = blocks_for(nbytes)
        with self._lock:
            if self._reserved + need > self._arena.free_blocks:
                return False
            self._reserved += need
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= blocks_for(nbytes)

    def put_reserved(self, key: StoreKey, data: memoryview | bytes, now: float | None = None) -> None:
        """Copy a verified chunk into reserved blocks; a chunk already held just drops its reservation."""
        with self._lock:
            self._reserved -= blocks_for(len(data))
            held = self._chunks.get(key)
            if held is not None:
                held.reput, held.confirmed = True, False
                held.stored_at = time.monotonic() if now is None else now
                return
            runs = self._arena.store(data)
            self._chunks[key] = StoredChunk(runs, time.monotonic() if now is None else now)

    def read(self, key: StoreKey, start: int = 0, end: int | None = None, prefix: bytes = b"") -> bytes | None:
        """prefix + bytes [start, end) of a chunk, copied out under the lock (its blocks may be reused after)."""
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None:
                return None
            length = key[1].length
            end = length if end is None else min(end, length)
            parts: list[bytes | memoryview] = [prefix]
            pos = 0
            for view in self._arena.views(chunk.runs, length):
                lo, hi = max(start - pos, 0), min(end - pos, len(view))
                if lo < hi:
                    parts.append(view[lo:hi])
                pos += len(view)
            return b"".join(parts)

    def delete(self, keys: Iterable[StoreKey]) -> int:
        """Free chunks (except those put again since the last drop, see StoredChunk.reput); returns
        the bytes of donation given back."""
        freed = 0
        with self._lock:
            for key in keys:
                chunk = self._chunks.get(key)
                if chunk is not None and chunk.reput:
                    chunk.reput = False
                    continue
                chunk = self._chunks.pop(key, None)
                if chunk is not None:
                    self._arena.free(chunk.runs)
                    freed += sum(count for _, count in chunk.runs) * BLOCK_SIZE
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

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._arena.close()
