"""The catalog's tables, and what a state directory of an earlier release gains when opened."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from memstage.chunks import ChunkKey
from memstage.manager import locationlog
from memstage.manager.nodes import NODES_SCHEMA

_SCHEMA = """
CREATE TABLE IF NOT EXISTS benefactors (
    id TEXT PRIMARY KEY, address TEXT NOT NULL, capacity INTEGER NOT NULL, registered_at REAL NOT NULL,
    incarnation INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS policies (
    ns TEXT PRIMARY KEY, persist_every INTEGER NOT NULL, keep_versions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    ns TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, size INTEGER NOT NULL,
    committed_at REAL NOT NULL, chunk_map BLOB NOT NULL,
    persist INTEGER NOT NULL, persisted INTEGER NOT NULL DEFAULT 0, in_memory INTEGER NOT NULL DEFAULT 1,
    lost INTEGER NOT NULL DEFAULT 0, lost_reason TEXT NOT NULL DEFAULT '', drain_error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (ns, path, version));
CREATE TABLE IF NOT EXISTS chunks (
    ns TEXT NOT NULL, hash BLOB NOT NULL, length INTEGER NOT NULL, refs INTEGER NOT NULL,
    mem_refs INTEGER NOT NULL, drained TEXT, PRIMARY KEY (ns, hash, length));
CREATE TABLE IF NOT EXISTS location_log (seq INTEGER PRIMARY KEY, ops BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dirs (
    ns TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (ns, path));
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, digest BLOB NOT NULL, grants TEXT NOT NULL, created_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS retired (
    ns TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (ns, path));
CREATE TABLE IF NOT EXISTS checkpoints (
    ns TEXT NOT NULL, series TEXT NOT NULL, step INTEGER NOT NULL, seq INTEGER NOT NULL,
    started_at REAL NOT NULL, left_memory INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ns, series, step));
CREATE TABLE IF NOT EXISTS stripes (
    id INTEGER PRIMARY KEY, ns TEXT NOT NULL, k INTEGER NOT NULL, m INTEGER NOT NULL, size INTEGER NOT NULL,
    members BLOB NOT NULL);
"""
# Columns added since the first schema: state directories of earlier releases gain them at open.
_ADDED_COLUMNS = (
    ("benefactors", "incarnation", "INTEGER NOT NULL DEFAULT 0"),
    ("versions", "lost_reason", "TEXT NOT NULL DEFAULT ''"),
    ("versions", "drain_error", "TEXT NOT NULL DEFAULT ''"),
    ("nodes", "ino", "INTEGER NOT NULL DEFAULT 0"),
    ("policies", "redundancy", "TEXT NOT NULL DEFAULT ''"),
    # The checkpoint a version belongs to ("<series>:<step>"; "" = the version is one by itself),
    # and whether its drain waits for the rest of that checkpoint (a pointer file).
    ("versions", "checkpoint", "TEXT NOT NULL DEFAULT ''"),
    ("versions", "deferred", "INTEGER NOT NULL DEFAULT 0"),
    ("checkpoints", "left_memory", "INTEGER NOT NULL DEFAULT 0"),
    # Where a version's chunk files are on the PFS (relative to its root; "" = <ns>/<path>, as
    # drained before a rename) and the deployment that drained them ("" = this one).
    ("versions", "pfs_dir", "TEXT NOT NULL DEFAULT ''"),
    ("versions", "origin", "TEXT NOT NULL DEFAULT ''"),
    # A renamed version's earlier copy on the PFS ("<deployment>:<directory>"), removed once its
    # drain under the new name is complete.
    ("versions", "pfs_old", "TEXT NOT NULL DEFAULT ''"),
    ("policies", "pfs_keep", "INTEGER NOT NULL DEFAULT 0"),
    ("policies", "quota_memory", "INTEGER NOT NULL DEFAULT 0"),
    ("policies", "quota_sessions", "INTEGER NOT NULL DEFAULT 0"),
    ("policies", "keep_deleted", "INTEGER NOT NULL DEFAULT 0"),
)



def create(db: sqlite3.Connection) -> None:
    """Every table and index, with the columns added since the first schema."""
    db.executescript(_SCHEMA + NODES_SCHEMA)
    for table, column, decl in _ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    db.execute("CREATE INDEX IF NOT EXISTS versions_by_checkpoint ON versions (ns, checkpoint)")


def migrate_locations(db: sqlite3.Connection) -> None:
    """A state directory of an earlier release keeps one row per location: it becomes a snapshot
    in the location log."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='locations'").fetchone():
        return
    columns = {row[1] for row in db.execute("PRAGMA table_info(locations)")}
    gen = "gen" if "gen" in columns else "0"
    rows = db.execute(f"SELECT ns, hash, length, benefactor, {gen} FROM locations").fetchall()
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO location_log (ops) VALUES (?)", [(blob,) for blob in locationlog.snapshot(
        (ns, ChunkKey(h, n), bf, g) for ns, h, n, bf, g in rows)])
    db.execute("DROP TABLE locations")
    db.execute("COMMIT")


def fsync_dir(path: Path) -> None:
    """The directory entries of the database and its WAL survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
