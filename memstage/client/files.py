"""File objects of the client, on fsspec's AbstractBufferedFile (its buffering is not written twice).

WriteFile ("wb") cuts what the application writes into chunk_size chunks and hands them to a
VersionWriter; close() commits (close_mode "commit") or leaves the commit to a background thread
("buffered"). Leaving a `with` block by an exception aborts: the previous version stays current.
A "wb" file may also seek and truncate (HDF5, zipfile and anything that patches a header do):
the first seek that moves turns it into a mounted file's OpenFile, which keeps the chunks sent
so far; a writer that never seeks stays on the sequential path.
ReadFile serves ranges of the version committed when it was opened, with fsspec's read-ahead cache.
UpdateFile ("r+b", "ab") keeps the previous content and is read, written and truncated anywhere,
as a mounted file is (it is the mount's OpenFile): its close commits, merged with what other
writers of the file committed meanwhile, so many ranks may write regions of one file. With
"w+b" it starts empty and replaces the file, as "wb" does.

A file a library client creates is owned by the process's uid and gid (a mount gives its
caller's); writing an existing file keeps its owner, as open(O_TRUNC) does.
"""

from __future__ import annotations

import io
import os
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from fsspec.spec import AbstractBufferedFile

from memstage.client.fusefile import OpenFile
from memstage.client.reader import VersionReader
from memstage.client.writer import CommitResult, VersionWriter
from memstage.errors import InvalidArgument, NotFound
from memstage.proto import manager_pb2

if TYPE_CHECKING:
    from memstage.client.client import Client


class _Closable(Protocol):
    def discard(self) -> None: ...

    def close(self) -> None: ...


class _CommitOnExit:
    """Leaving a `with` block by an exception commits nothing (discard); else close() commits.
    (No close or discard here: the file classes' own, and their bases', are the ones called.)"""

    def __exit__(self: _Closable, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()


def _owner(new: bool, uid: int | None, gid: int | None) -> dict[str, int]:
    """The owner a write gives its file: the one asked for, else this process's for a new file
    (an existing file keeps its own)."""
    if new:
        uid = os.getuid() if uid is None else uid
        gid = os.getgid() if gid is None else gid
    return {k: v for k, v in (("uid", uid), ("gid", gid)) if v is not None}


class _Replacement(OpenFile):
    """A file written anywhere that replaces `path` at commit ("wb" after a seek, "w+b"), continuing
    `writer`: the chunks it was given so far are the file's first ones (read back from their
    benefactors should the application return to them). Like a sequential "wb" commit, the
    commit keeps nothing of the version it replaces, even if another writer committed one since
    `base_version` (the merge then cuts that version to nothing)."""

    def __init__(self, fs: Client, path: str, writer: VersionWriter, base_version: int, opened_at: float,
                 attrs: dict[str, Any]) -> None:
        super().__init__(fs, path, None, truncate=True)
        self.continue_writer(writer, writer.laid_out())  # whole chunks, in order: what it was given
        self.changes.cut = 0
        self.base_version = base_version
        self.opened_at = opened_at
        self.attrs.update(attrs)


class WriteFile(_CommitOnExit, AbstractBufferedFile):  # type: ignore[misc]
    buffer: io.BytesIO
    closed: bool
    forced: bool
    loc: int

    def __init__(self, fs: Client, path: str, mode: str = "wb", uid: int | None = None, gid: int | None = None,
                 **kwargs: Any) -> None:
        opened_at = time.perf_counter()
        self.chunk_size = fs.settings.chunk_size
        super().__init__(fs, path, mode=mode, block_size=self.chunk_size, cache_type="none", **kwargs)
        try:
            latest = fs.latest_map(path)
            self.writer = fs.new_writer(path, opened_at, known=fs.held_chunks(latest))
        except BaseException:
            self.closed = True  # refused (no write access, no manager): nothing to commit or abort later
            raise
        self.base_version = latest.version if latest is not None else 0
        self.attrs: dict[str, Any] = _owner(latest is None, uid, gid)
        self.opened_at = opened_at
        self.result: CommitResult | None = None
        self._file: _Replacement | None = None  # once the application seeks: the file is written anywhere

    def write(self, data: Any) -> int:
        """Whole chunks go straight to the writer, which copies each once, into its wire frame;
        only a partial chunk waits in fsspec's buffer."""
        if self.closed or self.forced or not self.writable():
            return int(super().write(data))  # fsspec raises the right error
        if self._file is not None:
            n = self._file.write(data, self.loc)
            self.loc += n
            return n
        view = memoryview(data).cast("B")
        size, chunk, pos = len(view), self.chunk_size, 0
        pending = self.buffer.tell()
        if pending:
            pos = min(size, chunk - pending)
            self.buffer.write(view[:pos])
            if pending + pos == chunk:
                self.writer.add(self.buffer.getbuffer())
                self.buffer = io.BytesIO()
        while size - pos >= chunk:
            self.writer.add(view[pos : pos + chunk])
            pos += chunk
        if pos < size:
            self.buffer.write(view[pos:])
        self.loc += size
        return size

    def seekable(self) -> bool:
        return not self.closed

    def seek(self, loc: int, whence: int = io.SEEK_SET) -> int:
        """Seeking where the file already is changes nothing; elsewhere (back to patch a header, or
        past the end: a hole) the file is written anywhere from then on."""
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        size = self._file.size if self._file is not None else self.loc  # written in order: loc is the end
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.loc, io.SEEK_END: size}.get(whence)
        if base is None:
            raise InvalidArgument(f"seek: whence {whence} is not 0, 1 or 2")
        target = base + int(loc)
        if target < 0:
            raise InvalidArgument(f"seek to {target}: before the start of {self.path}")
        if target != self.loc:
            self._anywhere()
        self.loc = target
        return target

    def truncate(self, size: int | None = None) -> int:
        """Cut or extend the file to `size` bytes (default: the position); the position stays."""
        if self.closed or self.forced:
            raise ValueError("I/O operation on closed file.")
        size = self.loc if size is None else size
        if self._file is not None or size != self.loc:
            self._anywhere().truncate(size)
        return size

    def _anywhere(self) -> _Replacement:
        """The file as one written anywhere: its chunks sent so far, then the partial one buffered."""
        if self._file is None:
            if self.forced:
                raise ValueError("This file has been force-flushed, can only close")
            f = _Replacement(self.fs, self.path, self.writer, self.base_version, self.opened_at, self.attrs)
            if self.buffer.tell():
                f.write(self.buffer.getvalue(), f.size)
            self.buffer = io.BytesIO()
            self._file = f
        return self._file

    def _upload_chunk(self, final: bool = False) -> bool:
        if not final:
            return False  # write() already sent every whole chunk; the tail waits for close()
        if self.buffer.tell():
            self.writer.add(self.buffer.getbuffer())
        self._finish()
        return True

    def _finish(self) -> None:
        def commit() -> CommitResult:
            if self._file is not None:
                try:
                    result = self._file.commit()
                except BaseException:
                    self._file.abort()
                    raise
                assert result is not None  # a replacement always commits
                self.result = result
                return result
            try:
                stats = self.writer.finish()
                version = self.writer.commit(manager_pb2.FileAttrs(**self.attrs) if self.attrs else None)
            except BaseException:
                self.writer.abort()  # what it stored is freed now, not when the lease runs out
                raise
            self.result = CommitResult(self.path, version, stats.bytes_written, stats,
                                       time.perf_counter() - self.opened_at)
            self.fs.record(self.result)
            return self.result

        if self.fs.settings.close_mode == "buffered":
            self.fs.background.start(commit)
        else:
            commit()

    def discard(self) -> None:
        """Close without committing."""
        if not self.closed:
            if self._file is not None:
                self._file.abort()
            self.writer.abort()
            self.closed = True

    def close(self) -> None:
        try:
            super().close()
        except BaseException:
            self.writer.abort()
            self.closed = True
            raise


