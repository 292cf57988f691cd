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

from memstage.drainer.layout import parse_manifest_name, parse_name, walk_versions
from memstage.errors import InvalidPath
from memstage.paths import check_namespace

TMP_PREFIX = ".tmp."
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


def _inside(root: Path, relative: str, directory: bool = False) -> Path:
    """root/relative, its directory resolved (a symlinked directory must not lead outside the
    root); the last component is not followed, so removing a symlink removes only the link."""
    target = root / relative
    parent = (target if directory else target.parent).resolve()
    if not parent.is_relative_to(root):
        raise InvalidPath(f"{relative} would leave the PFS root {root}")
    return parent if directory else parent / target.name


def _unlink(path: Path) -> int:
    """Remove one name; the bytes it frees."""
    freed = _freed_by(path)
    path.unlink(missing_ok=True)
    return freed


def _prune_dirs(root: Path, directories: Iterable[Path]) -> None:
    """Empty directories left behind go, up to (not including) the namespace's own directory."""
    for directory in sorted(set(directories), key=lambda d: len(d.parts), reverse=True):
        d = directory
        while d != root and d.parent != root and d.is_relative_to(root):
            try:
                d.rmdir()
            except OSError:
                break  # not empty (or gone): its parents are not either
            d = d.parent


def remove_copies(root: str | Path, copies: Iterable[PfsCopy], keep: set[str] | frozenset[str]) -> Removed:
    """Remove the chunk files of these versions, except names in `keep` (relative to the root)."""
    base = Path(root).resolve()
    files = freed = 0
    touched: list[Path] = []
    for copy in copies:
        directory = _inside(base, copy.directory, directory=True)
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            parsed = parse_name(entry)
            vid = (parsed.deployment, parsed.version) if parsed is not None else parse_manifest_name(entry.name)
            if vid != (copy.deployment, copy.version):
                continue
            if str(entry.relative_to(base)) in keep:
                continue
            freed += _unlink(entry)
            files += 1
        touched.append(directory)
    _prune_dirs(base, touched)
    return Removed(files, freed)


def find_orphans(root: str | Path, namespace: str, referenced: Callable[[str, str, int], bool],
                 names: set[str] | frozenset[str], own_deployment: str, newer_than_ms: int,
                 now: float | None = None) -> list[Orphan]:
    """Chunk files of `namespace` that belong to no version the catalog knows (`referenced(directory,
    deployment, version)`) and are no chunk's drained name (`names`); and temporary files older
    than an hour. Left alone: files of another deployment committed after `newer_than_ms` (one
    sharing the directory now), and names of earlier releases (no deployment in the name)."""
    base = Path(root).resolve()
    start = base / check_namespace(namespace)
    if not start.is_dir():
        return []
    now = time.time() if now is None else now
    out: list[Orphan] = []
    for parts, groups in walk_versions(base, start):
        directory = "/".join(parts)
        for (deployment, version), files in groups.items():
            if not deployment or referenced(directory, deployment, version):
                continue
            for f in files:
                rel = str(f.path.relative_to(base))
                if rel in names:
                    continue  # another version's copy of this chunk
                if deployment != own_deployment and f.committed_ms > newer_than_ms:
                    continue  # another deployment writing into this directory now
                out.append(Orphan(rel, _freed_by(f.path), f"{directory}: version {version} of deployment "
                                  f"{deployment} is not in the catalog"))
    for directory, _, entries in os.walk(start):
        for name in entries:
            vid = parse_manifest_name(name)
            if vid is not None:
                path = Path(directory) / name
                rel_dir = str(path.parent.relative_to(base))
                deployment, version = vid
                if referenced(rel_dir, deployment, version):
                    continue
                if deployment != own_deployment and path.lstat().st_mtime * 1000 > newer_than_ms:
                    continue
                out.append(Orphan(str(path.relative_to(base)), _freed_by(path),
                                  f"{rel_dir}: the manifest of version {version} of deployment {deployment}, "
                                  "which is not in the catalog"))
            elif name.startswith(TMP_PREFIX):
                path = Path(directory) / name
                try:
                    age = now - path.lstat().st_mtime
                except FileNotFoundError:
                    continue
                if age > TMP_AGE_S:
                    out.append(Orphan(str(path.relative_to(base)), _freed_by(path),
                                      f"a temporary file of a drain that did not finish ({age / 3600:.1f} h old)"))
    return sorted(out, key=lambda o: o.path)


def _freed_by(path: Path) -> int:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    return st.st_size if st.st_nlink == 1 else 0


def remove_orphans(root: str | Path, orphans: Iterable[Orphan]) -> Removed:
    base = Path(root).resolve()
    files = freed = 0
    touched: list[Path] = []
    for o in orphans:
        path = _inside(base, o.path)
        freed += _unlink(path)
        files += 1
        touched.append(path.parent)
    _prune_dirs(base, touched)
    return Removed(files, freed)
