"""Redundancy policies of a namespace: how many benefactors may fail before a version held only in
memory is lost.

`none` keeps one copy of each chunk. `replicate:R` keeps R copies on R distinct benefactors and
tolerates R-1 of them failing. `rs:K+M` keeps stripes of K data chunks and M Reed-Solomon parity
chunks on K+M distinct benefactors and tolerates any M of them failing (memstage.erasure).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memstage.errors import SettingError

MAX_COPIES = 8
# Bounds of rs:K+M (memstage.erasure's codec takes these). Here, not there: every process reads
# settings, and only benefactors and readers of stripes need the codec's libraries loaded.
MAX_K = 16
MAX_M = 8


@dataclass(frozen=True, slots=True)
class Redundancy:
    copies: int = 1
    k: int = 0  # rs:K+M: data and parity members of a stripe (0: no parity)
    m: int = 0

    @classmethod
    def parse(cls, text: str, what: str = "redundancy") -> Redundancy:
        value = str(text).strip().lower()
        if value in ("", "none"):
            return cls(1)
        m = re.fullmatch(r"replicate:(\d+)", value)
        if m:
            copies = int(m.group(1))
            if not 1 <= copies <= MAX_COPIES:
                raise SettingError(f"{what}: replicate:R needs R between 1 and {MAX_COPIES}, not {copies}")
            return cls(copies)
        m = re.fullmatch(r"rs:(\d+)\+(\d+)", value)
        if m:
            k, parity = int(m.group(1)), int(m.group(2))
            if not (1 <= k <= MAX_K and 1 <= parity <= MAX_M):
                raise SettingError(f"{what}: rs:K+M needs K between 1 and {MAX_K} and M between 1 and {MAX_M}, "
                                   f"not {value}")
            return cls(1, k, parity)
        raise SettingError(f"{what}: {text!r} is not a redundancy policy (use none, replicate:R or rs:K+M, "
                           "e.g. replicate:2 or rs:4+2)")

    def __str__(self) -> str:
        if self.m:
            return f"rs:{self.k}+{self.m}"
        return "none" if self.copies == 1 else f"replicate:{self.copies}"

    @property
    def parity(self) -> bool:
        return self.m > 0

    @property
    def tolerates(self) -> int:
        """Benefactors that may fail with every committed chunk still in memory somewhere."""
        return self.m if self.m else self.copies - 1
