"""ChunkStore: the benefactor's chunks, kept in its Arena, who owns each, and capacity. No networking.

Chunks are keyed by (namespace, ChunkKey): deduplication is scoped to a namespace. Blocks are
reserved when a chunk's header arrives, so concurrent streams can never overrun the donation.

Ownership is explicit, and only the manager's orders end it:
- a write session that stored a chunk *pins* it (once per put) until the session ends (commit,
  abort, lease expiry) or releases it (rewritten before the commit; one release per put, so a
  release that crosses a later put of the same chunk leaves that put's pin);
- a committed version referencing it here makes the manager *hold* it, at a generation the
  manager chose; a free order names that generation, so a late or repeated free never takes a
  copy held again since (a newer generation) or stored again by an open session (a pin).
A chunk with no pin and no hold is freed at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from memstage.benefactor.arena import BLOCK_SIZE, Arena, Run, blocks_for
from memstage.chunks import ChunkKey

StoreKey = tuple[str, ChunkKey]


@dataclass(slots=True)
class StoredChunk:
    runs: tuple[Run, ...]
    pins: dict[int, int] = field(default_factory=dict)  # open write session -> puts not released
    gen: int = 0  # generation of the manager's hold; 0 = not held by any committed version
    readers: int = 0  # lent out (sent straight from its blocks): freed only once they are done
    dropped: bool = False  # no longer stored; its blocks go back when the last reader is done
    checked_at: float = 0.0  # when the manager last confirmed the hold (safety-net reconcile)


@dataclass(frozen=True, slots=True)
class Held:
    """A chunk as reported to the manager."""

    key: StoreKey
    gen: int
    sessions: tuple[int, ...]


class ChunkStore:
    def __init__(self, capacity: int, prefault: bool = True) -> None:
        self._arena = Arena(capacity, prefault)
        self._chunks: dict[StoreKey, StoredChunk] = {}
        self._by_session: dict[int, set[StoreKey]] = {}
        self._session_bytes: dict[int, int] = {}  # per session: bytes of the chunks in _by_session
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

    def put_reserved(self, key: StoreKey, data: memoryview | bytes, session: int) -> None:
        """Copy a verified chunk into reserved blocks, pinned by `session`; a chunk already held just
        gains the pin and drops its reservation."""
        with self._lock:
            self._reserved -= blocks_for(len(data))
            chunk = self._chunks.get(key)
            if chunk is None:
                chunk = self._chunks[key] = StoredChunk(self._arena.store(data))
            self._pin(key, chunk, session)

    def land(self, nbytes: int) -> tuple[tuple[Run, ...], list[memoryview]]:
        """Blocks reserved for a chunk (reserve()), taken now so that its bytes are received straight
        into them: their runs and views. Then put_landed() or drop_landed()."""
        with self._lock:
            self._reserved -= blocks_for(nbytes)
            runs = self._arena.take(nbytes)
        return runs, self._arena.views(runs, nbytes)

    def put_landed(self, key: StoreKey, runs: tuple[Run, ...], session: int) -> None:
        """A verified chunk received into landed blocks, pinned by `session`; a chunk already held
        just gains the pin and the landed blocks go back."""
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None:
                chunk = self._chunks[key] = StoredChunk(runs)
            else:
                self._arena.free(runs)
            self._pin(key, chunk, session)

    def drop_landed(self, runs: tuple[Run, ...]) -> None:
        with self._lock:
            self._arena.free(runs)

    def _pin(self, key: StoreKey, chunk: StoredChunk, session: int) -> None:
        chunk.pins[session] = chunk.pins.get(session, 0) + 1
        mine = self._by_session.setdefault(session, set())
        if key not in mine:
            mine.add(key)
            self._session_bytes[session] = self._session_bytes.get(session, 0) + key[1].length

    def session_bytes(self, session: int) -> int:
        """Bytes of the chunks an open write session keeps here (a grant's cap is checked against it)."""
        with self._lock:
            return self._session_bytes.get(session, 0)

    def store_copy(self, key: StoreKey, data: memoryview | bytes, gen: int) -> bool:
        """A verified copy of a committed chunk (a replica, a rebuild), held at `gen` with no session.
        False if there is no room."""
        if not self.reserve(len(data)):
            return False
        with self._lock:
            self._reserved -= blocks_for(len(data))
            chunk = self._chunks.get(key)
            if chunk is None:
                chunk = self._chunks[key] = StoredChunk(self._arena.store(data))
            if gen > chunk.gen:
                chunk.gen, chunk.checked_at = gen, time.monotonic()
        return True

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

    @contextlib.contextmanager
    def lend(self, key: StoreKey) -> Iterator[list[memoryview] | None]:
        """Views of a chunk's blocks, valid inside the block (a free meanwhile waits for its end), so
        that it is sent with no copy; None if it is not held."""
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None:
                yield None
                return
            chunk.readers += 1
            views = self._arena.views(chunk.runs, key[1].length)
        try:
            yield views
        finally:
            for v in views:
                v.release()
            with self._lock:
                chunk.readers -= 1
                if chunk.dropped and not chunk.readers:
                    self._arena.free(chunk.runs)

    # -- the manager's orders (each idempotent); they return the bytes of donation given back --
    def hold(self, keys: Iterable[tuple[StoreKey, int]], now: float | None = None) -> None:
        """Committed versions reference these chunks here now, at the given generations."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for key, gen in keys:
                chunk = self._chunks.get(key)
                if chunk is not None and gen > chunk.gen:
                    chunk.gen, chunk.checked_at = gen, now

    def unpin(self, session: int, keys: Iterable[StoreKey]) -> int:
        """The session no longer needs one put of each of these chunks."""
        with self._lock:
            mine = self._by_session.get(session)
            if mine is None:
                return 0
            freed = 0
            for key in keys:
                chunk = self._chunks.get(key)
                if chunk is None or session not in chunk.pins:
                    continue
                chunk.pins[session] -= 1
                if chunk.pins[session] <= 0:
                    mine.discard(key)
                    self._session_bytes[session] -= key[1].length
                    freed += self._unpin(key, session)
            if not mine:
                del self._by_session[session]
                self._session_bytes.pop(session, None)
            return freed

    def end_session(self, session: int) -> int:
        """The session is over: chunks only it kept are freed."""
        with self._lock:
            self._session_bytes.pop(session, None)
            return sum(self._unpin(key, session) for key in self._by_session.pop(session, ()))

    def free(self, keys: Iterable[tuple[StoreKey, int]]) -> int:
        """The manager's hold at `gen` ends; a chunk held since at a newer generation, or pinned, stays."""
        freed = 0
        with self._lock:
            for key, gen in keys:
                chunk = self._chunks.get(key)
                if chunk is not None and chunk.gen == gen:
                    chunk.gen = 0
                    freed += self._maybe_free(key, chunk)
        return freed

    def _unpin(self, key: StoreKey, session: int) -> int:
        chunk = self._chunks.get(key)
        if chunk is None:
            return 0
        chunk.pins.pop(session, None)
        return self._maybe_free(key, chunk)

    def _maybe_free(self, key: StoreKey, chunk: StoredChunk) -> int:
        if chunk.pins or chunk.gen:
            return 0
        del self._chunks[key]
        if chunk.readers:
            chunk.dropped = True  # being sent: the last reader gives the blocks back
        else:
            self._arena.free(chunk.runs)
        return sum(count for _, count in chunk.runs) * BLOCK_SIZE

    # -- reports to the manager ----------------------------------------------------------------
    def sessions(self) -> list[int]:
        """Write sessions that pin chunks here."""
        with self._lock:
            return list(self._by_session)

    def held(self) -> list[Held]:
        with self._lock:
            return [Held(k, c.gen, tuple(c.pins)) for k, c in self._chunks.items()]

    def held_unchecked(self, age: float, now: float | None = None) -> list[Held]:
        """Held chunks whose hold the manager has not confirmed for `age` seconds; they count as
        checked now (the caller asks the manager)."""
        now = time.monotonic() if now is None else now
        out = []
        with self._lock:
            for key, chunk in self._chunks.items():
                if chunk.gen and now - chunk.checked_at >= age:
                    chunk.checked_at = now
                    out.append(Held(key, chunk.gen, tuple(chunk.pins)))
        return out

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._by_session.clear()
            self._session_bytes.clear()
            self._arena.close()
