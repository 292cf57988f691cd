"""Protection: whether a chunk, a version or a checkpoint has what its namespace's redundancy asks.
Pure: plain data in (counts, flags), a verdict out; the catalog reads the index and calls these.

A chunk on the PFS needs nothing more. Otherwise replicate:R asks for R live copies, and rs:K+M
for a stripe with every member in place (manager.stripes.spread: none to rebuild). A version is
lost, protected (on the PFS, or every chunk has what it asks) or degraded; a checkpoint's state
sums up those of its versions.
"""

from __future__ import annotations

from collections.abc import Iterable

from memstage.redundancy import Redundancy

PROTECTED, DEGRADED, LOST = "protected", "degraded", "lost"
# A checkpoint's states besides PROTECTED and LOST, from the most to the least settled.
PERSISTED, DRAINING, IN_MEMORY, DROPPED = "persisted", "draining", "in_memory", "dropped"


def chunk_short(redundancy: Redundancy, drained: bool, live_copies: int, stripes_whole: Iterable[bool]) -> bool:
    """The chunk lacks the protection the policy asks. stripes_whole: for each stripe it is a
    member of, whether that stripe has no member to rebuild (read lazily: only parity asks)."""
    if drained:
        return False
    if redundancy.parity:
        return not any(stripes_whole)
    return live_copies < redundancy.copies


def settled(lost: bool, persisted: bool) -> str | None:
    """A version's state when its flags decide it (None: its chunks do)."""
    if lost:
        return LOST
    if persisted:
        return PROTECTED
    return None


def by_chunks(short: bool) -> str:
    """The state of a version in memory that is neither lost nor persisted: its chunks decide."""
    return DEGRADED if short else PROTECTED


def version_state(lost: bool, persisted: bool, short: bool) -> str:
    """LOST, PROTECTED or DEGRADED; `short` (some chunk lacks protection) counts only in memory."""
    return settled(lost, persisted) or by_chunks(short)


def tally(states: Iterable[str]) -> tuple[int, int, int]:
    """(protected, degraded, lost) of version states."""
    counts = {PROTECTED: 0, DEGRADED: 0, LOST: 0}
    for state in states:
        counts[state] += 1
    return counts[PROTECTED], counts[DEGRADED], counts[LOST]


def checkpoint_state(lost: bool, persisted: bool, persist: bool, in_memory: bool) -> str:
    """A checkpoint's state from its versions' flags (lost: any lost; persisted and persist: all
    of them; in_memory: any): LOST, PERSISTED, DRAINING, IN_MEMORY or DROPPED. An IN_MEMORY one
    may be PROTECTED instead (may_be_protected)."""
    if lost:
        return LOST
    if persisted:
        return PERSISTED
    if persist:
        return DRAINING
    return IN_MEMORY if in_memory else DROPPED


def may_be_protected(state: str, redundancy: Redundancy) -> bool:
    """Only a checkpoint still in memory alone, in a namespace asking for redundancy, can be
    PROTECTED (when no version of it is short)."""
    return state == IN_MEMORY and redundancy.tolerates > 0