class ReadFile(AbstractBufferedFile):  # type: ignore[misc]
    def __init__(self, fs: Client, path: str, reader: VersionReader, **kwargs: Any) -> None:
        self.reader = reader
        self.version = reader.version
        super().__init__(fs, path, mode="rb", block_size=fs.settings.read_ahead, cache_type="readahead",
                         size=reader.size, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.reader.read_range(start, end)


class UpdateFile(_CommitOnExit, io.RawIOBase):
    """A file opened to update ("r+b": it must exist), append ("ab", "a+b": created if missing) or
    replace while reading back what it wrote ("w+b": starts empty)."""

    def __init__(self, fs: Client, path: str, mode: str, uid: int | None = None, gid: int | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.path = path
        self.mode = mode
        self._append = mode.startswith("a")
        if mode.startswith("w"):
            opened_at = time.perf_counter()
            latest = fs.latest_map(path)
            writer = fs.new_writer(path, opened_at, known=fs.held_chunks(latest))
            self._file: OpenFile = _Replacement(fs, path, writer, latest.version if latest is not None else 0,
                                                opened_at, _owner(latest is None, uid, gid))
        else:
            try:
                base: VersionReader | None = fs.reader(path)
            except NotFound:
                if not self._append:
                    raise
                base = None
            self._file = OpenFile(fs, path, base, truncate=False)
            self._file.attrs.update(_owner(base is None, uid, gid))
            if base is None:
                self._file.changed = True  # a new file: committed at close even if nothing is written
        self._pos = self._file.size if self._append else 0
        self.result: CommitResult | None = None

    def readable(self) -> bool:
        return not self._append or "+" in self.mode

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        return self._file.size

    def readinto(self, buffer: Any) -> int:
        if not self.readable():
            raise io.UnsupportedOperation(f"{self.path} is open for appending only ({self.mode!r})")
        data = self._file.read(len(buffer), self._pos)
        memoryview(buffer).cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        n = self._file.write(data, self._pos, append=self._append)
        self._pos = self._file.size if self._append else self._pos + n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._file.size}.get(whence)
        if base is None:
            raise InvalidArgument(f"seek: whence {whence} is not 0, 1 or 2")
        if base + offset < 0:
            raise InvalidArgument(f"seek to {base + offset}: before the start of {self.path}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self._file.truncate(size)
        return size

    def commit(self) -> CommitResult | None:
        """Commit what was written so far (as fsync on a mounted file does); the file stays open."""
        result = self._file.commit()
        if result is not None:
            self.result = result
        return result

    def discard(self) -> None:
        """Close without committing: what this file wrote since its last commit is dropped."""
        if not self.closed:
            self._file.abort()
            super().close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.commit()
        except BaseException:
            self._file.abort()
            raise
        finally:
            super().close()


def check_mode(mode: str) -> None:
    if mode not in ("rb", "wb", "w+b", "wb+", "r+b", "rb+", "ab", "a+b", "ab+"):
        raise InvalidArgument(f"mode {mode!r} is not supported (use 'rb', 'wb', 'w+b', 'r+b' or 'ab')")
