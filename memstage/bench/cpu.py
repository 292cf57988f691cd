"""CPU time of other running processes, from Linux's /proc: what a benchmark charges to the
deployment's processes while clients write to it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (0 once it is gone)."""
    try:
        # The command name in parentheses may hold spaces: the fields counted from its end.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _children(pid: int) -> list[int]:
    from memstage.procs import children

    with contextlib.suppress(OSError):  # gone
        return children(pid)
    return []


def tree_seconds(pid: int) -> float:
    """CPU seconds of a process and of the processes it started that still run (a manager's
    heartbeat process and receipt checkers)."""
    return process_seconds(pid) + sum(tree_seconds(child) for child in _children(pid))


def total_seconds(pids: Iterable[int]) -> float:
    """tree_seconds summed over processes."""
    return sum(tree_seconds(pid) for pid in pids)
