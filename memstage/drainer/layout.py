"""The PFS layout of drained data: names, durable writes, hard links, listing.

A version's chunks live under <pfs>/<namespace>/<path>/ as files named
    v<version>.t<committed, ms since the epoch>.c<index>-of-<count>.o<offset hex>.l<length hex>
    .h<xxh3-128 hex>.d<deployment>.chunk
so the names alone rebuild every persisted version. No part has a fixed width, so no file size or
run length overflows a name. The deployment (a random id the manager draws when its state is
created) makes names unique when several deployments or jobs share one PFS directory, and the
commit time orders their versions. Names of earlier releases (fixed widths, no time, no
deployment) are still read. An empty version is one file with count 0.
A chunk identical to one already drained is a hard link to it. Files are written under a
temporary name, fsynced, renamed, and the directory fsynced: a crash never leaves a chunk that
looks complete but is not. The namespace and path are validated and the result is checked to lie
inside the PFS root (also through symlinks), so nothing escapes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from memstage.chunks import ChunkKey
from memstage.errors import InvalidPath
from memstage.paths import check_namespace, normalize_file_path

_NAME = re.compile(r"^v(\d+)(?:\.t(\d+))?\.c(\d+)-of-(\d+)\.o([0-9a-f]+)\.l([0-9a-f]+)\.h([0-9a-f]{32})"
                   r"(?:\.d([0-9a-z]+))?\.chunk$")


@dataclass(frozen=True, slots=True)
class ChunkFile:
    version: int
    index: int
    count: int
    offset: int
    key: ChunkKey
    path: Path
    deployment: str = ""  # "" for names of earlier releases
    committed_ms: int = 0  # 0 when the name does not say


def chunk_name(version: int, index: int, count: int, offset: int, key: ChunkKey, deployment: str = "",
               committed_ms: int = 0) -> str:
    when = f".t{committed_ms}" if committed_ms else ""
    who = f".d{deployment}" if deployment else ""
    return f"v{version}{when}.c{index}-of-{count}.o{offset:x}.l{key.length:x}.h{key.hash.hex()}{who}.chunk"


def parse_name(path: Path) -> ChunkFile | None:
    m = _NAME.match(path.name)
    if not m:
        return None
    version, when, index, count, offset, length, digest, who = m.groups()
    return ChunkFile(int(version), int(index), int(count), int(offset, 16),
                     ChunkKey(bytes.fromhex(digest), int(length, 16)), path, who or "", int(when or 0))


def version_dir(root: str | Path, namespace: str, path: str) -> Path:
    """<root>/<namespace>/<path>, or InvalidPath if that would leave the root."""
    check_namespace(namespace)
    parts = normalize_file_path(path).strip("/").split("/")
    base = Path(root).resolve()
    target = base.joinpath(namespace, *parts)
    # resolve() follows any symlink already in the tree: a link pointing outside is refused too.
    if not target.resolve().is_relative_to(base):
        raise InvalidPath(f"{namespace}:{path} would leave the PFS root {base}")
    return target


# What is drained is the job's data: readable by the user memstage runs as, nobody else on the
# PFS (directories it creates 0700, chunk files and manifests 0600), as SCR leaves checkpoints.
DIR_MODE = 0o700
FILE_MODE = 0o600


def make_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents, each DIR_MODE (mkdir's parents=True would give
    the parents the umask's mode)."""
    missing: list[Path] = []
    d = directory
    while not d.is_dir():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another drain made it meanwhile
            d.mkdir(DIR_MODE)
        os.chmod(d, DIR_MODE)  # the umask may have taken bits off; it cannot add any


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Pending:
    """One chunk file of a batch: its bytes, or an identical drained chunk to hard-link."""

    directory: Path
    name: str
    data: bytes | memoryview | None
    link_from: Path | None = None


