"""Retention: which versions and checkpoints stay in memory and on the PFS. Pure: rows in (plain
tuples, newest first), decisions out; the catalog reads and writes the rows.

- persist_every N selects for the PFS the first checkpoint of a series (so that a job that dies
  early has one there) and every N-th; 0 selects none.
- keep_versions K keeps a file's K newest versions in memory, and a step series' K newest
  checkpoints before the one being written. A version past them leaves memory: kept on the PFS
  (evicted) if persisted, deleted if never selected; one selected and not yet drained waits.
- pfs_keep K keeps on the PFS the K newest checkpoints of a series that are wholly persisted (or,
  outside a series, a path's K newest persisted versions); 0 keeps all.
- A user may ask for one version (memstage persist, free): persist queues its drain whatever
  persist_every said; free takes it out of memory only once it is on the PFS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

EVICT, DELETE, WAIT = "evict", "delete", "wait"


def selected(seq: int, every: int) -> bool:
    """persist_every: is the seq-th checkpoint (1-based) of its series selected for the PFS?"""
    return every > 0 and (seq == 1 or seq % every == 0)


def past_keep(newest_first: Sequence[T], keep: int) -> Sequence[T]:
    """What lies beyond the `keep` newest."""
    return newest_first[keep:]


def series_cutoff(newest_seq: int, keep: int) -> int:
    """A step series' checkpoints numbered below this leave memory: the newest (being written)
    and the `keep` before it stay."""
    return newest_seq - keep


def leaving(persist: bool, persisted: bool) -> str:
    """What happens to a version past keep_versions: EVICT (its record stays, read from the PFS),
    DELETE (never selected for the PFS) or WAIT (selected, not drained yet: never evicted undrained)."""
    if persisted:
        return EVICT
    if not persist:
        return DELETE
    return WAIT


def leaves_whole(versions: Iterable[tuple[bool, bool]]) -> bool:
    """A checkpoint's versions ((persist, persisted) each) all leave memory now: none waits."""
    return all(leaving(persist, persisted) != WAIT for persist, persisted in versions)


def pfs_expired(steps_newest_first: Iterable[tuple[T, int, int]], keep: int) -> list[T]:
    """pfs_keep over a step series: (step, versions selected and not drained, versions persisted)
    of its checkpoints, newest first -> the steps to leave the PFS. Only checkpoints wholly on the
    PFS count (and go): one still draining is neither kept nor removed."""
    if keep <= 0:
        return []
    done = [step for step, undrained, on_pfs in steps_newest_first if on_pfs and not undrained]
    return done[keep:]


def chunk_file_goes(refs: int, drained: bool) -> bool:
    """A version that stays in memory leaves the PFS: its chunk file goes too if only that version
    refers to the chunk (else another version still reads it there)."""
    return refs == 1 and drained


# What `memstage persist` and `memstage free` do to one version.
QUEUE, ALREADY, REFUSE = "queue", "already", "refuse"


def on_persist(persisted: bool, waiting: bool, lost: bool) -> str:
    """Persist asked for a version: QUEUE its drain (whatever persist_every said, and again after a
    drain error), ALREADY when it is on the PFS or waiting to be (queued, or a pointer file waiting
    for its checkpoint), REFUSE when it is lost (nothing is left to drain)."""
    if persisted:
        return ALREADY
    if lost:
        return REFUSE
    return ALREADY if waiting else QUEUE


def on_free(in_memory: bool, persisted: bool) -> str:
    """Free asked for a version: EVICT it (on the PFS: read from there from then on), ALREADY when
    it is not in memory, REFUSE when memory holds its only copy (not persisted, or still draining)."""
    if not in_memory:
        return ALREADY
    return EVICT if persisted else REFUSE
