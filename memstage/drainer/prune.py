"""Removing drained data from the PFS: the copies of versions a catalog let go (a deleted file, a
checkpoint beyond pfs_keep), and orphans (`memstage gc`): chunk files no version of the catalog
references, and temporary files a crash left behind.

A version's chunk files are found by their names (drainer.layout): the directory the version was
drained into, its deployment and its version number. Several versions share bytes through hard
links, so removing one name frees bytes only when it was the last link; a name the catalog still
reads as another version's copy of a chunk (its drained name) is never removed here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from memstage.drainer import dirfd
from memstage.drainer.layout import (
    TMP_PREFIX,
    Dirs,
    PfsDir,
    grouped,
    parse_manifest_name,
    parse_name,
    pfs_dir,
    walk_dirs,
)
from memstage.paths import check_namespace

TMP_AGE_S = 3600.0  # a temporary file this old belongs to no drain still under way


@dataclass(frozen=True, slots=True)
class PfsCopy:
    """The chunk files of one version on the PFS."""

    directory: str  # relative to the PFS root: <namespace>/<path>
    deployment: str
    version: int


@dataclass(frozen=True, slots=True)
class Removed:
    files: int
    bytes: int  # freed: only a file's last link frees its bytes


@dataclass(frozen=True, slots=True)
class Orphan:
    path: str  # relative to the PFS root
    bytes: int  # what removing it frees (0 while another link to its bytes stays)
    why: str


def _unlink(fd: int, name: str) -> int:
    """Remove one name (a link there: the link only); the bytes it frees."""
    freed = _freed_by(fd, name)
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        return 0
    return freed


def _freed_by(fd: int, name: str) -> int:
    st = dirfd.lstat(fd, name)
    return 0 if st is None or st.st_nlink != 1 else st.st_size


def _prune_dirs(dirs: Dirs, directories: Iterable[PfsDir]) -> None:
    """Empty directories left behind go, up to (not including) the namespace's own directory."""
    for directory in sorted(set(directories), key=lambda d: len(d.parts), reverse=True):
        dirfd.remove_empty(dirs.root(directory.root), directory.parts, keep=1)


def remove_copies(root: str | Path, copies: Iterable[PfsCopy], keep: set[str] | frozenset[str]) -> Removed:
    """Remove the chunk files of these versions, except names in `keep` (relative to the root)."""
    files = freed = 0
    touched: list[PfsDir] = []
    with Dirs() as dirs:
        for copy in copies:
            directory = pfs_dir(root, copy.directory)
            try:
                fd = dirs.find(directory)
            except NotADirectoryError:
                continue
            if fd is None:
                continue
            with os.scandir(fd) as entries:
                names = [e.name for e in entries]
            for name in names:
                parsed = parse_name(Path(name))
                vid = (parsed.deployment, parsed.version) if parsed is not None else parse_manifest_name(name)
                if vid != (copy.deployment, copy.version):
                    continue
                if f"{directory.relative}/{name}" in keep:
                    continue
                freed += _unlink(fd, name)
                files += 1
            touched.append(directory)
        dirs.close()  # the directories are about to go: no descriptor of theirs stays open
        _prune_dirs(dirs, touched)
    return Removed(files, freed)


def find_orphans(root: str | Path, namespace: str, referenced: Callable[[str, str, int], bool],
                 names: set[str] | frozenset[str], own_deployment: str, newer_than_ms: int,
                 now: float | None = None) -> list[Orphan]:
    """Chunk files of `namespace` that belong to no version the catalog knows (`referenced(directory,
    deployment, version)`) and are no chunk's drained name (`names`); and temporary files older
    than an hour. Left alone: files of another deployment committed after `newer_than_ms` (one
    sharing the directory now), and names of earlier releases (no deployment in the name)."""
    now = time.time() if now is None else now
    out: list[Orphan] = []
    base = Path(root).resolve()
    for parts, fd, entries in walk_dirs(base, (check_namespace(namespace),)):
        directory = "/".join(parts)
        groups = grouped(base.joinpath(*parts), entries)
        for (deployment, version), files in groups.items():
            if not deployment or referenced(directory, deployment, version):
                continue
            for f in files:
                rel = f"{directory}/{f.path.name}"
                if rel in names:
                    continue  # another version's copy of this chunk
                if deployment != own_deployment and f.committed_ms > newer_than_ms:
                    continue  # another deployment writing into this directory now
                out.append(Orphan(rel, _freed_by(fd, f.path.name), f"{_shown(directory)}: version {version} of "
                                  f"deployment {deployment} is not in the catalog"))
        for name in entries:
            vid = parse_manifest_name(name)
            if (vid is None and not name.startswith(TMP_PREFIX)) or parse_name(Path(name)) is not None:
                continue
            st = dirfd.lstat(fd, name)
            if st is None:
                continue  # gone meanwhile
            if vid is not None:
                deployment, version = vid
                if referenced(directory, deployment, version):
                    continue
                if deployment != own_deployment and st.st_mtime * 1000 > newer_than_ms:
                    continue
                out.append(Orphan(f"{directory}/{name}", _freed_by(fd, name),
                                  f"{_shown(directory)}: the manifest of version {version} of deployment "
                                  f"{deployment}, which is not in the catalog"))
            elif name.startswith(TMP_PREFIX):
                age = now - st.st_mtime
                if age > TMP_AGE_S:
                    out.append(Orphan(f"{directory}/{name}", _freed_by(fd, name),
                                      f"a temporary file of a drain that did not finish ({age / 3600:.1f} h old)"))
    return sorted(out, key=lambda o: o.path)


def _shown(directory: str) -> str:
    return directory if len(directory) <= 300 else f"{directory[:120]}...{directory[-160:]}"


def remove_orphans(root: str | Path, orphans: Iterable[Orphan]) -> Removed:
    files = freed = 0
    touched: list[PfsDir] = []
    with Dirs() as dirs:
        for o in orphans:
            directory_name, name = o.path.rsplit("/", 1)
            directory = pfs_dir(root, directory_name)
            dirfd.check_name(name)
            fd = dirs.find(directory)
            if fd is None:
                continue
            freed += _unlink(fd, name)
            files += 1
            touched.append(directory)
        dirs.close()
        _prune_dirs(dirs, touched)
    return Removed(files, freed)
