"""What one writer changed in a file since its base version, and how that merges over a newer one.

A writer's changes are replayed, in commit order, over whatever version is latest when it commits:
its writes (the byte extents it wrote) and its truncates. A truncate that changed the size as the
writer saw it is an operation like a write: the latest version is cut at the lowest length the
writer truncated to, and bytes past that cut read as zeros unless the writer wrote them after.
So disjoint writes of several writers all survive, overlapping bytes are the last committer's,
and a file's content is what replaying each writer's operations in commit order gives.

Pure: no I/O. `Changes` records, `merged_size` and `chunk_plan` say what the merged version is.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class Extents:
    """Sorted, disjoint, non-adjacent half-open byte ranges."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        # Ranges touching or overlapping [start, end) are folded into it.
        lo = bisect.bisect_left(self.ends, start)
        hi = bisect.bisect_right(self.starts, end)
        if lo < hi:
            start = min(start, self.starts[lo])
            end = max(end, self.ends[hi - 1])
        self.starts[lo:hi] = [start]
        self.ends[lo:hi] = [end]

    def cut(self, at: int) -> None:
        """Forget everything at or past `at`."""
        i = bisect.bisect_left(self.ends, at + 1)  # the first range that ends past `at`
        del self.starts[i + 1 :], self.ends[i + 1 :]
        if i < len(self.starts):
            if self.starts[i] >= at:
                del self.starts[i], self.ends[i]
            else:
                self.ends[i] = at

    def within(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of the ranges inside [start, end), clipped."""
        out = []
        i = bisect.bisect_right(self.ends, start)
        while i < len(self.starts) and self.starts[i] < end:
            out.append((max(start, self.starts[i]), min(end, self.ends[i])))
            i += 1
        return out

    @property
    def end(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __bool__(self) -> bool:
        return bool(self.starts)

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()


@dataclass
class Changes:
    """One writer's changes since its base: the extents it wrote and its lowest truncate."""

    written: Extents = field(default_factory=Extents)
    cut: int | None = None  # the lowest length it truncated to (None: it never truncated)

    def write(self, start: int, end: int) -> None:
        self.written.add(start, end)

    def truncate(self, length: int, size: int) -> None:
        """A truncate to `length` of a file the writer saw `size` bytes long (no change: no operation)."""
        if length == size:
            return
        self.written.cut(length)
        self.cut = length if self.cut is None else min(self.cut, length)

    def merged_size(self, latest: int, own: int) -> int:
        """The size of the merge over a latest version `latest` bytes long; `own`: the writer's size.
        After a truncate the writer's size is what replaying its operations gives; without one its
        writes extend the latest version."""
        return own if self.cut is not None else max(latest, self.written.end)

    def base_end(self, latest: int) -> int:
        """Bytes of the latest version at or past this offset are cut (they read as zeros)."""
        return latest if self.cut is None else min(self.cut, latest)

    def clear(self) -> None:
        self.written.clear()
        self.cut = None


def chunk_plan(changes: Changes, chunk: int, size: int) -> tuple[list[int], list[int]]:
    """For a merge to `size` bytes in chunks of `chunk`: (the writer's own chunks, whole: its
    bytes stand), (chunks it wrote only part of: the latest version's bytes with its own laid
    over them). Every other chunk is the latest version's, cut as `base_end` says."""
    whole: list[int] = []
    part: list[int] = []
    seen: set[int] = set()
    for start, end in changes.written.within(0, size):
        for index in range(start // chunk, (end - 1) // chunk + 1):
            if index in seen:
                continue
            seen.add(index)
            lo, hi = index * chunk, min(size, (index + 1) * chunk)
            pieces = changes.written.within(lo, hi)
            (whole if pieces == [(lo, hi)] else part).append(index)
    return whole, part
