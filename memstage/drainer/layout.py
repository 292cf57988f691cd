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
looks complete but is not. The namespace and path are validated, and every directory is reached
by walking its components from the PFS root with directory descriptors that refuse links
(drainer.dirfd): nothing escapes the root, and no path is too long for the PFS, whatever PATH_MAX
is (only each component is bounded, by NAME_MAX).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from memstage.chunks import ChunkKey
from memstage.drainer import dirfd
from memstage.errors import InvalidPath
from memstage.paths import check_namespace, normalize_file_path

TMP_PREFIX = ".tmp."  # a file being published; drainer.prune removes ones a crash left behind
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


@dataclass(frozen=True, slots=True)
class PfsDir:
    """A directory below the PFS root, by its components: every call on it walks them from the
    root with directory descriptors (drainer.dirfd), refusing links, so neither its length nor a
    link planted in the PFS takes it anywhere else. `path` is its name for messages."""

    root: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)

    @property
    def relative(self) -> str:
        return "/".join(self.parts)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)


def version_dir(root: str | Path, namespace: str, path: str) -> PfsDir:
    """<root>/<namespace>/<path>, or InvalidPath if the namespace or path is not valid. Whether it
    leads out of the root (a link in the PFS) is judged when it is opened: always by Dirs."""
    check_namespace(namespace)
    parts = normalize_file_path(path).strip("/").split("/")
    return PfsDir(Path(root).resolve(), (namespace, *parts))


def pfs_dir(root: str | Path, relative: str) -> PfsDir:
    """A directory named relative to the root ('<namespace>/<path>'), or InvalidPath unless every
    component is a plain name."""
    parts = tuple(relative.split("/"))
    for part in parts:
        dirfd.check_name(part)
    return PfsDir(Path(root).resolve(), parts)


def located(root: Path, path: Path) -> tuple[PfsDir, str]:
    """The directory and name of a file given by its path (absolute below `root`, or relative to
    it), or InvalidPath if it is not below the root by its very components."""
    relative = path.relative_to(root) if path.is_absolute() else path
    if path.is_absolute() and not path.is_relative_to(root):
        raise InvalidPath(f"{path} is not below the PFS root {root}")
    parts = relative.parts
    if not parts:
        raise InvalidPath(f"{path} names the PFS root, not a file")
    for part in parts:
        dirfd.check_name(part)
    return PfsDir(root, tuple(parts[:-1])), parts[-1]


# What is drained is the job's data: readable by the user memstage runs as, nobody else on the
# PFS (directories it creates 0700, chunk files and manifests 0600), as SCR leaves checkpoints.
DIR_MODE = 0o700
FILE_MODE = 0o600


_MISSING = -1


class Dirs:
    """Descriptors of the PFS directories one piece of work touches, each walked from its root once
    (a batch of chunks of one version opens the version's directory once), closed together."""

    def __init__(self) -> None:
        self._roots: dict[Path, int] = {}
        self._dirs: dict[PfsDir, int] = {}

    def __enter__(self) -> Dirs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in [*self._dirs.values(), *self._roots.values()]:
            if fd != _MISSING:
                os.close(fd)
        self._dirs.clear()
        self._roots.clear()

    def root(self, root: Path, make: bool = False) -> int:
        """A descriptor of a PFS root; with `make`, the root (and its missing parents, each
        DIR_MODE) is created if it is missing."""
        fd = self._roots.get(root)
        if fd is None:
            if make:
                _make_root(root)
            fd = self._roots[root] = dirfd.open_root(root)
        return fd

    def find(self, directory: PfsDir) -> int | None:
        """A descriptor of the directory, or None while it does not exist (as far as this batch knows:
        a directory found missing is walked again only by make)."""
        fd = self._dirs.get(directory)
        if fd is None:
            try:
                fd = dirfd.open_dir(self.root(directory.root), directory.parts, where=_where(directory))
            except FileNotFoundError:
                fd = _MISSING
            self._dirs[directory] = fd
        return None if fd == _MISSING else fd

    def make(self, directory: PfsDir) -> int:
        """A descriptor of the directory, created (and its missing parents, each DIR_MODE) if need be."""
        fd = self.find(directory)
        if fd is None:
            fd = self._dirs[directory] = dirfd.open_dir(self.root(directory.root, make=True), directory.parts,
                                                        DIR_MODE, exact=True, where=_where(directory))
        return fd

    def lstat(self, directory: PfsDir, name: str) -> os.stat_result | None:
        fd = self.find(directory)
        return None if fd is None else dirfd.lstat(fd, name)

    def exists(self, path: Path, root: Path) -> bool:
        """Whether the file `path` (below `root`) is there."""
        directory, name = located(root, path)
        return self.lstat(directory, name) is not None

    def read(self, directory: PfsDir, name: str) -> bytes:
        fd = self.find(directory)
        if fd is None:
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(directory))
        return dirfd.read_file(fd, name)


