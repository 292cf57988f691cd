"""Rebuild a persisted version of a file from the PFS alone: the chunk file names say everything.

Several deployments may have drained the same path into one PFS directory; each version is named
by (deployment, version), and "the latest" is the complete version committed last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

from memstage.drainer.layout import ChunkFile, VersionId, missing, scan, version_dir, walk_versions
from memstage.errors import DataLost, InvalidArgument, NotFound


@dataclass(frozen=True, slots=True)
class Restored:
    version: int
    size: int
    chunks: int
    deployment: str = ""


@dataclass(frozen=True, slots=True)
class PfsVersion:
    """One version found on the PFS."""

    namespace: str
    path: str
    deployment: str
    version: int
    committed_ms: int
    chunks: int  # files present
    count: int  # files the version has
    size: int  # bytes present

    @property
    def complete(self) -> bool:
        return self.chunks >= self.count


def _order(files: list[ChunkFile]) -> tuple[int, int]:
    return (max(f.committed_ms for f in files), files[0].version)


def persisted_versions(root: str | Path, namespace: str, path: str) -> dict[VersionId, bool]:
    """Every version found on the PFS, and whether it is complete."""
    return {v: not missing(files) for v, files in scan(version_dir(root, namespace, path)).items()}


def list_pfs(root: str | Path, namespace: str | None = None, path: str | None = None) -> list[PfsVersion]:
    """What a PFS directory holds: every version of every file (of one namespace, or below one path),
    with its deployment, commit time and completeness, ordered by namespace, path and commit time."""
    base = Path(root).resolve()
    if not base.is_dir():
        raise NotFound(f"--pfs: {root} is not a directory")
    start = version_dir(base, namespace, path) if namespace and path else base / namespace if namespace else base
    found: list[PfsVersion] = []
    for rel, groups in walk_versions(base, start):
        ns, file_path = rel[0], "/" + "/".join(rel[1:])
        for (deployment, version), files in groups.items():
            count = files[0].count
            found.append(PfsVersion(ns, file_path, deployment, version, max(f.committed_ms for f in files),
                                    len({f.index for f in files}) if count else 1, max(count, 1),
                                    sum(f.key.length for f in files)))
    return sorted(found, key=lambda v: (v.namespace, v.path, v.committed_ms, v.deployment, v.version))


def restore(root: str | Path, namespace: str, path: str, out: str | Path, version: int = 0,
            deployment: str | None = None) -> Restored:
    """Write version `version` (0 = the complete version committed last) of `path` to `out`,
    verifying every chunk. `deployment` picks among deployments that share the PFS directory."""
    directory = version_dir(root, namespace, path)
    versions = scan(directory)
    if not versions:
        raise NotFound(f"{namespace}:{path}: no persisted version under {directory}")
    if deployment is not None:
        versions = {vid: files for vid, files in versions.items() if vid[0] == deployment}
        if not versions:
            raise NotFound(f"{namespace}:{path}: nothing of deployment {deployment!r} under {directory}")
    complete = sorted((vid for vid, files in versions.items() if not missing(files)),
                      key=lambda vid: _order(versions[vid]))
    if version == 0:
        if not complete:
            raise DataLost(f"{namespace}:{path}: no complete version on the PFS "
                           f"(incomplete: {_names(versions)})")
        chosen = complete[-1]
    else:
        matching = [vid for vid in versions if vid[1] == version]
        if not matching:
            raise NotFound(f"{namespace}:{path}: version {version} is not on the PFS (persisted: {_names(versions)})")
        if len(matching) > 1:
            raise InvalidArgument(f"{namespace}:{path}: version {version} was drained by several deployments "
                                  f"({', '.join(sorted(d for d, _ in matching))}); pick one with --deployment")
        chosen = matching[0]
    files = versions[chosen]
    gaps = missing(files)
    if gaps:
        shown = ", ".join(map(str, gaps[:10])) + (" ..." if len(gaps) > 10 else "")
        raise DataLost(f"{namespace}:{path}: version {chosen[1]} is incomplete: chunks {shown} of "
                       f"{files[0].count} are missing from {directory}")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.restoring")
    size = 0
    try:
        with open(tmp, "wb") as dst:
            for f in files:
                if f.offset != size:
                    raise DataLost(f"{f.path}: offset {f.offset} does not follow the previous chunk (ends at {size})")
                if f.key.is_hole:
                    _verified(f)
                    dst.seek(f.key.length, os.SEEK_CUR)  # a hole stays a hole on the PFS side too
                else:
                    dst.write(_verified(f))
                size += f.key.length
            dst.truncate(size)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Restored(chosen[1], size, len(files) if files[0].count else 0, chosen[0])


def _names(versions: dict[VersionId, list[ChunkFile]]) -> str:
    return ", ".join(f"{v}" + (f" ({d})" if d else "") for d, v in sorted(versions, key=lambda x: (x[1], x[0])))


def _verified(f: ChunkFile) -> bytes:
    data = f.path.read_bytes()
    if f.key.is_hole:
        if data:
            raise DataLost(f"{f.path}: a hole's chunk file should be empty, it holds {len(data)} bytes (damaged)")
        return data
    if len(data) != f.key.length:
        raise DataLost(f"{f.path}: {len(data)} bytes, its name says {f.key.length} (truncated or damaged)")
    if xxhash.xxh3_128_digest(data) != f.key.hash:
        raise DataLost(f"{f.path}: bytes do not match the hash in its name (damaged)")
    return data
