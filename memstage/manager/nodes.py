"""POSIX metadata of the namespace, kept with the catalog: modes, owners, times, symbolic links and
hard links.

A row per name that has metadata of its own: a file's or directory's mode, owner and times (a name
without a row shows defaults: its latest commit's time, 0644/0755), a symbolic link (which exists
by its row alone), or another name of a file (kind "link": a hard link, whose target is the name
that holds the file's versions, its canonical name). Every call on a hard link's name is made on
the canonical name; unlinking the canonical name hands its versions to one of the other names.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from memstage.paths import parent_dirs

if TYPE_CHECKING:
    import sqlite3
    import threading


def subtree(ns: str, path: str) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause (and its arguments) for `path` and every name below it in namespace `ns`.
    Each side of the OR names `ns` itself: only then does SQLite search the (ns, path) index for
    both, where `ns=? AND (path=? OR ...)` reads every name of the namespace."""
    prefix = path + "/"
    return "((ns=? AND path=?) OR (ns=? AND path >= ? AND path < ?))", (ns, path, ns, prefix, prefix + "\uffff")


NODES_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    ns TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL,
    gid INTEGER NOT NULL, atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    target TEXT NOT NULL DEFAULT '', ino INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ns, path));
CREATE INDEX IF NOT EXISTS nodes_by_target ON nodes (ns, target) WHERE kind = 'link';
"""

FILE, DIR, SYMLINK, LINK = "file", "dir", "symlink", "link"
# FIFOs, sockets and device nodes: a name and its metadata only (the kernel serves them, not memstage).
SPECIAL = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev"}
_TYPE_BITS = {FILE: stat.S_IFREG, LINK: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK,
              **{kind: bits for bits, kind in SPECIAL.items()}}
DEFAULT_MODE = {FILE: 0o644, LINK: 0o644, DIR: 0o755, SYMLINK: 0o777, **{kind: 0o644 for kind in SPECIAL.values()}}
# Kinds that exist by their row alone (a file exists by its versions, a directory by its entries too).
ROW_KINDS = {SYMLINK, LINK, *SPECIAL.values()}


@dataclass(frozen=True, slots=True)
class Node:
    kind: str
    mode: int  # permission bits only
    uid: int  # -1: never set
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: str = ""
    ino: int = 0  # kept across updates and renames: the number given at creation, or the row's id + 1

    @property
    def st_mode(self) -> int:
        return _TYPE_BITS[self.kind] | (self.mode & 0o7777)

    @classmethod
    def default(cls, kind: str, when_ns: int) -> Node:
        return cls(kind, DEFAULT_MODE[kind], -1, -1, when_ns, when_ns, when_ns)


@dataclass(frozen=True, slots=True)
class Attrs:
    """Changes a caller asks for; None leaves a field as it is."""

    mode: int | None = None
    ino: int | None = None  # only for a new name: the number its creator gave it
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    access: bool = False  # a read's atime update: not a change (ctime stays)

    def apply(self, node: Node, now_ns: int) -> Node:
        return replace(node, mode=node.mode if self.mode is None else self.mode & 0o7777,
                       ino=node.ino if node.ino or self.ino is None else self.ino,
                       uid=node.uid if self.uid is None else self.uid,
                       gid=node.gid if self.gid is None else self.gid,
                       atime_ns=node.atime_ns if self.atime_ns is None else self.atime_ns,
                       mtime_ns=node.mtime_ns if self.mtime_ns is None else self.mtime_ns,
                       ctime_ns=node.ctime_ns if self.access else now_ns)


def now_ns() -> int:
    return time.time_ns()


class NodeTable:
    """The nodes rows; used by the Catalog, inside its lock (and its transactions for changes)."""

    _db: sqlite3.Connection
    _lock: threading.RLock

    def node(self, ns: str, path: str) -> Node | None:
        row = self._db.execute("SELECT kind, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, target, "
                               "CASE ino WHEN 0 THEN rowid + 1 ELSE ino END FROM nodes WHERE ns=? AND path=?",
                               (ns, path)).fetchone()
        return Node(*row) if row else None

    def put_node(self, ns: str, path: str, node: Node) -> None:
        # An upsert, not a replace: the row keeps its rowid and ino, which give the name's inode number.
        self._db.execute("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(ns, path) "
                         "DO UPDATE SET kind=excluded.kind, mode=excluded.mode, uid=excluded.uid, gid=excluded.gid, "
                         "atime_ns=excluded.atime_ns, mtime_ns=excluded.mtime_ns, ctime_ns=excluded.ctime_ns, "
                         "target=excluded.target",
                         (ns, path, node.kind, node.mode, node.uid, node.gid, node.atime_ns, node.mtime_ns,
                          node.ctime_ns, node.target, node.ino))

    def drop_node(self, ns: str, path: str) -> None:
        self._db.execute("DELETE FROM nodes WHERE ns=? AND path=?", (ns, path))

    def canonical(self, ns: str, path: str) -> str:
        """The name holding the versions of the file `path` names (itself unless a hard link)."""
        row = self._db.execute("SELECT target FROM nodes WHERE ns=? AND path=? AND kind='link'",
                               (ns, path)).fetchone()
        return row[0] if row else path

    def aliases(self, ns: str, canonical: str) -> list[str]:
        """The other names of a file (hard links to it), in name order."""
        # Sorted here: with ORDER BY, SQLite walks the whole namespace in path order rather than
        # look the target up in nodes_by_target (a stat cost as much as a thousand names).
        return sorted(p for (p,) in self._db.execute("SELECT path FROM nodes WHERE ns=? AND target=? AND "
                                                     "kind='link'", (ns, canonical)))

    def link_counts(self, ns: str, directory: str) -> dict[str, int]:
        """Hard links to each file below `directory`, by the file's path (files without any left out)."""
        prefix = directory.rstrip("/") + "/"
        return dict(self._db.execute("SELECT target, COUNT(*) FROM nodes INDEXED BY nodes_by_target WHERE ns=? "
                                     "AND target >= ? AND target < ? AND kind='link' GROUP BY target",
                                     (ns, prefix, prefix + "\uffff")).fetchall())

    def nodes_under(self, ns: str, directory: str, after: str = "") -> Iterator[tuple[str, Node]]:
        prefix = directory.rstrip("/") + "/"
        low, op = (prefix + after, ">") if after else (prefix, ">=")
        for row in self._db.execute("SELECT path, kind, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, target, "
                                    "CASE ino WHEN 0 THEN rowid + 1 ELSE ino END FROM nodes "
                                    f"WHERE ns=? AND path {op} ? AND path < ?",
                                    (ns, low, prefix + "\uffff")).fetchall():
            yield row[0], Node(*row[1:])

    def touch_dirs(self, ns: str, paths: list[str], when_ns: int) -> None:
        """The directories holding these names changed: their mtime and ctime are now."""
        for directory in {parent_dirs(p)[-1] for p in paths}:
            node = self.node(ns, directory) or Node.default(DIR, when_ns)
            if node.kind == DIR:
                self.put_node(ns, directory, replace(node, mtime_ns=when_ns, ctime_ns=when_ns))

    def move_nodes(self, ns: str, src: str, dst: str) -> None:
        """Rows of `src` and everything below it now sit under `dst`; hard links to them follow."""
        where, span = subtree(ns, src)
        self._db.execute("DELETE FROM nodes WHERE ns=? AND path=?", (ns, dst))
        self._db.execute(f"UPDATE nodes SET path=? || substr(path, ?) WHERE {where}", (dst, len(src) + 1, *span))
        self._db.execute(f"UPDATE nodes SET target=? || substr(target, ?) WHERE kind='link' AND "
                         f"{where.replace('path', 'target')}", (dst, len(src) + 1, *span))
