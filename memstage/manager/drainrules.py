"""Drain outcomes: who drains a chunk, where a task goes when its chunk is not where it was
looked for, and what a drain result does to its version's state. Pure: flags and names in,
decisions out; the catalog keeps the queue and the rows.

A version's drain ends in one of three ways: every chunk file is on the PFS (persisted, whatever
was feared lost meanwhile), a chunk cannot be drained at all (a drain error: the version stays in
memory, its drain off the queue), or a chunk is readable from nowhere (lost).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from memstage.chunks import ChunkKey
from memstage.errors import InvalidPath
from memstage.paths import split_drained

MOVE, WAIT, CHECK_PFS, LOST = "move", "wait", "check_pfs", "lost"


def drained_under(drained: str, namespace: str) -> bool:
    """A reported chunk file lies in the namespace's directory (else no grant for it reads it)."""
    try:
        return split_drained(drained)[0] == namespace
    except InvalidPath:
        return False


def drainer(is_hole: bool, holder: str, drained: bool, alive: Collection[str]) -> str:
    """The benefactor to drain a chunk: its first live holder (the same one for every copy, so
    duplicates queue in order behind the first and become links); any live one to link a chunk
    already drained, or to write a hole's empty file; "" when nobody can (the version is then lost)."""
    if is_hole:
        return min(alive) if alive else ""
    if holder:
        return holder
    if drained and alive:
        return min(alive)
    return ""


class Next(NamedTuple):
    """Where a task goes: MOVE to owner, WAIT unassigned (its stripe rebuilds the chunk in memory
    first), CHECK_PFS by owner (it looks for the chunk file a dead holder may have written), or
    LOST (its version cannot be drained)."""

    kind: str
    owner: str = ""


def next_holder(owner: str, recoverable: bool, check_pfs: bool, candidates: Collection[str]) -> Next:
    """A task whose holder is gone or did not have the chunk: owner is drainer() over the other
    live benefactors. check_pfs: nobody has looked on the PFS yet (its holder died unreported)."""
    if owner:
        return Next(MOVE, owner)
    if recoverable:
        return Next(WAIT)
    if check_pfs and candidates:
        return Next(CHECK_PFS, min(candidates))
    return Next(LOST)


def missing_reason(key: ChunkKey, benefactor: str, held: bool) -> str:
    """Why a version is lost when `benefactor` reported its chunk missing and nobody else has it."""
    if held:
        return f"chunk {key} was not on benefactor {benefactor} when it was drained"
    return f"chunk {key} was held only by benefactors that are gone, and its chunk file is not on the PFS"


def failed(error: str) -> dict[str, object]:
    """A version's columns once a chunk of it cannot be drained: it stays in memory (retention
    keeps a version selected for the PFS until it is drained)."""
    return {"drain_error": error}


def lost(reason: str) -> dict[str, object]:
    """A version's columns once it cannot be read or drained any more."""
    return {"lost": 1, "lost_reason": reason}


def persisted() -> dict[str, object]:
    """A version's columns once every chunk file is on the PFS: persisted, and no longer lost."""
    return {"persisted": 1, "lost": 0, "lost_reason": ""}
