"""Rebuild a persisted version of a file from the PFS alone: the chunk file names say everything."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

from memstage.drainer.layout import ChunkFile, missing, scan, version_dir
from memstage.errors import DataLost, NotFound


@dataclass(frozen=True, slots=True)
class Restored:
    version: int
    size: int
    chunks: int


def persisted_versions(root: str | Path, namespace: str, path: str) -> dict[int, bool]:
    """Every version found on the PFS, and whether it is complete."""
    return {v: not missing(files) for v, files in scan(version_dir(root, namespace, path)).items()}


def restore(root: str | Path, namespace: str, path: str, out: str | Path, version: int = 0) -> Restored:
    """Write version `version` (0 = the newest complete one) of `path` to `out`, verifying every chunk."""
    directory = version_dir(root, namespace, path)
    versions = scan(directory)
    complete = sorted(v for v, files in versions.items() if not missing(files))
    if not versions:
        raise NotFound(f"{namespace}:{path}: no persisted version under {directory}")
    if version == 0:
        if not complete:
            raise DataLost(f"{namespace}:{path}: no complete version on the PFS "
                           f"(incomplete: {', '.join(map(str, sorted(versions)))})")
        version = complete[-1]
    files = versions.get(version)
    if files is None:
        raise NotFound(f"{namespace}:{path}: version {version} is not on the PFS "
                       f"(persisted: {', '.join(map(str, sorted(versions)))})")
    gaps = missing(files)
    if gaps:
        shown = ", ".join(map(str, gaps[:10])) + (" ..." if len(gaps) > 10 else "")
        raise DataLost(f"{namespace}:{path}: version {version} is incomplete: chunks {shown} of "
                       f"{files[0].count} are missing from {directory}")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.restoring")
    size = 0
    try:
        with open(tmp, "wb") as dst:
            for f in files:
                if f.offset != size:
                    raise DataLost(f"{f.path}: offset {f.offset} does not follow the previous chunk (ends at {size})")
                dst.write(_verified(f))
                size += f.key.length
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Restored(version, size, len(files) if files[0].count else 0)


def _verified(f: ChunkFile) -> bytes:
    data = f.path.read_bytes()
    if len(data) != f.key.length:
        raise DataLost(f"{f.path}: {len(data)} bytes, its name says {f.key.length} (truncated or damaged)")
    if xxhash.xxh3_128_digest(data) != f.key.hash:
        raise DataLost(f"{f.path}: bytes do not match the hash in its name (damaged)")
    return data
