"""Output helpers of the benchmarks: progress on stderr, aligned tables on stdout."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
