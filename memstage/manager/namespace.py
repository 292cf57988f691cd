"""The namespace: POSIX name operations (unlink, rename, mkdir, rmdir, setattr, symbolic and hard
links, special files) on the catalog, one at a time under the namespace lock. The POSIX rules
are pure functions of the kinds of the names involved, at the top."""

from __future__ import annotations

import errno
import logging
import stat
import time
from collections.abc import Callable
from dataclasses import replace

from memstage.errors import FsError, NotFound
from memstage.manager.nodes import DIR, FILE, LINK, ROW_KINDS, SPECIAL, SYMLINK, Attrs, Node
from memstage.manager.state import State
from memstage.paths import MAX_SYMLINK_BYTES, parent_dirs

log = logging.getLogger(__name__)

KindOf = Callable[[str], str | None]  # a path's kind in the namespace (None: no such name)


def missing(namespace: str, path: str, what: str = "file or directory") -> NotFound:
    return NotFound(f"{path}: no such {what} in namespace {namespace!r}")


def check_parents(kind_of: KindOf, path: str) -> None:
    """ENOTDIR if a parent of `path` is something other than a directory (absent ones are made)."""
    for parent in parent_dirs(path)[1:]:
        if kind_of(parent) not in (None, DIR):
            raise FsError(errno.ENOTDIR, f"{parent}: not a directory")


def _non_directory(namespace: str, path: str, kind: str | None, if_dir: int, why: str) -> None:
    """NotFound if the name is absent, FsError(if_dir) if it is a directory."""
    if kind is None:
        raise missing(namespace, path, "file")
    if kind == DIR:
        raise FsError(if_dir, f"{path}: {why}")


def check_unlink(namespace: str, path: str, kind: str | None) -> None:
    _non_directory(namespace, path, kind, errno.EISDIR, "is a directory")


def check_rename(src: str, dst: str, ksrc: str, kdst: str | None) -> None:
    """POSIX: a directory replaces only an empty directory and never moves into itself; a
    non-directory never replaces a directory (emptiness is the caller's to check)."""
    if ksrc == DIR:
        if dst.startswith(src + "/"):
            raise FsError(errno.EINVAL, f"cannot move {src} into itself ({dst})")
        if kdst not in (None, DIR):
            raise FsError(errno.ENOTDIR, f"{dst}: not a directory")
    elif kdst == DIR:
        raise FsError(errno.EISDIR, f"{dst}: is a directory")


def replaces_by_unlink(ksrc: str, kdst: str | None, dst_has_other_names: bool) -> bool:
    """A rename of a non-directory over `dst`: the destination name is unlinked first (the name
    goes to src; a file with other names keeps them), unless a file's latest version can become
    the next version of the destination file."""
    return kdst in ROW_KINDS or (kdst == FILE and (ksrc != FILE or dst_has_other_names))


def check_mkdir(path: str, kind: str | None) -> None:
    if kind not in (None, DIR):
        raise FsError(errno.EEXIST, f"{path}: exists and is not a directory")


def check_rmdir(path: str, kind: str | None) -> None:
    if kind not in (None, DIR):
        raise FsError(errno.ENOTDIR, f"{path}: not a directory")


def check_new_name(path: str, kind: str | None) -> None:
    if kind is not None:
        raise FsError(errno.EEXIST, f"{path}: exists")


def check_link_source(namespace: str, src: str, kind: str | None) -> None:
    _non_directory(namespace, src, kind, errno.EPERM, "hard links to directories are not allowed")


def check_symlink_target(path: str, target: str) -> None:
    if not target or len(target.encode()) > MAX_SYMLINK_BYTES:
        raise FsError(errno.ENAMETOOLONG if target else errno.ENOENT,
                      f"{path}: a symbolic link's target is 1..{MAX_SYMLINK_BYTES} bytes")


def special_kind(path: str, mode: int) -> str:
    """The kind of a special file from its mode (EINVAL if it is none)."""
    kind = SPECIAL.get(stat.S_IFMT(mode))
    if kind is None:
        raise FsError(errno.EINVAL, f"{path}: mode {mode:o} is not a FIFO, socket or device node")
    return kind