def _make_root(root: Path) -> None:
    missing: list[Path] = []
    d = root
    while not d.is_dir():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another drain made it meanwhile
            d.mkdir(DIR_MODE)
        os.chmod(d, DIR_MODE)  # the umask may have taken bits off; it cannot add any


def _where(directory: PfsDir) -> str:
    return f"the PFS root {directory.root}"


@dataclass(frozen=True, slots=True)
class Pending:
    """One chunk file of a batch: its bytes, or an identical drained chunk to hard-link (its path
    below the root, or relative to it)."""

    directory: PfsDir
    name: str
    data: bytes | memoryview | None
    link_from: Path | None = None


def write_batch(items: list[Pending], dirs: Dirs | None = None) -> list[Path]:
    """Publish several chunk files with one durability wait (group commit).

    Every file is written under a temporary name first, then all are fsynced back to back (the
    first fsync's journal commit carries the others on journaling file systems), then renamed,
    then each directory fsynced once. As with write_chunk, no file gets its final name before its
    bytes are durable. Idempotent; on error, temporary files are removed and nothing is renamed.
    Directories are opened through `dirs` (those of the caller's batch), each once.
    """
    if dirs is None:
        with Dirs() as own:
            return write_batch(items, own)
    staged: list[tuple[int, str, str, int]] = []  # (directory fd, tmp, final name, fd or -1 for links)
    finals: list[Path] = []
    seen: set[tuple[PfsDir, str]] = set()
    try:
        for item in items:
            finals.append(item.directory / item.name)
            if (item.directory, item.name) in seen or dirs.lstat(item.directory, item.name) is not None:
                continue
            seen.add((item.directory, item.name))
            target = dirs.make(item.directory)
            tmp = f"{TMP_PREFIX}{os.getpid()}.{threading.get_ident()}.{item.name}"
            if item.link_from is not None:
                source, source_name = located(item.directory.root, item.link_from)
                source_fd = dirs.find(source)
                if source_fd is not None and dirfd.lstat(source_fd, source_name) is not None:
                    os.link(source_name, tmp, src_dir_fd=source_fd, dst_dir_fd=target, follow_symlinks=False)
                    staged.append((target, tmp, item.name, -1))
                    continue
            if item.data is None:
                raise FileNotFoundError(f"{item.link_from}: the drained chunk to link to is gone")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                         dir_fd=target)
            staged.append((target, tmp, item.name, fd))
            dirfd.write_all(fd, item.data)
        for _, _, _, fd in staged:
            if fd >= 0:
                os.fsync(fd)
    except BaseException:
        for target, tmp, _, fd in staged:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=target)
        raise
    for _, _, _, fd in staged:
        if fd >= 0:
            os.close(fd)
    for target, tmp, final, _ in staged:
        os.replace(tmp, final, src_dir_fd=target, dst_dir_fd=target)
    for target in {target for target, _, _, _ in staged}:
        os.fsync(target)
    return finals


