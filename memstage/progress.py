"""A progress line for long operations (prefetch, restore): shown only on a terminal, redrawn at
most a few times a second, and ended cleanly so the summary that follows starts on its own line."""

from __future__ import annotations

import time
from typing import TextIO

from memstage.units import format_size

REDRAW_S = 0.2


class Progress:
    def __init__(self, verb: str, stream: TextIO) -> None:
        self._verb = verb
        self._stream = stream
        self._shown = stream.isatty()
        self._last = 0.0
        self._drawn = False
        self._undrawn: tuple[int, int, tuple[int, int] | None] | None = None  # the newest numbers, not shown yet

    def bytes(self, done: int, total: int, files: tuple[int, int] | None = None) -> None:
        if not self._shown:
            return
        now = time.monotonic()
        if now - self._last < REDRAW_S and done < total:
            self._undrawn = (done, total, files)
            return
        self._last = now
        self._draw(done, total, files)

    def _draw(self, done: int, total: int, files: tuple[int, int] | None) -> None:
        self._undrawn = None
        share = f" ({100 * done // total}%)" if total else ""
        counted = f"{files[0]}/{files[1]} files, " if files is not None else ""
        self._stream.write(f"\r{self._verb} {counted}{format_size(done)} of {format_size(total)}{share}\033[K")
        self._stream.flush()
        self._drawn = True

    def end(self) -> None:
        """The last numbers are shown (a run ending in failures may never reach its total), then a
        new line."""
        if self._undrawn is not None:
            self._draw(*self._undrawn)
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
