"""What leaves the catalog: versions dropped, names retired, and their chunk files on the PFS
(drainer.prune does the file system side)."""

from __future__ import annotations

from pathlib import Path

from memstage.drainer.layout import parse_name
from memstage.drainer.prune import PfsCopy
from memstage.errors import InvalidPath
from memstage.manager.catalog.records import Freed, Names, unpack_map
from memstage.manager.catalog.store import CatalogStore
from memstage.paths import split_drained


class PfsCopies(CatalogStore):
    def _retire(self, where: str, args: tuple[str, ...]) -> None:
        """(inside a transaction) The names matching `where` give up their versions: their highest
        number is kept, so that a new file under such a name goes on from it."""
        self._db.execute(f"INSERT INTO retired SELECT ns, path, MAX(version) FROM versions WHERE {where} GROUP BY "
                         "ns, path ON CONFLICT(ns, path) DO UPDATE SET version=MAX(version, excluded.version)", args)

    def _drop_version(self, namespace: str, path: str, version: int, keep_record: bool, off_pfs: bool = True
                      ) -> Freed:
        """Take a version out of memory (keep_record: it stays, readable from the PFS) or out of the
        catalog altogether. Returns the chunks no in-memory version needs any more, with their holders."""
        blob, in_memory, persist, pfs_dir, origin = self._db.execute(
            "SELECT chunk_map, in_memory, persist, pfs_dir, origin FROM versions WHERE ns=? AND path=? AND version=?",
            (namespace, path, version)).fetchone()
        if not keep_record and persist and off_pfs:  # its chunk files (all or some) go from the PFS too
            self._trash_copy(namespace, path, version, pfs_dir, origin, blob)
            self._trash_renamed(namespace, path, version)
        freed: Freed = {}
        for key in set(unpack_map(blob)):
            if key.is_hole:
                continue
            ik = (namespace, key)
            dropped = self._bump(ik, 0 if keep_record else -1, -1 if in_memory else 0)
            if dropped:
                freed[ik] = dropped
        if keep_record:
            self._db.execute("UPDATE versions SET in_memory=0 WHERE ns=? AND path=? AND version=?",
                             (namespace, path, version))
        else:
            self._db.execute("DELETE FROM versions WHERE ns=? AND path=? AND version=?", (namespace, path, version))
        return freed

    def _trash_copy(self, namespace: str, path: str, version: int, pfs_dir: str, origin: str, blob: bytes) -> None:
        """(inside a transaction) A version's chunk files are to be removed from the PFS."""
        copy = PfsCopy(pfs_dir or f"{namespace}{path}", origin or self.deployment_id, version)
        self._trash.append((namespace, copy, tuple(k for k in set(unpack_map(blob)) if not k.is_hole)))

    def _trash_renamed(self, namespace: str, path: str, version: int) -> None:
        """(inside a transaction) A renamed version's copy under its old name goes, if it has one."""
        row = self._db.execute("SELECT pfs_old, chunk_map FROM versions WHERE ns=? AND path=? AND version=?",
                               (namespace, path, version)).fetchone()
        if row and row[0]:
            origin, _, old_dir = row[0].partition(":")
            self._trash_copy(namespace, path, version, old_dir, origin, row[1])
            self._db.execute("UPDATE versions SET pfs_old='' WHERE ns=? AND path=? AND version=?",
                             (namespace, path, version))

    def _trash_stray(self, drained: str) -> None:
        """(inside a transaction) A chunk file drained for a task that is no longer queued: removed
        (with the rest of its version in that directory) unless a version of that name and number
        still has its copy there."""
        try:
            namespace, _ = split_drained(drained)
        except InvalidPath:
            return
        parsed = parse_name(Path(drained))
        if parsed is None:
            return
        directory = drained.rsplit("/", 1)[0]
        path = directory[len(namespace):]
        if self._db.execute("SELECT 1 FROM versions WHERE ns=? AND version=? AND (pfs_dir=? OR (pfs_dir='' AND "
                            "path=?) OR pfs_old LIKE ?) LIMIT 1",
                            (namespace, parsed.version, directory, path, f"%:{directory}")).fetchone():
            return
        self._trash.append((namespace, PfsCopy(directory, parsed.deployment, parsed.version), (parsed.key,)))

    def take_pfs_trash(self) -> tuple[list[PfsCopy], Names]:
        """Chunk files of versions let go since the last call, to remove from the PFS, and the names
        among them to keep: a chunk another version still needs reads its copy by that name."""
        with self._lock:
            trash, self._trash = self._trash, []
            keep = {d for ns, _, keys in trash for k in keys
                    if self._index.refs((ns, k)) > 0 and (d := self._index.drained((ns, k)))}
        return [copy for _, copy, _ in trash], keep

    def pfs_references(self, namespace: str) -> tuple[set[tuple[str, str, int]], Names]:
        """What of a namespace's PFS directory the catalog refers to: (directory, deployment, version)
        of every version it knows, and every chunk's drained name (memstage gc keeps both)."""
        with self._lock:
            versions: set[tuple[str, str, int]] = set()
            for path, version, pfs_dir, origin, pfs_old in self._db.execute(
                    "SELECT path, version, pfs_dir, origin, pfs_old FROM versions WHERE ns=?", (namespace,)):
                versions.add((pfs_dir or f"{namespace}{path}", origin or self.deployment_id, version))
                if pfs_old:  # a renamed version's copy under its old name, until its new one is complete
                    old_origin, _, old_dir = pfs_old.partition(":")
                    versions.add((old_dir, old_origin, version))
            names = {d for (d,) in self._db.execute("SELECT drained FROM chunks WHERE ns=? AND drained IS NOT NULL",
                                                    (namespace,))}
        return versions, names