def write_chunk(directory: PfsDir, name: str, data: Iterable[bytes | memoryview] | None,
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


def write_manifest(directory: PfsDir, version: int, deployment: str, manifest: dict[str, object]) -> Path:
    """Publish a version's manifest durably (temporary name, fsync, rename, directory fsync)."""
    name = manifest_name(version, deployment)
    tmp = f"{TMP_PREFIX}{os.getpid()}.{threading.get_ident()}.{name}"
    data = json.dumps(manifest, sort_keys=True).encode()
    with Dirs() as dirs:
        target = dirs.find(directory)
        if target is None:
            raise FileNotFoundError(errno.ENOENT, "the version's directory is not on the PFS", str(directory))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=target)
        try:
            dirfd.write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=target, dst_dir_fd=target)
        os.fsync(target)
    return directory / name


def read_manifest(directory: PfsDir, version: int, deployment: str, dirs: Dirs | None = None
                  ) -> dict[str, object] | None:
    """A version's manifest, or None (none written, or unreadable: the names alone still rebuild it)."""
    try:
        if dirs is None:
            with Dirs() as own:
                data = own.read(directory, manifest_name(version, deployment))
        else:
            data = dirs.read(directory, manifest_name(version, deployment))
        value = json.loads(data)
    except (OSError, ValueError, InvalidPath):
        return None
    return value if isinstance(value, dict) else None


def grouped(directory: Path, names: Iterable[str]) -> dict[VersionId, list[ChunkFile]]:
    """The chunk files among `names` (of the directory `directory`) by (deployment, version), in
    index order."""
    versions: dict[VersionId, list[ChunkFile]] = {}
    for name in names:
        parsed = parse_name(directory / name)
        if parsed is not None:
            versions.setdefault((parsed.deployment, parsed.version), []).append(parsed)
    for files in versions.values():
        files.sort(key=lambda f: f.index)
    return versions


def scan(directory: PfsDir, dirs: Dirs | None = None) -> dict[VersionId, list[ChunkFile]]:
    """The chunk files of every version found in a file's directory, by (deployment, version), in
    index order."""
    if dirs is None:
        with Dirs() as own:
            return scan(directory, own)
    try:
        fd = dirs.find(directory)
    except NotADirectoryError:
        return {}
    if fd is None:
        return {}
    with os.scandir(fd) as entries:
        return grouped(directory.path, [e.name for e in entries if e.is_file(follow_symlinks=False)])


def walk_versions(root: str | Path, start: tuple[str, ...] = ()
                  ) -> Iterator[tuple[tuple[str, ...], dict[VersionId, list[ChunkFile]]]]:
    """Every directory at or below <root>/<start> that holds chunk files: its path relative to the
    root, as parts, and its chunk files by (deployment, version). Nothing when `start` is missing."""
    base = Path(root).resolve()
    for parts, _, names in walk_dirs(base, start):
        groups = grouped(base.joinpath(*parts), names)
        if groups:
            yield parts, groups


def walk_dirs(root: str | Path, start: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], int, list[str]]]:
    """Every directory at or below <root>/<start>, top down (nothing when `start` is missing): its
    path relative to the root, as parts; a descriptor of it, valid until the walk goes on; the
    names in it that are not directories."""
    base = Path(root).resolve()
    with Dirs() as dirs:
        try:
            fd = dirs.find(PfsDir(base, start))
        except NotADirectoryError:
            return
        if fd is None:
            return
        yield from dirfd.walk(fd, start)


def missing(files: list[ChunkFile]) -> list[int]:
    """Indices a version lacks (empty when it is complete). Count 0 is the empty file."""
    if not files:
        return []
    count = files[0].count
    if count == 0:
        return []
    have = {f.index for f in files if f.count == count}
    return [i for i in range(count) if i not in have]