class Namespace:
    def __init__(self, state: State) -> None:
        self.s = state

    def _kind_of(self, namespace: str) -> KindOf:
        return lambda path: self.s.catalog.kind(namespace, path)

    def delete(self, namespace: str, path: str) -> int:
        """Unlink a name; returns how many versions were deleted with it."""
        with self.s.namespace_lock:
            return self._unlink(namespace, path)

    def _unlink(self, namespace: str, path: str) -> int:
        """Remove one name. The last name of a file deletes its versions; another name keeps them."""
        kind = self.s.catalog.kind(namespace, path)
        now = time.time_ns()
        check_unlink(namespace, path, kind)
        count = 0
        if kind == LINK:
            with self.s.catalog.in_transaction():
                canonical = self.s.catalog.canonical(namespace, path)
                self.s.catalog.drop_node(namespace, path)
                self._touch_file(namespace, canonical, now)
        elif heirs := self.s.catalog.aliases(namespace, path):
            # Other names remain: the first of them takes the file (versions, metadata) over.
            self.s.catalog.move_tree(namespace, path, heirs[0], self.s.alive_ids())
            self._touch_file(namespace, heirs[0], now)
        elif kind in ROW_KINDS:
            with self.s.catalog.in_transaction():
                self.s.catalog.drop_node(namespace, path)
        else:
            count, freed = self.s.catalog.delete_file(namespace, path)
            self.s.free(freed)
            log.debug("deleted %s:%s (%d versions, %d chunks freed)", namespace, path, count, len(freed))
        with self.s.catalog.in_transaction():
            self.s.catalog.touch_dirs(namespace, [path], now)
        return count

    def _touch_file(self, namespace: str, path: str, now: int) -> None:
        """A file's link count changed: its ctime is now."""
        node = self.s.catalog.node(namespace, path)
        if node is not None and node.kind != LINK:
            self.s.catalog.put_node(namespace, path, replace(node, ctime_ns=now))

    def rename(self, namespace: str, src: str, dst: str) -> int:
        """POSIX rename: the destination, if any, is replaced atomically when it is of a compatible
        kind (an empty directory for a directory, a non-directory for a file). Returns how many
        files moved."""
        with self.s.namespace_lock:
            moved = self._rename(namespace, src, dst)
        log.debug("renamed %s:%s to %s (%d files)", namespace, src, dst, moved)
        return moved

    def _rename(self, namespace: str, src: str, dst: str) -> int:
        catalog = self.s.catalog
        ksrc = catalog.kind(namespace, src)
        if ksrc is None:
            raise missing(namespace, src)
        if src == dst:
            return 0
        check_parents(self._kind_of(namespace), dst)
        kdst = catalog.kind(namespace, dst)
        check_rename(src, dst, ksrc, kdst)
        now = time.time_ns()
        if ksrc == DIR:
            if kdst == DIR:
                if not catalog.dir_empty(namespace, dst):
                    raise FsError(errno.ENOTEMPTY, f"{dst}: directory not empty")
                catalog.rmdir_if_explicit(namespace, dst)
            moved = catalog.move_tree(namespace, src, dst, self.s.alive_ids())
        else:
            if kdst is not None and catalog.canonical(namespace, src) == catalog.canonical(namespace, dst):
                return 0  # two names of the same file: nothing to do
            if replaces_by_unlink(ksrc, kdst, kdst == FILE and bool(catalog.aliases(namespace, dst))):
                self._unlink(namespace, dst)
                kdst = None
            if ksrc != FILE or kdst is None:
                moved = catalog.move_tree(namespace, src, dst, self.s.alive_ids())
            else:
                moved = self._replace_file(namespace, src, dst)
            with catalog.in_transaction():
                self._touch_file(namespace, dst, now)
        with catalog.in_transaction():
            catalog.touch_dirs(namespace, [src, dst], now)
        return moved

    def _replace_file(self, namespace: str, src: str, dst: str) -> int:
        """The latest version of src becomes the next version of dst, whose history stays (a
        checkpoint written aside and renamed over its file, as tools do)."""
        catalog = self.s.catalog
        latest = catalog.version(namespace, src)
        node = catalog.node(namespace, src)
        catalog.commit(namespace, dst, latest.size, [(k, []) for k in latest.keys], self.s.alive_ids())
        self.s.free(catalog.apply_retention(namespace, dst))
        with catalog.in_transaction():
            catalog.move_nodes(namespace, src, dst)  # its metadata and other names follow
            if node is not None:
                catalog.put_node(namespace, dst, node)
        _, freed = catalog.delete_file(namespace, src)
        self.s.free(freed)
        return 1

    def mkdir(self, namespace: str, path: str, attrs: Attrs | None) -> None:
        catalog = self.s.catalog
        with self.s.namespace_lock:
            check_parents(self._kind_of(namespace), path)
            check_mkdir(path, catalog.kind(namespace, path))
            now = time.time_ns()
            for parent in parent_dirs(path)[1:] + [path]:
                catalog.mkdir(namespace, parent)
            with catalog.in_transaction():
                if attrs is not None:
                    node = catalog.node(namespace, path) or Node.default(DIR, now)
                    catalog.put_node(namespace, path, attrs.apply(node, now))
                catalog.touch_dirs(namespace, [path], now)

    def rmdir(self, namespace: str, path: str) -> None:
        with self.s.namespace_lock:
            check_rmdir(path, self.s.catalog.kind(namespace, path))
            self.s.catalog.rmdir(namespace, path)
            with self.s.catalog.in_transaction():
                self.s.catalog.touch_dirs(namespace, [path], time.time_ns())

    def set_attrs(self, namespace: str, path: str, attrs: Attrs) -> None:
        catalog = self.s.catalog
        with self.s.namespace_lock:
            kind = catalog.kind(namespace, path)
            if kind is None:
                raise missing(namespace, path)
            target = catalog.canonical(namespace, path)
            now = time.time_ns()
            with catalog.in_transaction():
                node = catalog.node(namespace, target)
                if node is None:
                    since = now if kind == DIR else int(catalog.version(namespace, target).committed_at * 1e9)
                    node = Node.default(FILE if kind == LINK else kind, since)
                catalog.put_node(namespace, target, attrs.apply(node, now))
            if kind in (FILE, LINK) and not attrs.access:
                self.s.manifest_changed(namespace, target)

    def symlink(self, namespace: str, path: str, target: str, attrs: Attrs) -> None:
        check_symlink_target(path, target)
        self._create_row(namespace, path, SYMLINK, 0o777, target, attrs)

    def make_node(self, namespace: str, path: str, mode: int, rdev: int, attrs: Attrs) -> None:
        kind = special_kind(path, mode)
        self._create_row(namespace, path, kind, mode & 0o7777, str(rdev), attrs)

    def _create_row(self, namespace: str, path: str, kind: str, mode: int, target: str, attrs: Attrs) -> None:
        """A new name that exists by its metadata row alone (a symbolic link, a FIFO, a device)."""
        catalog = self.s.catalog
        with self.s.namespace_lock:
            check_parents(self._kind_of(namespace), path)
            check_new_name(path, catalog.kind(namespace, path))
            now = time.time_ns()
            with catalog.in_transaction():
                node = attrs.apply(Node.default(kind, now), now)
                catalog.put_node(namespace, path, replace(node, mode=mode, target=target))
                catalog.touch_dirs(namespace, [path], now)

    def link(self, namespace: str, src: str, dst: str) -> None:
        catalog = self.s.catalog
        with self.s.namespace_lock:
            check_link_source(namespace, src, catalog.kind(namespace, src))
            check_parents(self._kind_of(namespace), dst)
            check_new_name(dst, catalog.kind(namespace, dst))
            canonical = catalog.canonical(namespace, src)
            now = time.time_ns()
            with catalog.in_transaction():
                catalog.put_node(namespace, dst, replace(Node.default(LINK, now), target=canonical))
                self._touch_file(namespace, canonical, now)
                catalog.touch_dirs(namespace, [dst], now)
            if catalog.has_versions(namespace, canonical):
                self.s.manifest_changed(namespace, canonical)
