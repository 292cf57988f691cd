"""Rebuild a persisted version of a file, or every file below a directory, from the PFS alone: the
chunk file names say everything.

Several deployments may have drained the same path into one PFS directory; each version is named
by (deployment, version), and "the latest" is the complete version committed last.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from memstage.drainer import dirfd
from memstage.drainer.layout import (
    ChunkFile,
    Dirs,
    PfsDir,
    VersionId,
    missing,
    read_manifest,
    scan,
    version_dir,
    walk_versions,
)
from memstage.errors import DataLost, InvalidArgument, MemstageError, NotFound
from memstage.paths import check_namespace, normalize_path


@dataclass(frozen=True, slots=True)
class Restored:
    version: int
    size: int
    chunks: int
    deployment: str = ""
    committed_ms: int = 0  # 0 when the chunk names do not say (earlier releases)


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
    start = (version_dir(base, namespace, path).parts if namespace and path
             else (check_namespace(namespace),) if namespace else ())
    found: list[PfsVersion] = []
    for rel, groups in walk_versions(base, start):
        ns, file_path = rel[0], "/" + "/".join(rel[1:])
        for (deployment, version), files in groups.items():
            count = files[0].count
            found.append(PfsVersion(ns, file_path, deployment, version, max(f.committed_ms for f in files),
                                    len({f.index for f in files}) if count else 1, max(count, 1),
                                    sum(f.key.length for f in files)))
    return sorted(found, key=lambda v: (v.namespace, v.path, v.committed_ms, v.deployment, v.version))


OnBytes = Callable[[int, int], None]  # (bytes written, bytes of the version)


def restore(root: str | Path, namespace: str, path: str, out: str | Path, version: int = 0,
            deployment: str | None = None, keep_time: bool = False, progress: OnBytes | None = None) -> Restored:
    """Write version `version` (0 = the complete version committed last) of `path` to `out`,
    verifying every chunk. `deployment` picks among deployments that share the PFS directory.
    With `keep_time`, the file keeps the modification time and mode its manifest on the PFS names
    (else its modification time is the version's commit time). `progress` is called before the
    first chunk and after each."""
    out = Path(out)
    parent = dirfd.open_root(out.parent)
    try:
        return _restore(root, namespace, path, parent, out.name, version, deployment, keep_time, progress)
    finally:
        os.close(parent)


def _restore(root: str | Path, namespace: str, path: str, out_fd: int, name: str, version: int,
             deployment: str | None, keep_time: bool, progress: OnBytes | None = None) -> Restored:
    """restore, into the file `name` of the directory out_fd."""
    directory = version_dir(root, namespace, path)
    with Dirs() as dirs:
        versions = scan(directory, dirs)
        chosen = _pick(versions, namespace, path, directory, version, deployment)
        files = versions[chosen]
        gaps = missing(files)
        if gaps:
            shown = ", ".join(map(str, gaps[:10])) + (" ..." if len(gaps) > 10 else "")
            raise DataLost(f"{namespace}:{path}: version {chosen[1]} is incomplete: chunks {shown} of "
                           f"{files[0].count} are missing from {directory}")
        committed_ms = max(f.committed_ms for f in files)
        mtime_ns, mode = 0, None
        if keep_time:
            manifest = read_manifest(directory, chosen[1], chosen[0], dirs) or {}
            mtime = manifest.get("mtime_ns")
            mtime_ns = mtime if isinstance(mtime, int) and mtime > 0 else committed_ms * 1_000_000
            bits = manifest.get("mode")
            mode = bits & 0o7777 if isinstance(bits, int) and not isinstance(bits, bool) else None
        chunks = (_verified(f, dirs.read(directory, f.path.name)) for f in files)
        size = _write(files, chunks, out_fd, name, mtime_ns, mode, progress)
    return Restored(chosen[1], size, len(files) if files[0].count else 0, chosen[0], committed_ms)


def _pick(versions: dict[VersionId, list[ChunkFile]], namespace: str, path: str, directory: PfsDir | Path,
          version: int,
          deployment: str | None) -> VersionId:
    """The version `restore` means: `version` of `deployment`, or the complete one committed last."""
    if not versions:
        raise NotFound(f"{namespace}:{path}: no persisted version under {directory}")
    if deployment is not None:
        versions = {vid: files for vid, files in versions.items() if vid[0] == deployment}
        if not versions:
            raise NotFound(f"{namespace}:{path}: nothing of deployment {deployment!r} under {directory}")
    if version == 0:
        complete = sorted((vid for vid, files in versions.items() if not missing(files)),
                          key=lambda vid: _order(versions[vid]))
        if not complete:
            raise DataLost(f"{namespace}:{path}: no complete version on the PFS "
                           f"(incomplete: {_names(versions)})")
        return complete[-1]
    matching = [vid for vid in versions if vid[1] == version]
    if not matching:
        raise NotFound(f"{namespace}:{path}: version {version} is not on the PFS (persisted: {_names(versions)})")
    if len(matching) > 1:
        raise InvalidArgument(f"{namespace}:{path}: version {version} was drained by several deployments "
                              f"({', '.join(sorted(d for d, _ in matching))}); pick one with --deployment")
    return matching[0]


def _write(files: list[ChunkFile], chunks: Iterator[bytes], out_fd: int, name: str, mtime_ns: int,
           mode: int | None = None, progress: OnBytes | None = None) -> int:
    """Write the verified chunks to a temporary name beside the file `name` of directory out_fd,
    then rename: a reader never sees a partial file. Returns the size."""
    dirfd.check_name(name)
    tmp = _temporary(name)
    size = 0
    total = sum(f.key.length for f in files)
    if progress:
        progress(0, total)
    try:
        # Never through a link left at the temporary name: it could point anywhere.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=out_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=out_fd)
        with open(fd, "wb") as dst:
            for f, data in zip(files, chunks, strict=True):
                if f.offset != size:
                    raise DataLost(f"{f.path}: offset {f.offset} does not follow the previous chunk (ends at {size})")
                if f.key.is_hole:
                    dst.seek(f.key.length, os.SEEK_CUR)  # a hole stays a hole on the PFS side too
                else:
                    dst.write(data)
                size += f.key.length
                if progress:
                    progress(size, total)
            dst.truncate(size)
            dst.flush()
            if mode is not None:
                os.fchmod(dst.fileno(), mode)
            if mtime_ns:  # before the rename, so the file appears with its final time
                os.utime(dst.fileno(), ns=(mtime_ns, mtime_ns))
            os.fsync(dst.fileno())
        os.replace(tmp, name, src_dir_fd=out_fd, dst_dir_fd=out_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=out_fd)
        raise
    return size


def _temporary(name: str) -> str:
    """The temporary name a restored file is written under: '.<name>.restoring', or, when that would
    be longer than a name may be, its hash in place of the name."""
    tmp = f".{name}.restoring"
    if len(os.fsencode(tmp)) > 255:
        tmp = f".{xxhash.xxh3_128_hexdigest(os.fsencode(name))}.restoring"
    return tmp


def _names(versions: dict[VersionId, list[ChunkFile]]) -> str:
    return ", ".join(f"{v}" + (f" ({d})" if d else "") for d, v in sorted(versions, key=lambda x: (x[1], x[0])))


def _verified(f: ChunkFile, data: bytes) -> bytes:
    """A chunk file's bytes, once they match its name."""
    if f.key.is_hole:
        if data:
            raise DataLost(f"{f.path}: a hole's chunk file should be empty, it holds {len(data)} bytes (damaged)")
        return data
    if len(data) != f.key.length:
        raise DataLost(f"{f.path}: {len(data)} bytes, its name says {f.key.length} (truncated or damaged)")
    if xxhash.xxh3_128_digest(data) != f.key.hash:
        raise DataLost(f"{f.path}: bytes do not match the hash in its name (damaged)")
    return data


OnProgress = Callable[[int, int, int, int], None]  # (done bytes, total bytes, done files, total files)


@dataclass(frozen=True, slots=True)
class TreeRestored:
    """What restore_tree did: the files and bytes it restored, and each file it could not restore."""

    files: int
    size: int
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path in the namespace, why), by path

    @property
    def total_files(self) -> int:
        return self.files + len(self.failures)


