"""Directory-relative file system calls: trees of any depth, walked one component at a time.

PATH_MAX (4096 bytes on Linux) bounds the path argument of one system call, not the depth of a
tree: a local file system holds any path whose components fit NAME_MAX, and so must the PFS
copy of it, below a root that is itself some way down. Every call here takes a directory
descriptor and a name relative to it, so no path handed to the kernel is longer than one
component.

A walk opens each component with O_NOFOLLOW: a symbolic link anywhere below the directory a walk
starts from is refused (InvalidPath), never followed, so nothing leads out of that tree (the
starting directory itself is the caller's choice). Names are plain components: never '', '.',
'..' or containing '/'.

What the names mean is drainer.layout's business; which files go, drainer.prune's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from memstage.errors import InvalidPath

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW_DIR = _DIR | os.O_NOFOLLOW
READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise InvalidPath(f"{name!r} is not a plain file name")
    return name


def open_root(root: str | os.PathLike[str]) -> int:
    """A descriptor of the directory a walk starts from (links on the way to it are followed: it is
    the caller's choice). A root longer than PATH_MAX is walked from '/' or the working directory."""
    text = os.fspath(root)
    if len(os.fsencode(text)) < 4096:
        return os.open(text, _DIR)
    start = os.open("/" if text.startswith("/") else ".", _DIR)
    try:
        return open_dir(start, [p for p in text.split("/") if p not in ("", ".")], follow=True)
    finally:
        os.close(start)


def open_dir(fd: int, parts: Sequence[str], make: int | None = None, exact: bool = False, follow: bool = False,
             where: str = "") -> int:
    """A new descriptor of fd/<parts> (fd itself, opened again, when parts is empty); the caller
    closes it. With `make` (a mode), missing directories are created with it, and with `exact` set
    to it whatever the umask took off. Raises InvalidPath for a component that is a symbolic link
    (unless `follow`, meant for paths the user names: '..' is then allowed), FileNotFoundError for
    a missing one when not making, NotADirectoryError for a file on the way. `where` names the
    tree in messages."""
    current = os.open(".", _DIR, dir_fd=fd)
    try:
        for i, name in enumerate(parts):
            if not (follow and name == ".."):
                check_name(name)
            nxt = _open_or_make(current, name, make, exact, _DIR if follow else _NOFOLLOW_DIR, parts, i, where)
            os.close(current)
            current = nxt
    except BaseException:
        os.close(current)
        raise
    return current


def _open_or_make(fd: int, name: str, make: int | None, exact: bool, flags: int, parts: Sequence[str], i: int,
                  where: str) -> int:
    made = False
    while True:
        try:
            new = os.open(name, flags, dir_fd=fd)
            break
        except FileNotFoundError:
            if make is None or made:
                raise
        except OSError as e:
            # O_DIRECTORY | O_NOFOLLOW says ENOTDIR of a link (ELOOP without O_DIRECTORY).
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                _refuse_link(fd, name, parts, i, where)
            raise
        try:
            os.mkdir(name, make, dir_fd=fd)
            made = True
        except FileExistsError:
            pass  # made meanwhile by someone else: open what is there
    if made and exact:
        os.fchmod(new, make or 0)  # the umask may have taken bits off; it cannot add any
    return new


def _refuse_link(fd: int, name: str, parts: Sequence[str], i: int, where: str) -> None:
    try:
        is_link = stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode)
    except OSError:
        return
    if is_link:
        shown = "/".join(parts)
        raise InvalidPath(f"{_short(shown)} would leave {where or 'its tree'}: "
                          f"{_short('/'.join(parts[: i + 1]))} is a symbolic link")


def _short(text: str) -> str:
    """A path shown in a message: its ends, when it is too long to read."""
    return text if len(text) <= 300 else f"{text[:120]}...{text[-160:]}"


