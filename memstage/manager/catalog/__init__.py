"""Catalog: the manager's durable metadata in SQLite (WAL) under its state directory.

One class over one connection and lock, composed of a table per concern: the store (connection,
transactions, the in-memory chunk index and stripes), benefactors, policies and tokens, chunks
and their protection, stripes, what leaves the catalog and the PFS, drains, versions, the
namespace's tree, checkpoints and retention. The rules those tables apply (protection, stripe
spread, retention, drain outcomes) live in pure modules beside them: manager.protection,
manager.stripes, manager.retention, manager.drainrules.
"""

from memstage.manager.catalog.checkpointing import CheckpointTable
from memstage.manager.catalog.records import (
    Backlog,
    DrainOutcome,
    DrainTask,
    FileSummary,
    Freed,
    Holds,
    Names,
    NamespaceSummary,
    NewVersion,
    Placed,
    Policy,
    VersionRecord,
    Wanted,
    pack_map,
    unpack_map,
)
from memstage.manager.catalog.retain import RetentionTable
from memstage.manager.catalog.store import LOG_COMPACT_AT, OPEN_CHECKPOINT, PFS_CHECK_AHEAD

__all__ = ["LOG_COMPACT_AT", "OPEN_CHECKPOINT", "PFS_CHECK_AHEAD", "Backlog", "Catalog", "DrainOutcome", "DrainTask",
           "FileSummary", "Freed", "Holds", "NamespaceSummary", "Names", "NewVersion", "Placed", "Policy",
           "VersionRecord", "Wanted", "pack_map", "unpack_map"]


class Catalog(CheckpointTable, RetentionTable):
    """The manager's catalog (see the module's docstring); every method is one of its tables'."""
