"""File objects of the client, on fsspec's AbstractBufferedFile (its buffering is not written twice).

WriteFile cuts what the application writes into chunk_size chunks and hands them to a
VersionWriter; close() commits (close_mode "commit") or leaves the commit to a background thread
("buffered"). Leaving a `with` block by an exception aborts: the previous version stays current.
ReadFile serves ranges of the version committed when it was opened, with fsspec's read-ahead cache.
"""

from __future__ import annotations

import io
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fsspec.spec import AbstractBufferedFile

from memstage.client.reader import VersionReader
from memstage.client.writer import CommitResult

if TYPE_CHECKING:
    from memstage.client.client import Client


class WriteFile(AbstractBufferedFile):  # type: ignore[misc]
    buffer: io.BytesIO
    closed: bool
    forced: bool

    def __init__(self, fs: Client, path: str, mode: str = "wb", **kwargs: Any) -> None:
        opened_at = time.perf_counter()
        self.chunk_size = fs.settings.chunk_size
        super().__init__(fs, path, mode=mode, block_size=self.chunk_size, cache_type="none", **kwargs)
        try:
            self.writer = fs.new_writer(path, opened_at, known=fs.held_chunks(path))
        except BaseException:
            self.closed = True  # refused (no write access, no manager): nothing to commit or abort later
            raise
        self.opened_at = opened_at
        self.result: CommitResult | None = None

    def write(self, data: Any) -> int:
        """Whole chunks go straight to the writer, which copies each once, into its wire frame;
        only a partial chunk waits in fsspec's buffer."""
        if self.closed or self.forced or not self.writable():
            return int(super().write(data))  # fsspec raises the right error
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

    def _upload_chunk(self, final: bool = False) -> bool:
        if not final:
            return False  # write() already sent every whole chunk; the tail waits for close()
        if self.buffer.tell():
            self.writer.add(self.buffer.getbuffer())
        self._finish()
        return True

    def _finish(self) -> None:
        def commit() -> CommitResult:
            try:
                stats = self.writer.finish()
                version = self.writer.commit()
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
            self.writer.abort()
            self.closed = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()

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