@contextlib.contextmanager
def opened(fd: int, parts: Sequence[str], make: int | None = None, exact: bool = False,
           where: str = "") -> Iterator[int]:
    """open_dir as a context: the descriptor is closed on leaving."""
    d = open_dir(fd, parts, make, exact, where=where)
    try:
        yield d
    finally:
        os.close(d)


def read_file(fd: int, name: str) -> bytes:
    """The bytes of file fd/name (a link there is refused: ELOOP)."""
    f = os.open(check_name(name), READ, dir_fd=fd)
    try:
        size = os.fstat(f).st_size
        pieces = []
        while True:
            piece = os.read(f, max(size, 1 << 16))
            if not piece:
                break
            pieces.append(piece)
        return b"".join(pieces)
    finally:
        os.close(f)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def lstat(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=fd)
    except FileNotFoundError:
        return None


@dataclass
class _Frame:
    fd: int
    parts: tuple[str, ...]
    subdirs: list[str]  # still to visit, last first


def walk(fd: int, parts: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], int, list[str]]]:
    """Every directory at or below fd, top down, in name order: (its parts below fd, after
    `parts`; a descriptor of it; the names of what in it is not a directory). The descriptor is
    valid until the walk goes on. Links are not followed (a directory swapped for one meanwhile is
    skipped, as is one removed meanwhile). Iterative, and a directory's descriptor stays open only
    while it has subdirectories left to visit: a deep chain holds two at a time."""
    stack: list[_Frame] = []
    current: tuple[int, tuple[str, ...]] | None = (os.open(".", _DIR, dir_fd=fd), parts)
    try:
        while True:
            if current is not None:
                dfd, dparts = current
                current = None
                stack.append(_Frame(dfd, dparts, []))
                subdirs, others = _listed(dfd)
                stack[-1].subdirs = subdirs
                yield dparts, dfd, others
            if not stack:
                return
            frame = stack[-1]
            name = frame.subdirs.pop() if frame.subdirs else ""
            child = -1
            if name:
                with contextlib.suppress(OSError):
                    child = os.open(name, _NOFOLLOW_DIR, dir_fd=frame.fd)
            if not frame.subdirs:
                stack.pop()
                os.close(frame.fd)
            if child >= 0:
                current = (child, (*frame.parts, name))
    finally:
        for frame in stack:
            os.close(frame.fd)
        if current is not None:
            os.close(current[0])


def _listed(fd: int) -> tuple[list[str], list[str]]:
    """(subdirectories, last first; everything else, in order) of directory fd."""
    subdirs: list[str] = []
    others: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            (subdirs if is_dir else others).append(entry.name)
    return sorted(subdirs, reverse=True), sorted(others)


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def remove_empty(fd: int, parts: Sequence[str], keep: int = 0) -> int:
    """Remove fd/<parts> if it is empty, then its parents while they are, never the first `keep`
    components; returns how many went. The walk down records each directory's device and inode,
    and each parent is reached through '..' only when it is still the one the walk passed: a tree
    moved or swapped meanwhile stops it."""
    current = os.open(".", _DIR, dir_fd=fd)
    try:
        seen = [_ident(os.fstat(current))]
        for name in parts:
            try:
                nxt = os.open(check_name(name), _NOFOLLOW_DIR, dir_fd=current)
            except OSError:
                return 0  # gone (or not a plain directory): nothing to remove
            os.close(current)
            current = nxt
            seen.append(_ident(os.fstat(current)))
        removed = 0
        for depth in range(len(parts), keep, -1):
            parent = os.open("..", _DIR, dir_fd=current)
            os.close(current)
            current = parent
            name = parts[depth - 1]
            entry = lstat(current, name)
            if _ident(os.fstat(current)) != seen[depth - 1] or entry is None or _ident(entry) != seen[depth]:
                break
            try:
                os.rmdir(name, dir_fd=current)
            except OSError:
                break  # not empty: its parents are not either
            removed += 1
        return removed
    finally:
        os.close(current)
