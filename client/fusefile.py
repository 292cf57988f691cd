"""OpenFile: one open() of a file through the FUSE mount, with POSIX write semantics.

The file is a row of chunk_size slots over the version that was current at open. A slot the
application never touched stays a reference to that version's chunk (no copy, nothing sent at
commit); a touched slot is a bytearray loaded from it (or zeros, for holes and growth). Writes at
any offset, overwrites, holes, truncate and O_APPEND all work on the slots. commit() (release or
fsync) turns them into one new version through a VersionWriter; a file that was not changed
commits nothing. Touched slots stay in memory until the commit.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from memstage.chunks import ChunkKey
from memstage.client.reader import VersionReader
from memstage.client.writer import CommitResult, VersionWriter

if TYPE_CHECKING:
    from memstage.client.client import Client


class OpenFile:
    def __init__(self, client: Client, path: str, base: VersionReader | None, truncate: bool) -> None:
        self.client = client
        self.path = path
        self.chunk = client.settings.chunk_size
        self.base = base
        self._base_keys: list[ChunkKey] = base.keys if base is not None else []
        self.size = 0 if truncate or base is None else base.size
        self.changed = truncate or base is None  # a new or truncated file is a new version at close
        self.opened_at = time.perf_counter()
        self._dirty: dict[int, bytearray] = {}
        self._lock = threading.Lock()

    # -- slots -------------------------------------------------------------------------------
    def _base_chunk(self, index: int) -> bytes:
        if self.base is None or index >= len(self._base_keys):
            return b""
        start = index * self.chunk
        return self.base.read_range(start, min(start + self.chunk, self.base.size))

    def _slot(self, index: int) -> bytearray:
        slot = self._dirty.get(index)
        if slot is None:
            slot = bytearray(self._base_chunk(index)) if index * self.chunk < self.size else bytearray()
            self._dirty[index] = slot
        return slot

    # -- POSIX -------------------------------------------------------------------------------
    def write(self, data: bytes | memoryview, offset: int) -> int:
        view = memoryview(data)
        with self._lock:
            pos = 0
            while pos < len(view):
                index, within = divmod(offset + pos, self.chunk)
                n = min(len(view) - pos, self.chunk - within)
                slot = self._slot(index)
                if len(slot) < within:
                    slot.extend(bytes(within - len(slot)))  # a hole inside the chunk reads as zeros
                slot[within : within + n] = view[pos : pos + n]
                pos += n
            self.size = max(self.size, offset + len(view))
            self.changed = True
        return len(view)

    def read(self, size: int, offset: int) -> bytes:
        with self._lock:
            end = min(offset + size, self.size)
            parts = []
            pos = offset
            while pos < end:
                index, within = divmod(pos, self.chunk)
                n = min(end - pos, self.chunk - within)
                slot = self._dirty.get(index)
                # Only the piece asked for is copied out of a dirty chunk (FUSE reads 128 KiB at a time).
                source = slot if slot is not None else self._base_chunk(index)
                piece = bytes(source[within : within + n])
                parts.append(piece + bytes(n - len(piece)))  # beyond what was written: zeros
                pos += n
            return b"".join(parts)

    def truncate(self, length: int) -> None:
        with self._lock:
            if length == self.size:
                return
            last = (length - 1) // self.chunk if length else -1
            for index in [i for i in self._dirty if i > last]:
                del self._dirty[index]
            if length and length < self.size:
                slot = self._slot(last)
                del slot[length - last * self.chunk :]
            if length < self.size and self.base is not None:
                # Base chunks past the new end are gone; a chunk cut in the middle is now dirty.
                self._base_keys = self._base_keys[: last + 1]
            self.size = length
            self.changed = True

    def commit(self) -> CommitResult | None:
        """Commit the current content as a new version (None if nothing changed since open or the last commit)."""
        with self._lock:
            if not self.changed:
                return None
            writer = VersionWriter(self.client.connections, self.client.settings, self.path, self.opened_at,
                                   known=set(self._base_keys))
            chunks = -(-self.size // self.chunk)
            for index in range(chunks):
                length = min(self.chunk, self.size - index * self.chunk)
                slot = self._dirty.get(index)
                if slot is None and index < len(self._base_keys) and self._base_keys[index].length == length:
                    writer.add_held(self._base_keys[index])
                    continue
                data = slot if slot is not None else bytearray(self._base_chunk(index))
                if len(data) < length:
                    data.extend(bytes(length - len(data)))
                writer.add(memoryview(data)[:length])
            stats = writer.finish()
            version = writer.commit()
            result = CommitResult(self.path, version, self.size, stats, time.perf_counter() - self.opened_at)
            self.client.record(result)
            # What was committed becomes the base of any further writes through this handle.
            self.base = self.client.reader(self.path, version)
            self._base_keys = self.base.keys
            self._dirty.clear()
            self.changed = False
            return result
