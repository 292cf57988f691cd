"""Checkpoints of step series: begun and ended by writers, listed, found on the PFS and
wanted in memory again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from memstage.errors import InvalidPath
from memstage.manager.catalog.records import Names, Wanted, pack_map, unpack_map
from memstage.manager.catalog.store import OPEN_CHECKPOINT
from memstage.manager.catalog.tree import TreeTable
from memstage.manager.checkpoints import step_of
from memstage.manager.chunkindex import IndexKey
from memstage.manager.nodes import FILE, LINK, Node
from memstage.manager.pfsimport import FoundVersion
from memstage.manager.protection import PROTECTED, checkpoint_state, may_be_protected
from memstage.paths import normalize_file_path
from memstage.redundancy import Redundancy


class CheckpointTable(TreeTable):
    def begin_checkpoint(self, namespace: str, step: int) -> int | None:
        """Files committed in the namespace from now on belong to checkpoint `step` of its explicit
        series, whoever writes them (a path that names a step itself keeps it), until it ends or
        another begins. Returns the step this one ends, if one was open."""
        with self._lock:
            previous = self._open_checkpoints.get(namespace)
            self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                             (OPEN_CHECKPOINT + namespace, str(step)))
            self._open_checkpoints[namespace] = step
            self.sync()
        return previous

    def end_checkpoint(self, namespace: str) -> int | None:
        """The namespace's open checkpoint is complete. Returns its step (None: none was open)."""
        with self._lock:
            step = self._open_checkpoints.pop(namespace, None)
            self._db.execute("DELETE FROM meta WHERE key=?", (OPEN_CHECKPOINT + namespace,))
            self.sync()
        return step

    def open_checkpoint(self, namespace: str) -> int | None:
        with self._lock:
            return self._open_checkpoints.get(namespace)

    def import_persisted(self, found: Iterable[FoundVersion]) -> int:
        """Versions found on the PFS (drained by earlier deployments: memstage.manager.pfsimport)
        become versions of names this catalog does not know yet: persisted, not in memory, read
        from their chunk files. Their step checkpoints are listed too. Returns how many."""
        by_name: dict[tuple[str, str], list[FoundVersion]] = {}
        for f in found:
            by_name.setdefault((f.namespace, f.path), []).append(f)
        imported = 0
        with self._lock, self._transaction():
            steps: dict[tuple[str, str], dict[int, float]] = {}  # (ns, series) -> step -> first commit
            for (ns, path), versions in by_name.items():
                if self.node(ns, path) is not None or self._db.execute(
                        "SELECT 1 FROM versions WHERE ns=? AND path=? LIMIT 1", (ns, path)).fetchone():
                    continue  # this deployment's own name: what it knows stands
                name = step_of(path)
                for v in versions:
                    self._db.execute("INSERT INTO versions (ns, path, version, size, committed_at, chunk_map, persist, "
                                     "persisted, in_memory, checkpoint, origin) VALUES "
                                     "(?, ?, ?, ?, ?, ?, 1, 1, 0, ?, ?)",
                                     (ns, path, v.version, sum(k.length for k in v.keys), v.committed_at,
                                      pack_map(v.keys), f"{name.series}:{name.step}" if name else "", v.deployment))
                    drained = dict(zip(v.keys, v.drained, strict=True))
                    for key in set(v.keys):
                        if key.is_hole:
                            continue
                        ik = (ns, key)
                        self._bump(ik, 1, 0)
                        if self._index.set_drained(ik, drained[key]):
                            self._db.execute("INSERT INTO chunks VALUES (?, ?, ?, 0, 0, ?) ON CONFLICT(ns, hash, "
                                             "length) DO UPDATE SET drained=excluded.drained",
                                             (ns, key.hash, key.length, drained[key]))
                    imported += 1
                    if name is not None:
                        first = steps.setdefault((ns, name.series), {})
                        first[name.step] = min(first.get(name.step, v.committed_at), v.committed_at)
                when = int(max(v.committed_at for v in versions) * 1e9)
                manifest = max(versions, key=lambda v: v.version).manifest or {}
                self.put_node(ns, path, _with_manifest(Node.default(FILE, when), manifest))
                self.touch_dirs(ns, [path], when)
                for alias in _names(manifest.get("links")):
                    if self.node(ns, alias) is None and not self.has_versions(ns, alias):
                        self.put_node(ns, alias, replace(Node.default(LINK, when), target=path))
                        self.touch_dirs(ns, [alias], when)
            for (ns, series), started in steps.items():
                seq = self._db.execute("SELECT MAX(seq) FROM checkpoints WHERE ns=? AND series=?",
                                       (ns, series)).fetchone()[0] or 0
                for step in sorted(started, key=lambda s: (started[s], s)):
                    seq += 1
                    self._db.execute("INSERT OR IGNORE INTO checkpoints (ns, series, step, seq, started_at, "
                                     "left_memory) VALUES (?, ?, ?, ?, ?, 1)", (ns, series, step, seq, started[step]))
        return imported

    def want_in_memory(self, namespace: str, path: str, alive: Names, latest: bool = False) -> Wanted:
        """The latest version of each file at or below `path` is wanted in memory again (prefetch): a
        persisted one that left memory is counted in memory from now on, so its chunks are kept once
        loaded and evicted as any other's. With `latest`, only the files of the newest persisted
        checkpoint of each step series below `path`. Returns the files, their bytes, the bytes a live
        benefactor holds, and the chunks to load from the PFS (no live holder, a drained file)."""
        with self._lock:
            if latest:
                paths = self.latest_checkpoint_files(namespace, path)
            elif self.kind(namespace, path) == FILE:
                paths = [path]
            else:
                paths = [f.path for f in self.files_under(namespace, path)]
            rows = [self._db.execute("SELECT version, chunk_map, in_memory, persisted, lost FROM versions WHERE ns=? "
                                     "AND path=? ORDER BY version DESC LIMIT 1", (namespace, p)).fetchone()
                    for p in paths]
            wanted = [(p, *row) for p, row in zip(paths, rows, strict=True) if row is not None and not row[4]]
            back = [(p, version, blob) for p, version, blob, in_memory, persisted, _ in wanted
                    if persisted and not in_memory]
            if back:
                with self._transaction():
                    for p, version, blob in back:
                        self._db.execute("UPDATE versions SET in_memory=1 WHERE ns=? AND path=? AND version=?",
                                         (namespace, p, version))
                        for key in set(unpack_map(blob)):
                            if not key.is_hole:
                                self._bump((namespace, key), 0, 1)
            keys = {k for _, _, blob, *_ in wanted for k in unpack_map(blob) if not k.is_hole}
            loaded = 0
            load: list[tuple[IndexKey, str]] = []
            for key in sorted(keys, key=lambda k: k.hash):
                ik = (namespace, key)
                if any(bf in alive for bf in self._index.locations(ik)):
                    loaded += key.length
                elif drained := self._index.drained(ik):
                    load.append((ik, drained))
            return Wanted(len(wanted), sum(k.length for k in keys), loaded, load)

    def manifest(self, namespace: str, path: str, version: int) -> tuple[str, str, dict[str, object]] | None:
        """What a persisted version's manifest on the PFS says (drainer.layout.write_manifest), with
        the directory (relative to the PFS root) and deployment of its chunk files; None if the
        version is gone."""
        with self._lock:
            row = self._db.execute("SELECT size, committed_at, pfs_dir, origin FROM versions WHERE ns=? AND path=? "
                                   "AND version=? AND persisted=1", (namespace, path, version)).fetchone()
            if row is None:
                return None
            size, committed_at, pfs_dir, origin = row
            node = self.node(namespace, path)
            manifest: dict[str, object] = {"path": path, "version": version, "size": size,
                                           "committed_at": committed_at, "links": self.aliases(namespace, path)}
            if node is not None:
                manifest.update(mode=node.mode, uid=node.uid, gid=node.gid, atime_ns=node.atime_ns,
                                mtime_ns=node.mtime_ns, ctime_ns=node.ctime_ns)
        return pfs_dir or f"{namespace}{path}", origin or self.deployment_id, manifest

    def latest_checkpoint_files(self, namespace: str, directory: str = "/") -> list[str]:
        """The files of the newest persisted checkpoint of each step series at or below `directory`
        (what a restart reads), pointer files beside them included."""
        prefix = directory.rstrip("/") + "/"
        with self._lock:
            out: list[str] = []
            for (series,) in self._db.execute("SELECT DISTINCT series FROM checkpoints WHERE ns=?",
                                              (namespace,)).fetchall():
                for (step,) in self._db.execute("SELECT step FROM checkpoints WHERE ns=? AND series=? "
                                                "ORDER BY seq DESC", (namespace, series)).fetchall():
                    checkpoint = f"{series}:{step}"
                    if not self._checkpoint_persisted(namespace, checkpoint) or not self._db.execute(
                            "SELECT 1 FROM versions WHERE ns=? AND checkpoint=? AND persisted=1 LIMIT 1",
                            (namespace, checkpoint)).fetchone():
                        continue
                    paths = [p for (p,) in self._db.execute(
                        "SELECT DISTINCT path FROM versions WHERE ns=? AND checkpoint=? AND persisted=1",
                        (namespace, checkpoint))]
                    out += [p for p in paths if p.startswith(prefix) or directory == "/"]
                    break
            return sorted(set(out))

    def checkpoints(self, namespace: str, alive: Names | None = None) -> list[dict[str, object]]:
        """The namespace's checkpoints of step series that still hold files, oldest first: series,
        step, sequence number, files, bytes, and their state: persisted, draining, protected (in
        memory with the copies or parity its redundancy asks, when it asks any; needs `alive`),
        in_memory, lost."""
        redundancy = Redundancy.parse(self.policy(namespace).redundancy)
        with self._lock:
            rows = self._db.execute("SELECT series, step, seq, started_at FROM checkpoints WHERE ns=? "
                                    "ORDER BY started_at, seq", (namespace,)).fetchall()
            out: list[dict[str, object]] = []
            for series, step, seq, started in rows:
                checkpoint = f"{series}:{step}"
                files, size, persist, persisted, in_memory, lost = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MIN(persist), 0), "
                    "COALESCE(MIN(persisted), 0), COALESCE(MAX(in_memory), 0), COALESCE(MAX(lost), 0) "
                    "FROM versions WHERE ns=? AND checkpoint=?", (namespace, checkpoint)).fetchone()
                if not files:
                    continue  # left memory unpersisted, or left the PFS: nothing of it remains
                state = checkpoint_state(bool(lost), bool(persisted), bool(persist), bool(in_memory))
                if alive is not None and may_be_protected(state, redundancy):
                    maps = self._db.execute("SELECT chunk_map FROM versions WHERE ns=? AND checkpoint=?",
                                            (namespace, checkpoint)).fetchall()
                    if not any(self._short(namespace, blob, redundancy, alive) for (blob,) in maps):
                        state = PROTECTED
                out.append({"series": series, "step": step, "seq": seq, "started_at": started, "files": files,
                            "bytes": size, "persist": bool(persist), "state": state})
            return out


def _with_manifest(node: Node, manifest: dict[str, object]) -> Node:
    """A node with the metadata a version's manifest on the PFS kept (fields of the wrong type are
    left as they are: the manifest is read from a shared directory)."""
    fields = {name: value for name in ("mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns")
              if isinstance(value := manifest.get(name), int) and not isinstance(value, bool)}
    if "mode" in fields:
        fields["mode"] &= 0o7777
    return replace(node, **fields)  # type: ignore[arg-type]


def _names(value: object) -> list[str]:
    """The valid file paths in a manifest's list of other names."""
    if not isinstance(value, list):
        return []
    out = []
    for name in value:
        try:
            out.append(normalize_file_path(name))
        except (InvalidPath, TypeError, AttributeError):
            continue
    return out