@dataclass(frozen=True, slots=True)
class _Planned:
    path: str  # in the namespace
    parts: tuple[str, ...]  # relative to the restored directory
    chosen: VersionId
    size: int


def tree_dir(root: str | Path, namespace: str, directory: str) -> PfsDir:
    """<root>/<namespace>/<directory> ("/" allowed), or InvalidPath if the name is not valid."""
    if normalize_path(directory) != "/":
        return version_dir(root, namespace, directory)
    return PfsDir(Path(root).resolve(), (check_namespace(namespace),))


def is_tree(root: str | Path, namespace: str, path: str) -> bool:
    """Whether `path` names a directory on the PFS rather than a file: "/", or a directory with no
    chunk files of its own."""
    if normalize_path(path) == "/":
        return True
    directory = tree_dir(root, namespace, path)
    with Dirs() as dirs:
        try:
            found = dirs.find(directory) is not None
        except NotADirectoryError:
            return False
        return found and not scan(directory, dirs)


def restore_tree(root: str | Path, namespace: str, directory: str, out_dir: str | Path, workers: int = 8,
                 progress: OnProgress | None = None) -> TreeRestored:
    """Restore the complete version committed last of every file at or below `directory` into
    `out_dir` (created if missing), keeping the tree below `directory`. Files are restored by
    `workers` threads, each verified and written atomically as `restore` does, with the version's
    commit time as modification time. A file that cannot be restored is reported in the result and
    the others are still restored. `progress` is called once before the first file and then as each
    file finishes (restored or not); the totals count every file found, and the bytes of the
    versions to restore. The tree below `out_dir` is made with directory-relative calls that
    refuse links, so it may be deeper than PATH_MAX and nothing is written outside it."""
    if workers < 1:
        raise InvalidArgument(f"workers: must be 1 or more, not {workers}")
    base = Path(root).resolve()
    if not base.is_dir():
        raise NotFound(f"PFS root {root} is not a directory")
    start = tree_dir(base, namespace, directory)
    if normalize_path(directory) != "/" and scan(start):
        raise InvalidArgument(f"{namespace}:{directory} is a file on the PFS, not a directory")
    found = {rel[1:]: groups for rel, groups in walk_versions(base, start.parts)}
    if not found:
        raise NotFound(f"{namespace}:{directory}: no persisted file at or below {start}")
    out_fd = _out_dir(Path(out_dir))
    skip = len(start.parts) - 1  # the parts of `directory` itself
    plan, failures = _plan(found, namespace, skip)

    def one(item: _Planned) -> Restored:
        *parents, name = item.parts
        with dirfd.opened(out_fd, parents, make=0o777, where=str(out_dir)) as parent:
            return _restore(base, namespace, item.path, parent, name, item.chosen[1], item.chosen[0], keep_time=True)

    try:
        return _run(plan, failures, namespace, workers, one, progress)
    finally:
        os.close(out_fd)


