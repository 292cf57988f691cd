"""Redundancy policies of a namespace: how many benefactors may fail before a version held only in
memory is lost.

`none` keeps one copy of each chunk. `replicate:R` keeps R copies on R distinct benefactors and
tolerates R-1 of them failing. Reed-Solomon (`rs:K+M`) is parsed so that the error says what is
supported, not that the syntax is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memstage.errors import SettingError

MAX_COPIES = 8


@dataclass(frozen=True, slots=True)
class Redundancy:
    copies: int = 1

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
        if re.fullmatch(r"rs:\d+\+\d+", value):
            raise SettingError(f"{what}: {value!r}: Reed-Solomon parity is not available in this release; "
                               "use replicate:R (R copies on distinct benefactors)")
        raise SettingError(f"{what}: {text!r} is not a redundancy policy (use none or replicate:R, e.g. replicate:2)")

    def __str__(self) -> str:
        return "none" if self.copies == 1 else f"replicate:{self.copies}"

    @property
    def tolerates(self) -> int:
        """Benefactors that may fail with every committed chunk still in memory somewhere."""
        return self.copies - 1