def write_batch(items: list[Pending]) -> list[Path]:
    """Publish several chunk files with one durability wait (group commit).

    Every file is written under a temporary name first, then all are fsynced back to back (the
    first fsync's journal commit carries the others on journaling file systems), then renamed,
    then each directory fsynced once. As with write_chunk, no file gets its final name before its
    bytes are durable. Idempotent; on error, temporary files are removed and nothing is renamed.
    """
    staged: list[tuple[Path, Path, int]] = []  # (tmp, final, fd or -1 for links)
    finals: list[Path] = []
    try:
        for item in items:
            final = item.directory / item.name
            finals.append(final)
            if final.exists() or any(f == final for _, f, _ in staged):
                continue
            make_dirs(item.directory)
            tmp = item.directory / f".tmp.{os.getpid()}.{threading.get_ident()}.{item.name}"
            if item.link_from is not None and item.link_from.exists():
                os.link(item.link_from, tmp)
                staged.append((tmp, final, -1))
                continue
            if item.data is None:
                raise FileNotFoundError(f"{item.link_from}: the drained chunk to link to is gone")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            staged.append((tmp, final, fd))
            view = memoryview(item.data)
            while view:
                view = view[os.write(fd, view):]
        for _, _, fd in staged:
            if fd >= 0:
                os.fsync(fd)
    except BaseException:
        for tmp, _, fd in staged:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
        raise
    for _, _, fd in staged:
        if fd >= 0:
            os.close(fd)
    for tmp, final, _ in staged:
        os.replace(tmp, final)
    for directory in {final.parent for _, final, _ in staged}:
        _fsync_dir(directory)
    return finals


def write_chunk(directory: Path, name: str, data: Iterable[bytes | memoryview] | None,
                link_from: Path | None = None) -> Path:
    """Publish one chunk file durably (a hard link to `link_from` when given). Idempotent."""
    return write_batch([Pending(directory, name, None if data is None else b"".join(data), link_from)])[0]


VersionId = tuple[str, int]  # (deployment, version)

# Beside a version's chunk files, once it is persisted: what the names do not carry (mode, owner,
# times, the file's other names), so that a deployment importing the PFS shows it as it was.
_MANIFEST = re.compile(r"^v(\d+)\.d([0-9a-z]+)\.manifest\.json$")


def manifest_name(version: int, deployment: str) -> str:
    return f"v{version}.d{deployment}.manifest.json"


def parse_manifest_name(name: str) -> VersionId | None:
    m = _MANIFEST.match(name)
    return (m.group(2), int(m.group(1))) if m else None


def write_manifest(directory: Path, version: int, deployment: str, manifest: dict[str, object]) -> Path:
    """Publish a version's manifest durably (temporary name, fsync, rename, directory fsync)."""
    final = directory / manifest_name(version, deployment)
    tmp = directory / f".tmp.{os.getpid()}.{threading.get_ident()}.{final.name}"
    data = json.dumps(manifest, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


def read_manifest(directory: Path, version: int, deployment: str) -> dict[str, object] | None:
    """A version's manifest, or None (none written, or unreadable: the names alone still rebuild it)."""
    try:
        value = json.loads((directory / manifest_name(version, deployment)).read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def scan(directory: Path) -> dict[VersionId, list[ChunkFile]]:
    """The chunk files of every version found in a file's directory, by (deployment, version), in
    index order."""
    versions: dict[VersionId, list[ChunkFile]] = {}
    if not directory.is_dir():
        return versions
    for entry in directory.iterdir():
        if entry.is_file():
            parsed = parse_name(entry)
            if parsed is not None:
                versions.setdefault((parsed.deployment, parsed.version), []).append(parsed)
    for files in versions.values():
        files.sort(key=lambda f: f.index)
    return versions


def walk_versions(base: Path, start: Path | None = None
                  ) -> Iterator[tuple[tuple[str, ...], dict[VersionId, list[ChunkFile]]]]:
    """Every directory at or below `start` (default: `base`) that holds chunk files: its path
    relative to `base`, as parts, and its chunk files by (deployment, version)."""
    for directory, _, names in os.walk(start or base):
        groups: dict[VersionId, list[ChunkFile]] = {}
        for name in names:
            parsed = parse_name(Path(directory) / name)
            if parsed is not None:
                groups.setdefault((parsed.deployment, parsed.version), []).append(parsed)
        if groups:
            yield Path(directory).relative_to(base).parts, groups


def missing(files: list[ChunkFile]) -> list[int]:
    """Indices a version lacks (empty when it is complete). Count 0 is the empty file."""
    if not files:
        return []
    count = files[0].count
    if count == 0:
        return []
    have = {f.index for f in files if f.count == count}
    return [i for i in range(count) if i not in have]
