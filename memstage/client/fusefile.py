"""OpenFile: one open() of a file through the FUSE mount, with POSIX write semantics.

The file is a row of chunk_size slots over the version that was current at open. A chunk the
application never touched stays a reference to that version's chunk (no copy, nothing sent at
commit). A chunk being written lives in a dirty slot, a pooled chunk-sized buffer loaded from its
current content (or zeros, for holes and growth); writes at any offset, overwrites, holes,
truncate and O_APPEND all work on the slots.

Memory stays bounded: a slot is handed to a VersionWriter (hashed, deduplicated, sent) as soon as
it is complete and the application writes past it, and the least recently written slot goes the
same way when more than max_slots are dirty. A whole, aligned chunk (dd bs=1M, most large writes)
is handed over straight from FUSE's buffer, without a slot. Should the application come back to a
chunk already handed over, it is read back from where it was stored. A handed-over chunk that is
rewritten or cut off is released at once (its memory is freed before the commit). commit()
(release, flush or fsync) lays the chunks out as one new version; a file that was not changed
commits nothing.

Several writers of one file merge: all handles of a file in one mount share one OpenFile, and a
commit carries the version it was built on. If another writer (another mount, a library client)
committed since, the manager refuses it (Conflict) and this writer replays what it changed (the
extents it wrote, its truncates: memstage.client.extents) over the newer version and commits
again, in the same write session: disjoint writes all survive, overlapping bytes are the last
committer's.

If the writer fails (a benefactor lost chunks it had acknowledged, the deployment stayed full),
chunks already handed over are gone from this handle: every later call raises the same error and
nothing is committed; the previous version stays intact.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from memstage.chunks import MAX_FILE_SIZE, ChunkKey
from memstage.client.extents import Changes, chunk_plan
from memstage.client.reader import VersionReader
from memstage.client.writer import CommitResult, VersionWriter, WriteStats
from memstage.errors import Conflict, FsError, MemstageError, NotFound
from memstage.proto import manager_pb2

if TYPE_CHECKING:
    from memstage.client.client import Client
    from memstage.client.filestat import FileStat


class BufferPool:
    """Chunk-sized buffers for dirty slots, reused: a sequential writer would otherwise fault in
    fresh pages for every chunk."""

    def __init__(self, size: int, keep: int = 8) -> None:
        self.size = size
        self._keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def get(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def put(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


class Slot:
    """A dirty chunk: content is buf[:length]; bytes past length (up to the file size) read as zeros.
    buf comes from a pool, so bytes past length are stale and are zeroed before they count."""

    __slots__ = ("buf", "length", "patched")

    def __init__(self, buf: bytearray, length: int) -> None:
        self.buf = buf
        self.length = length
        self.patched = False  # it started from the chunk's content before (read, modify, write)

    def write(self, within: int, data: memoryview) -> None:
        if within > self.length:
            self.zero(self.length, within)  # a hole inside the chunk reads as zeros
        self.buf[within : within + len(data)] = data
        self.length = max(self.length, within + len(data))

    def zero(self, start: int, end: int) -> None:
        if end > start:
            self.buf[start:end] = bytes(end - start)

    def content(self, length: int) -> memoryview:
        """The chunk at `length` bytes: cut, or padded with zeros."""
        self.zero(self.length, length)
        self.length = length
        return memoryview(self.buf)[:length]


class CommittedBase:
    """A version this handle committed, as its base: its layout, and its bytes from a reader made
    when first needed (a file closed after writing never asks)."""

    def __init__(self, client: Client, path: Callable[[], str], version: int, keys: list[ChunkKey],
                 size: int) -> None:
        self._client, self._path = client, path
        self.version, self.keys, self.size = version, keys, size
        self._reader: VersionReader | None = None
        self._starts: list[int] | None = None  # each key's offset, once read from kept chunks

    def follow(self, path: Callable[[], str]) -> None:
        """Read under this name from now on (the handle's: it moves with renames)."""
        self._path = path

    def read_range(self, start: int, end: int, ahead: bool = True) -> bytes:
        kept = self._kept(start, min(end, self.size))
        if kept is not None:
            return kept
        if self._reader is None:  # under the file's name now: its versions move with it (rename, unlink)
            self._reader = self._client.reader(self._path(), self.version)
        return self._reader.read_range(start, end, ahead)

    def _kept(self, start: int, end: int) -> bytes | None:
        """[start, end) from the chunks this client changed in place and keeps (holes are zeros);
        None unless every chunk it needs is kept (then the version's map is not even asked for)."""
        cache = self._client.chunk_cache
        if cache is None or start >= end:
            return None if start < end else b""
        if self._starts is None:
            self._starts = [0, *itertools.accumulate(k.length for k in self.keys)][:-1]
        parts: list[bytes | memoryview] = []
        first = max(bisect.bisect_right(self._starts, start) - 1, 0)
        for i in range(first, len(self.keys)):
            pos, key = self._starts[i], self.keys[i]
            if pos >= end:
                break
            if pos + key.length > start:
                lo, hi = max(start - pos, 0), min(end - pos, key.length)
                if key.is_hole:  # zeros, only as many as asked for (a hole may be a petabyte)
                    parts.append(bytes(hi - lo))
                else:
                    data = cache.get(key)
                    if data is None:
                        return None
                    parts.append(memoryview(data)[lo:hi])
        return b"".join(parts)


class CommittedLayouts:
    """The layout of the version this mount committed last, per path (the most recent `limit`),
    for the next open of the file to build on without asking for its map. A file is identified by
    its inode and a version never changes: when stat still shows that inode at that version, the
    layout is the file's."""

    def __init__(self, client: Client, limit: int = 4096) -> None:
        self._client = client
        self._limit = limit
        self._lock = threading.Lock()
        self._by_path: OrderedDict[str, tuple[int, int, list[ChunkKey], int]] = OrderedDict()

    def keep(self, path: str, ino: int, base: CommittedBase) -> None:
        with self._lock:
            self._by_path[path] = (ino, base.version, list(base.keys), base.size)
            self._by_path.move_to_end(path)
            while len(self._by_path) > self._limit:
                self._by_path.popitem(last=False)

    def get(self, path: str, info: FileStat | None) -> CommittedBase | None:
        with self._lock:
            entry = self._by_path.get(path)
        if entry is None or info is None or not info.ino:
            return None
        ino, version, keys, size = entry
        if (info.ino, info.version, info.size) != (ino, version, size):
            return None
        return CommittedBase(self._client, lambda: path, version, list(keys), size)


MERGE_ATTEMPTS = 64  # commits refused because another writer was faster, before giving up


class OpenFile:
    def __init__(self, client: Client, path: str, base: VersionReader | CommittedBase | None, truncate: bool,
                 buffers: BufferPool | None = None) -> None:
        self.client = client
        self.path = path
        self.chunk = client.settings.chunk_size
        self.base = base
        self.base_version = base.version if base is not None else 0  # what the next commit builds on
        self._set_base(base)
        self.changes = Changes()  # what this file's writers changed since base_version
        if truncate and base is not None:
            self.changes.truncate(0, base.size)
        self.size = 0 if truncate or base is None else base.size
        # Base bytes at or past this offset are gone (a truncate cut them): they read as zeros.
        self._base_end = self.size
        self.changed = truncate or base is None  # a new or truncated file is a new version at close
        # Metadata this handle set (a new file's mode and owner, mtime of its writes, explicit
        # times): sent with the next commit, so a commit never undoes a chmod or utimens.
        self.attrs: dict[str, Any] = {}
        self._space_checked = False
        self.opened_at = time.perf_counter()
        self._buffers = buffers if buffers is not None and buffers.size == self.chunk else BufferPool(self.chunk)
        self.max_slots = max(4, client.settings.buffer_size // (4 * self.chunk))
        self._slots: dict[int, Slot] = {}  # dirty chunks, least recently written first
        self._handed: dict[int, ChunkKey] = {}  # chunks handed to the writer since the last commit
        self._writer: VersionWriter | None = None
        self._error: MemstageError | None = None
        self._lock = threading.Lock()

    def continue_writer(self, writer: VersionWriter, keys: list[ChunkKey]) -> None:
        """Go on from a writer a sequential writer began (a library "wb" file that seeked): `keys`,
        the whole chunks it was given in order, are this file's first chunks, already sent."""
        with self._lock:
            self._writer = writer
            self._handed = dict(enumerate(keys))
            self.size = len(keys) * self.chunk
            self.changes.write(0, self.size)

    # -- the version this handle started from ------------------------------------------------
    def _set_base(self, base: VersionReader | CommittedBase | None) -> None:
        self._base_keys: list[ChunkKey] = base.keys if base is not None else []
        self._base_starts: list[int] = []
        pos = 0
        for key in self._base_keys:
            self._base_starts.append(pos)
            pos += key.length

    def _base_key(self, index: int, length: int) -> ChunkKey | None:
        """The base's entry for chunk `index` if it is exactly that chunk (data or a hole covering
        it), so the commit can reference it without its bytes; else None."""
        start = index * self.chunk
        if self.base is None or start + length > self._base_end:
            return None
        i = bisect.bisect_right(self._base_starts, start) - 1
        if i < 0 or i >= len(self._base_keys):
            return None
        key = self._base_keys[i]
        if key.is_hole:
            return ChunkKey.hole(length) if start + length <= self._base_starts[i] + key.length else None
        return key if self._base_starts[i] == start and key.length == length else None

    def _base_data(self) -> Iterator[int]:
        """Chunk indices below the live base end where the base holds data (not holes)."""
        for start, key in zip(self._base_starts, self._base_keys, strict=True):
            if start >= self._base_end:
                break
            if not key.is_hole:
                yield from range(start // self.chunk, (min(start + key.length, self._base_end) - 1) // self.chunk + 1)

    def _read_base(self, start: int, end: int, ahead: bool = True) -> bytes:
        end = min(end, self._base_end)
        if self.base is None or start >= end:
            return b""
        return self.base.read_range(start, end, ahead)

    # -- chunks ------------------------------------------------------------------------------
    def _check(self) -> None:
        """A broken handle raises its error on every call (the same one: no growing traceback)."""
        if self._error is not None:
            raise self._error.with_traceback(None)

    def _new_writer(self) -> VersionWriter:
        self._check()
        if self._writer is None:
            self._writer = self.client.new_writer(self.path, self.opened_at, known=set(self._base_keys))
            self._writer.want_info = True  # the committed attributes: a mount caches them
        return self._writer

    def _content(self, index: int) -> bytes | memoryview:
        """What chunk `index` holds now, outside the dirty slots (possibly shorter than a chunk)."""
        key = self._handed.get(index)
        if key is not None:
            with self._writing() as writer:
                writer.settle()
                return self.client.map_reader(writer.locate(key), read_ahead=False).fetch(0)
        start = index * self.chunk
        # A chunk about to be patched: no read-ahead of the next ones (an update in place would
        # fetch them each time, for nothing).
        return self._read_base(start, start + self.chunk, ahead=False)

    def _slot(self, index: int) -> Slot:
        slot = self._slots.pop(index, None)
        if slot is None:
            slot = Slot(self._buffers.get(), 0)
            if index * self.chunk < self.size:
                content = self._content(index)
                slot.buf[: len(content)] = content
                slot.length = len(content)
                slot.patched = True
            self._drop_handed(index)
        self._slots[index] = slot  # most recently written last
        return slot

    def _drop_handed(self, index: int) -> None:
        """Chunk `index` no longer is the handed-over one: the writer releases that put."""
        key = self._handed.pop(index, None)
        if key is not None and self._writer is not None:
            self._writer.release(key)

    def _expected(self, index: int) -> int:
        return min(self.chunk, self.size - index * self.chunk)

    def _hand_over(self, index: int) -> None:
        slot = self._slots.pop(index)
        try:
            with self._writing() as writer:
                # A chunk changed in place is new content, or its own old one (then not sent at
                # all: its base key is known): asking the manager whether it holds it costs a
                # round trip per small update (dbm, an index rewritten at close) and finds nothing.
                key = writer.put(slot.content(self._expected(index)), ask=not slot.patched)
                self._drop_handed(index)
                self._handed[index] = key
        finally:
            self._buffers.put(slot.buf)  # put() copied it

    @contextmanager
    def _writing(self) -> Iterator[VersionWriter]:
        """The writer, for one step; a failure breaks the handle for good (its handed chunks are gone)."""
        writer = self._new_writer()
        try:
            yield writer
        except MemstageError as e:
            self._break(e)
            raise

    def abort(self) -> None:
        """Drop what was written since the last commit (its chunks are freed now); the handle is closed."""
        with self._lock:
            if self._error is None:
                self._break(MemstageError(f"{self.path}: closed without committing"))

    def _break(self, error: MemstageError) -> None:
        self._error = error
        if self._writer is not None:
            self._writer.abort()
        self._writer = None
        self._handed.clear()
        for slot in self._slots.values():
            self._buffers.put(slot.buf)
        self._slots.clear()

    def _bound(self, current: int) -> None:
        """Hand over complete slots the application has moved past, and the oldest beyond max_slots."""
        done = [i for i, s in self._slots.items() if i < current and s.length == self.chunk]
        for index in done:
            self._hand_over(index)
        while len(self._slots) > self.max_slots:
            self._hand_over(next(iter(self._slots)))

    # -- POSIX -------------------------------------------------------------------------------
    def write(self, data: bytes | memoryview, offset: int, append: bool = False) -> int:
        """Write `data` at `offset` (append: at the end, whatever other handles wrote: atomically
        per call). `data` may be FUSE's own buffer: nothing of it is kept after return."""
        view = memoryview(data).cast("B")
        with self._lock:
            if append:
                offset = self.size
            if offset + len(view) > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG, f"{self.path}: a file can be at most {MAX_FILE_SIZE} bytes")
            self._check()
            if not self._space_checked:
                # A full deployment is reported by the first write() (ENOSPC), not only by close(),
                # which shells ignore (`echo x > f && mv f g` must not leave an empty g).
                with self._writing() as writer:
                    writer.check_space()
                self._space_checked = True
            pos = 0
            index = offset // self.chunk
            while pos < len(view):
                index, within = divmod(offset + pos, self.chunk)
                n = min(len(view) - pos, self.chunk - within)
                piece = view[pos : pos + n]
                if n == self.chunk:
                    # A whole chunk: hashed and copied into frames straight from the caller's buffer.
                    stale = self._slots.pop(index, None)
                    if stale is not None:
                        self._buffers.put(stale.buf)
                    with self._writing() as writer:
                        key = writer.put(piece)
                        self._drop_handed(index)
                        self._handed[index] = key
                else:
                    self._slot(index).write(within, piece)
                pos += n
            self.size = max(self.size, offset + len(view))
            self.changes.write(offset, offset + len(view))
            self.changed = True
            self.attrs["mtime_ns"] = time.time_ns()
            if self._slots:
                self._bound(index)
        return len(view)

    def read(self, size: int, offset: int) -> bytes:
        with self._lock:
            self._check()
            end = min(offset + size, self.size)
            parts = []
            pos = offset
            while pos < end:
                index, within = divmod(pos, self.chunk)
                n = min(end - pos, self.chunk - within)
                slot = self._slots.get(index)
                if slot is None and index in self._handed:
                    slot = self._slot(index)  # read back once, then served from memory
                # Only the piece asked for is copied (FUSE reads at most 1 MiB at a time).
                if slot is not None:
                    piece = bytes(memoryview(slot.buf)[within : min(within + n, slot.length)])
                else:
                    piece = self._read_base(pos, pos + n)
                parts.append(piece + bytes(n - len(piece)))  # beyond what was written: zeros
                pos += n
            if self._slots:
                self._bound(-1)
            return b"".join(parts)

    def truncate(self, length: int) -> None:
        """Cut or extend (sparse: growing costs nothing, the new bytes are a hole)."""
        if length > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, f"{self.path}: a file can be at most {MAX_FILE_SIZE} bytes")
        with self._lock:
            self._check()
            if length == self.size:
                return
            self.changes.truncate(length, self.size)
            if length < self.size:
                count = -(-length // self.chunk)  # chunks that remain
                for index in [i for i in self._slots if i >= count]:
                    self._buffers.put(self._slots.pop(index).buf)
                for index in [i for i in self._handed if i >= count]:
                    self._drop_handed(index)
                if length % self.chunk:
                    # The chunk cut in the middle becomes dirty, cut to the new end.
                    slot = self._slot(count - 1)
                    slot.length = min(slot.length, length - (count - 1) * self.chunk)
                self._base_end = min(self._base_end, length)
            self.size = length
            self.changed = True
            self.attrs["mtime_ns"] = time.time_ns()

    def commit(self) -> CommitResult | None:
        """Commit the current content as a new version (None if nothing changed since open or the last commit)."""
        with self._lock:
            self._check()
            if not self.changed:
                return None
            with self._writing() as writer:
                for attempt in range(MERGE_ATTEMPTS):
                    stats = self._lay_out_all(writer)
                    try:
                        version = writer.commit(manager_pb2.FileAttrs(**self.attrs), base=self.base_version)
                        break
                    except Conflict:
                        if attempt + 1 == MERGE_ATTEMPTS:
                            raise
                        self._merge_over_latest(writer)
            result = CommitResult(self.path, version, self.size, stats, time.perf_counter() - self.opened_at,
                                  writer.info)
            self.client.record(result)
            # What was committed becomes the base of any further writes through this handle.
            # Its layout is known here: the version's map is only asked for if it is read back.
            self.base = CommittedBase(self.client, lambda: self.path, version, writer.laid_out(), self.size)
            self.base_version = version
            self._set_base(self.base)
            self._base_end = self.size
            self.changes.clear()
            for slot in self._slots.values():
                self._buffers.put(slot.buf)
            self._slots.clear()
            self._handed.clear()
            self._writer = None
            self.changed = False
            self.attrs = {}
            self._space_checked = False
            return result

    def _lay_out_all(self, writer: VersionWriter) -> WriteStats:
        """Lay the current content out as the writer's version (again, after a merge)."""
        writer.relayout()
        # Only chunks with data are laid out one by one; the gaps between them are holes, one
        # entry each whatever their size.
        count = -(-self.size // self.chunk)
        data = sorted({*self._slots, *self._handed, *self._base_data()})
        pos = 0
        for index in data:
            if index >= count:
                break
            if index * self.chunk > pos:
                writer.place(ChunkKey.hole(index * self.chunk - pos))
            self._lay_out(writer, index, self._expected(index))
            pos = index * self.chunk + self._expected(index)
        if self.size > pos:
            writer.place(ChunkKey.hole(self.size - pos))
        return writer.finish()

    def _merge_over_latest(self, writer: VersionWriter) -> None:
        """Another writer committed since base_version: this file's changes are laid over the
        latest version, which becomes the base. Chunks this writer wrote whole stay as they are;
        chunks it wrote in part get the latest version's bytes around its own; the rest are the
        latest version's."""
        try:
            latest: VersionReader | None = self.client.reader(self.path)
        except NotFound:  # removed meanwhile: the changes make the file anew
            latest = None
        latest_size = latest.size if latest is not None else 0
        size = self.changes.merged_size(latest_size, self.size)
        whole, part = chunk_plan(self.changes, self.chunk, size)
        mine = {}
        for index in part:  # this writer's bytes of the chunk, read before the base changes
            slot = self._slot(index)
            mine[index] = [(lo, bytes(memoryview(slot.buf)[lo - index * self.chunk : hi - index * self.chunk]))
                           for lo, hi in self.changes.written.within(index * self.chunk, (index + 1) * self.chunk)]
        keep = set(whole) | set(part)
        for index in [i for i in self._slots if i not in keep]:
            self._buffers.put(self._slots.pop(index).buf)
        for index in [i for i in self._handed if i not in keep]:
            self._drop_handed(index)
        self.base = latest
        self.base_version = latest.version if latest is not None else 0
        self._set_base(latest)
        self._base_end = self.changes.base_end(latest_size)
        self.size = size
        for index in part:
            self._buffers.put(self._slots.pop(index).buf)
            slot = self._slot(index)  # the latest version's bytes of the chunk
            for lo, data in mine[index]:
                slot.write(lo - index * self.chunk, memoryview(data))

    def _lay_out(self, writer: VersionWriter, index: int, length: int) -> None:
        slot = self._slots.get(index)
        if slot is None:
            key = self._handed.get(index)
            if key is None:
                key = self._base_key(index, length)
                if key is not None:
                    if key.is_hole:
                        writer.place(key)
                    else:
                        writer.add_held(key)
                    return
            elif key.length == length:
                writer.place(key)
                return
            slot = self._slot(index)  # a hole, or a chunk whose length changed: its bytes, cut or padded
        key = writer.put(slot.content(length), ask=not slot.patched)  # see _hand_over
        writer.place(key)
        # put() copied it; the commit loop holds one slot at a time. Kept as handed over, should a
        # merge lay the version out again.
        self._buffers.put(self._slots.pop(index).buf)
        self._drop_handed(index)
        self._handed[index] = key
