"""Versions drained to the PFS by earlier deployments, found by their chunk file names alone.

A new deployment on a PFS directory that earlier jobs drained into lists what they left there (the
manager's `pfs` setting): each complete version becomes a version of its namespace and path with
its original number, size and commit time, persisted and not in memory, so it is read from the PFS
(through any live benefactor, hash-verified) by the library and the mount. When several
deployments drained the same version number of a path, the one committed last is taken. This
module only reads the directory; Catalog.import_persisted records what it finds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from memstage.chunks import ChunkKey
from memstage.drainer.layout import ChunkFile, missing, read_manifest, version_dir, walk_versions
from memstage.errors import InvalidPath
from memstage.paths import check_namespace, normalize_file_path


@dataclass(frozen=True, slots=True)
class FoundVersion:
    namespace: str
    path: str
    version: int
    committed_at: float  # seconds since the epoch
    deployment: str
    keys: tuple[ChunkKey, ...]  # the version's map (holes included)
    drained: tuple[str, ...]  # per key, its chunk file relative to the PFS root
    manifest: dict[str, object] | None = None  # mode, owner, times, other names (if one was written)


def found_versions(root: str | Path) -> Iterator[FoundVersion]:
    """Every complete, well-formed version under `root`, one per (namespace, path, version)."""
    base = Path(root).resolve()
    if not base.is_dir():
        return
    for parts, groups in walk_versions(base):
        try:
            namespace = check_namespace(parts[0]) if parts else ""
            path = normalize_file_path("/" + "/".join(parts[1:]))
        except InvalidPath:
            continue  # not a directory memstage drained into
        best: dict[int, FoundVersion] = {}
        for (deployment, version), files in groups.items():
            found = _version(base, namespace, path, deployment, version, files)
            if found is not None and (version not in best or found.committed_at > best[version].committed_at):
                best[version] = found
        yield from (best[v] for v in sorted(best))


def _version(base: Path, namespace: str, path: str, deployment: str, version: int, files: list[ChunkFile]
             ) -> FoundVersion | None:
    files = sorted(files, key=lambda f: f.index)
    if missing(files):
        return None
    committed = max(f.committed_ms for f in files) / 1000
    manifest = read_manifest(version_dir(base, namespace, path), version, deployment)
    if files[0].count == 0:  # an empty file
        return FoundVersion(namespace, path, version, committed, deployment, (), (), manifest)
    chosen: list[ChunkFile] = []
    offset = 0
    for f in files:
        if f.count != files[0].count or (chosen and chosen[-1].index == f.index):
            continue  # a duplicate of an index (another count: not this version's)
        if f.offset != offset:
            return None  # not self-consistent: left alone (restore says why)
        chosen.append(f)
        offset += f.key.length
    return FoundVersion(namespace, path, version, committed, deployment, tuple(f.key for f in chosen),
                        tuple("" if f.key.is_hole else str(f.path.relative_to(base)) for f in chosen), manifest)
