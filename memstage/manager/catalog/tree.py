"""The namespace's tree: explicit directories, kinds of names, renames and deletes of files."""

from __future__ import annotations

import errno

from memstage.errors import FsError, InvalidArgument, NotFound
from memstage.manager.catalog.records import Freed, Names, unpack_map
from memstage.manager.catalog.versions import VersionTable
from memstage.manager.nodes import DIR, FILE, ROW_KINDS, subtree


class TreeTable(VersionTable):
    # -- explicit directories (a directory also exists while a file is below it) ----------------
    def mkdir(self, namespace: str, path: str) -> None:
        with self._lock:
            if self.versions(namespace, path):
                raise InvalidArgument(f"{path}: is a file")
            self._db.execute("INSERT OR IGNORE INTO dirs VALUES (?, ?)", (namespace, path))

    def rmdir(self, namespace: str, path: str) -> None:
        with self._lock:
            if not self.dir_empty(namespace, path):
                raise FsError(errno.ENOTEMPTY, f"{path}: directory not empty")
            if not self._db.execute("DELETE FROM dirs WHERE ns=? AND path=?", (namespace, path)).rowcount:
                raise NotFound(f"{path}: no such directory in namespace {namespace!r}")
            self.drop_node(namespace, path)

    def dir_empty(self, namespace: str, path: str) -> bool:
        with self._lock:
            return not (self.files_under(namespace, path) or self.dirs_under(namespace, path)
                        or any(n.kind in ROW_KINDS for _, n in self.nodes_under(namespace, path)))

    def kind(self, namespace: str, path: str) -> str | None:
        """What `path` names: FILE, DIR, SYMLINK, LINK (another name of a file), a special kind, or None."""
        if path == "/":
            return DIR
        with self._lock:
            node = self.node(namespace, path)
            if node is not None and node.kind in ROW_KINDS:
                return node.kind
            if self.has_versions(namespace, path):
                return FILE
            return DIR if self.is_dir(namespace, path) else None

    def move_tree(self, namespace: str, src: str, dst: str, alive: Names) -> int:
        """Rename by moving rows: the versions (history included), directories and metadata at and
        below `src` go to `dst`, which holds nothing. A version whose drain is under way is drained
        again under its new name (chunks already on the PFS become hard links), so every version
        on the PFS is complete under one name. Returns the files moved."""
        where, span = subtree(namespace, src)
        with self._lock, self._transaction():
            moved = self._db.execute(f"SELECT COUNT(DISTINCT path) FROM versions WHERE {where}", span).fetchone()[0]
            self._retire(where, span)
            draining = self._drains.drop_where(where, span)
            for table in ("versions", "dirs"):
                self._db.execute(f"UPDATE {table} SET path=? || substr(path, ?) WHERE {where}",
                                 (dst, len(src) + 1, *span))
            self.move_nodes(namespace, src, dst)
            requeued = set()
            for old, version in draining:
                new = dst + old[len(src):]
                rec = self._db.execute("SELECT chunk_map, committed_at FROM versions WHERE ns=? AND path=? AND "
                                       "version=?", (namespace, new, version)).fetchone()
                keys = unpack_map(rec[0])
                self._queue_drain(namespace, new, version, [(k, ()) for k in keys], alive, rec[1])
                requeued.add((new, version))
            # Versions already (or partly) on the PFS are drained again under the new name too, as
            # hard links to their chunk files: a new deployment importing the PFS finds them under
            # the name they have now. Their copy under the old name goes once that drain is done.
            _, dst_span = subtree(namespace, dst)
            for new, version, blob, at, pfs_dir, origin, persisted in self._db.execute(
                    f"SELECT path, version, chunk_map, committed_at, pfs_dir, origin, persisted FROM versions "
                    f"WHERE {where} AND persist=1 AND lost=0", dst_span).fetchall():
                old = src + new[len(dst):]
                if pfs_dir or persisted:
                    self._db.execute("UPDATE versions SET pfs_old=?, pfs_dir='', origin='' WHERE ns=? AND path=? "
                                     "AND version=?", (f"{origin or self.deployment_id}:{pfs_dir or namespace + old}",
                                                       namespace, new, version))
                if persisted and (new, version) not in requeued:
                    self._queue_drain(namespace, new, version, [(k, ()) for k in unpack_map(blob)], alive, at)
        return int(moved)

    def rmdir_if_explicit(self, namespace: str, path: str) -> None:
        """An empty directory that a rename replaces: its row and metadata go."""
        with self._lock:
            self._db.execute("DELETE FROM dirs WHERE ns=? AND path=?", (namespace, path))
            self.drop_node(namespace, path)

    def is_dir(self, namespace: str, path: str) -> bool:
        """An explicit directory, or one that exists because something is below it (index lookups only)."""
        prefix = path.rstrip("/") + "/"
        span = (namespace, prefix, prefix + "\uffff")
        with self._lock:
            return any(self._db.execute(query, args).fetchone() for query, args in (
                ("SELECT 1 FROM dirs WHERE ns=? AND path=?", (namespace, path)),
                ("SELECT 1 FROM versions WHERE ns=? AND path >= ? AND path < ? LIMIT 1", span),
                ("SELECT 1 FROM dirs WHERE ns=? AND path >= ? AND path < ? LIMIT 1", span)))

    def subdir_count(self, namespace: str, directory: str) -> int:
        """Explicit directories right below `directory` (its link count is 2 plus these)."""
        prefix = directory.rstrip("/") + "/"
        with self._lock:
            return int(self._db.execute(
                "SELECT COUNT(*) FROM dirs WHERE ns=? AND path >= ? AND path < ? AND instr(substr(path, ?), '/') = 0",
                (namespace, prefix, prefix + "\uffff", len(prefix) + 1)).fetchone()[0])

    def dirs_under(self, namespace: str, directory: str, after: str = "") -> list[str]:
        """Directories below `directory`, at any depth (after: only paths past <directory>/<after>)."""
        prefix = directory.rstrip("/") + "/"
        low, op = (prefix + after, ">") if after else (prefix, ">=")
        with self._lock:
            return [p for (p,) in self._db.execute(f"SELECT path FROM dirs WHERE ns=? AND path {op} ? AND path < ?",
                                                   (namespace, low, prefix + "\uffff"))]

    def rename_dirs(self, namespace: str, src: str, dst: str) -> None:
        with self._lock:
            for path in [src, *self.dirs_under(namespace, src)]:
                moved = dst + path[len(src):]
                if self._db.execute("DELETE FROM dirs WHERE ns=? AND path=?", (namespace, path)).rowcount:
                    self._db.execute("INSERT OR IGNORE INTO dirs VALUES (?, ?)", (namespace, moved))

    def delete_file(self, namespace: str, path: str) -> tuple[int, Freed]:
        """Delete every version of a file, and its PFS copies unless the policy keeps them
        (keep_deleted). Returns (versions deleted, chunks to free from memory -> the benefactors
        holding them)."""
        keep_on_pfs = self.policy(namespace).keep_deleted
        with self._lock:
            rows = self._db.execute("SELECT version FROM versions WHERE ns=? AND path=?",
                                    (namespace, path)).fetchall()
            if not rows:
                raise NotFound(f"{path}: no such file in namespace {namespace!r}")
            freed: Freed = {}
            with self._transaction():
                self._retire("ns=? AND path=?", (namespace, path))
                for (version,) in rows:
                    freed.update(self._drop_version(namespace, path, version, keep_record=False,
                                                    off_pfs=not keep_on_pfs))
                # Its queued drains go too (the benefactor reports any it already took as missing).
                self._drains.drop_where("ns=? AND path=?", (namespace, path))
                self.drop_node(namespace, path)
            return len(rows), freed
