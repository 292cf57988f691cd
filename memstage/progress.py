"""A progress line for long operations (copies, prefetch, restore, waiting for drains): shown only
on a terminal, redrawn at most a few times a second, and ended cleanly so the summary that follows
starts on its own line. Rate: the speed of a counter that moves in steps."""

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
        # The newest numbers, not shown yet: (done, total, files, note).
        self._undrawn: tuple[int, int, tuple[int, int] | None, str] | None = None

    @property
    def shown(self) -> bool:
        """Whether this progress is drawn (the stream is a terminal)."""
        return self._shown

    def bytes(self, done: int, total: int, files: tuple[int, int] | None = None, note: str = "") -> None:
        """`note` follows the numbers (a rate, the time to go)."""
        if not self._shown:
            return
        now = time.monotonic()
        if now - self._last < REDRAW_S and done < total:
            self._undrawn = (done, total, files, note)
            return
        self._last = now
        self._draw(done, total, files, note)

    def _draw(self, done: int, total: int, files: tuple[int, int] | None, note: str) -> None:
        self._undrawn = None
        share = f" ({100 * done // total}%)" if total else ""
        counted = f"{files[0]}/{files[1]} files, " if files is not None else ""
        self._stream.write(f"\r{self._verb} {counted}{format_size(done)} of {format_size(total)}{share}{note}\033[K")
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


class Rate:
    """The speed of a counter that moves in steps, such as the bytes benefactors report drained
    (each reports a batch of up to 64 chunks once the whole batch is written: at 1 MiB/s a report
    can be a minute away). Measured from one step to the latest, never over a window shorter than
    the gap between two steps, so a pause between reports does not read as a stop. The counter's
    first step only marks a start: the batch it ends began before it was first seen."""

    def __init__(self) -> None:
        self._seen: tuple[float, int] | None = None  # (when, value) last seen
        self._first: tuple[float, int] | None = None  # the first step
        self._latest: tuple[float, int] | None = None  # the latest step after the first

    def add(self, now: float, value: int) -> None:
        if self._seen is not None and value < self._seen[1]:  # counted again from 0 (a manager restart)
            self._first = self._latest = None
        elif self._seen is not None and value > self._seen[1]:
            if self._first is None:
                self._first = (now, value)
            else:
                self._latest = (now, value)
        self._seen = (now, value)

    def per_second(self) -> float | None:
        """Bytes per second between the first and the latest step; None until two steps were seen."""
        if self._first is None or self._latest is None or self._latest[0] <= self._first[0]:
            return None
        return (self._latest[1] - self._first[1]) / (self._latest[0] - self._first[0])

    def moved(self) -> bool:
        """Whether the counter has moved since it was first seen."""
        return self._first is not None