def _out_dir(out: Path) -> int:
    """A descriptor of the directory to restore into, created (with its parents) if missing."""
    start = os.open("/" if out.is_absolute() else ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return dirfd.open_dir(start, [p for p in out.parts if p != "/"], make=0o777, follow=True)
    except NotADirectoryError:
        raise InvalidArgument(f"{out}: not a directory, cannot restore a directory into it") from None
    except OSError as e:
        raise InvalidArgument(f"{out}: cannot create the directory to restore into ({e.strerror})") from None
    finally:
        os.close(start)


def _plan(found: dict[tuple[str, ...], dict[VersionId, list[ChunkFile]]], namespace: str, skip: int
          ) -> tuple[list[_Planned], list[tuple[str, str]]]:
    """The version each file restores, and the files that have none to restore."""
    # A path can be a file for one deployment and a directory for another sharing the PFS: the
    # files below it are restored, the file itself would collide with them.
    parents = {parts[:i] for parts in found for i in range(1, len(parts))}
    plan: list[_Planned] = []
    failures: list[tuple[str, str]] = []
    for parts, groups in sorted(found.items()):
        path = "/" + "/".join(parts)
        if parts in parents:
            failures.append((path, "it is also a directory on the PFS (the files below it are restored)"))
            continue
        try:
            chosen = _pick(groups, namespace, path, next(iter(groups.values()))[0].path.parent, 0, None)
        except MemstageError as e:
            failures.append((path, _reason(e, namespace, path)))
            continue
        plan.append(_Planned(path, parts[skip:], chosen, sum(f.key.length for f in groups[chosen])))
    return plan, failures


def _run(plan: list[_Planned], failures: list[tuple[str, str]], namespace: str, workers: int,
         one: Callable[[_Planned], Restored], progress: OnProgress | None) -> TreeRestored:
    total_files, total_bytes = len(plan) + len(failures), sum(item.size for item in plan)
    files = size = 0
    if progress:
        progress(0, total_bytes, 0, total_files)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore")
    try:
        futures = {pool.submit(one, item): item for item in plan}
        for future in as_completed(futures):  # progress runs here, in the caller's thread
            item = futures[future]
            try:
                size += future.result().size
                files += 1
            except (MemstageError, OSError) as e:
                failures.append((item.path, _reason(e, namespace, item.path)))
            if progress:
                progress(size, total_bytes, files, total_files)
    except BaseException:
        # Ctrl-C: files being written finish (or remove their temporary file); none more start.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return TreeRestored(files, size, sorted(failures))


def _reason(e: Exception, namespace: str, path: str) -> str:
    """The error's message without the file's name in front: the caller names the file."""
    return str(e).removeprefix(f"{namespace}:{path}: ")
