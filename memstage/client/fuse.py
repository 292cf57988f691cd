"""The FUSE staging directory: a thin layer that translates file system calls to the Client.

The data path stays in the client (OpenFile and VersionReader); this module maps calls, open
handles, metadata and errors (full -> ENOSPC, unknown -> ENOENT, a POSIX refusal -> its errno,
backend failure -> EIO, logged once per reason). A file opened for writing is committed when it is
closed (flush) or fsynced; other readers see the last committed version meanwhile. All handles
that write one file here share one OpenFile (as they share one kernel inode): what any of them
wrote is read back through all, O_APPEND writes land at the true end, and the last close (or any
fsync) commits what all of them wrote. Writers on other mounts merge at commit (see OpenFile).
`.versions/<path>/<n>` shows every version, read-only. Modes, owners and times are kept by the
manager; with --allow-other the kernel checks them (default_permissions). A file unlinked or
replaced while open here keeps working for its openers: its name moves aside (as NFS does) until
the last of them closes it. Built on mfusepy (libfuse 3).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from memstage.client.attrcache import ABSENT, AttrCache, Miss
from memstage.client.client import Client
from memstage.client.filestat import FileStat
from memstage.client.fuseattrs import (
    VERSIONS,
    Handle,
    attrs,
    in_versions,
    open_attrs,
    statfs_attrs,
    synthetic_ino,
    version_file_attrs,
    version_path,
    versions_dir_attrs,
)
from memstage.client.fuseerrors import fail as _fail
from memstage.client.fuseerrors import translated
from memstage.client.fusefile import BufferPool, CommittedBase, CommittedLayouts, OpenFile
from memstage.client.libfuse import mfusepy
from memstage.client.orphans import Action, Move, Orphans, Retarget
from memstage.client.reader import VersionReader
from memstage.client.watch import Watch
from memstage.errors import InvalidArgument, MemstageError, NotFound
from memstage.paths import normalize_path
from memstage.proto import manager_pb2

log = logging.getLogger(__name__)

# Where a name unlinked while open here waits for its last close (hidden from listings).
UNLINKED = "/.memstage-unlinked"
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


class MemstageFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True
    # Calls on open files work from the handle: a file renamed over or deleted while open keeps
    # working for its opener (libfuse passes path=None then, instead of failing with ENOENT).
    flag_nopath = True
    flag_nullpath_ok = True
    flag_utime_omit_ok = True

    def __init__(self, client: Client, on_ready: Callable[[], None] | None = None) -> None:
        self.client = client
        self._on_ready = on_ready
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, str] = {}  # open directories: handle -> path
        self._next = 1
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self._buffers = BufferPool(client.settings.chunk_size)
        self._layouts = CommittedLayouts(client)
        self._started_ns = time.time_ns()
        self._settled = threading.Condition(self._lock)  # told when a move of an unlinked open file ends
        tag = f"{os.uname().nodename}-{os.getpid()}-{time.time_ns() % 10**9}"
        self._orphans = Orphans(f"{UNLINKED}/{tag}-")
        self._wake_at: float | None = None  # when the timer that drives the orphans' moves fires
        self.started = False
        # Attributes and names, cached while the manager's lease holds (memstage.client.watch keeps
        # it); `kernel` tells the kernel to drop its copies of paths (set by the mount once it runs).
        self.cache = AttrCache()
        self.caching = client.settings.metadata_cache
        self.kernel: Callable[[list[str]], None] = lambda paths: None
        self._watch: Watch | None = None

    def init(self, path: str) -> None:
        self.started = True  # libfuse calls this once the file system is mounted
        if self._on_ready is not None:
            self._on_ready()

    def attach(self, kernel: Callable[[list[str]], None], keep_for: Callable[[float], None]) -> None:
        """The mount runs: `kernel(paths)` drops the kernel's copies of paths, `keep_for(seconds)`
        sets how long it keeps what it is told. With metadata_cache, the watch starts."""
        self.kernel = kernel
        self.client.open_sessions_ahead()  # a new file's write starts without waiting for the manager
        if self.caching and self._watch is None:
            mount = secrets.token_hex(16)
            self.client.connections.speak_for(mount)
            self._watch = Watch(self.client.connections, self.client.namespace, mount, self.cache, self._lock,
                                kernel, keep_for)
            self._watch.start()

    def destroy(self, path: str) -> None:
        self.detach()  # libfuse calls this while unmounting, before its session goes

    def detach(self) -> None:
        if self.client.spares is not None:
            self.client.spares.close()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()

    def log_once(self, message: str, exc: bool = False) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.error("%s", message, exc_info=exc)

    # -- handles -----------------------------------------------------------------------------
    def _register(self, obj: OpenFile | VersionReader, info: FileStat | None, path: str,
                  append: bool = False, reads_only: bool = False) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = Handle(obj, info, path, append, reads_only)
            return fh

    def _open_on(self, path: str) -> list[Handle]:
        """Open handles of `path` or below it (a directory)."""
        with self._lock:
            return [h for h in self._handles.values() if h.path == path or h.path.startswith(path + "/")]

    def _writer_of(self, path: str) -> OpenFile | None:
        for h in self._open_on(path):
            if h.path == path and isinstance(h.obj, OpenFile):
                return h.obj
        return None

    def _handle(self, fh: int | None) -> Handle:
        handle = self._handles.get(fh or 0)
        if handle is None:
            raise _fail(errno.EBADF)
        return handle

    # -- attributes --------------------------------------------------------------------------
    def _attrs(self, info: FileStat) -> dict[str, Any]:
        return attrs(info, self.client.settings.chunk_size, self._started_ns)

    def _open_attrs(self, handle: Handle) -> dict[str, Any]:
        return open_attrs(handle, self.client.settings.chunk_size, self._started_ns)

    @staticmethod
    def _read_only(path: str | None) -> None:
        if path is not None and in_versions(path):
            raise _fail(errno.EROFS)

    @staticmethod
    def _hidden(path: str) -> bool:
        return path == UNLINKED or path.startswith(UNLINKED + "/")

    def _stat(self, path: str) -> FileStat:
        if self._hidden(path) or self._orphans.hiding(path) or self._is_hidden_name(path):
            raise _fail(errno.ENOENT)
        epoch = None
        if self.caching and not in_versions(path):
            with self._lock:
                known = self.cache.get(path, time.monotonic())
            if known is ABSENT:
                raise _fail(errno.ENOENT)
            if not isinstance(known, Miss):
                return known
            epoch = known.epoch
        try:
            info = self.client.stat(path, protection=False)
        except NotFound:
            self._learn(path, None, epoch)
            raise _fail(errno.ENOENT) from None
        self._learn(path, info, epoch)
        return info

    def _learn(self, path: str, info: FileStat | None, epoch: int | None) -> None:
        if epoch is not None:
            with self._lock:
                self.cache.put(path, info, epoch, time.monotonic())

    def _told(self, path: str, st: dict[str, Any]) -> dict[str, Any]:
        """Attributes handed to the kernel under `path`: a later change of the file must reach it."""
        if self.caching:
            with self._lock:
                self.cache.told_kernel(path, st["st_ino"])
        return st

    def changed_here(self, paths: list[str], info: FileStat | None = None, own: bool = False,
                     kernel_knows: tuple[str, ...] | None = None, gone: tuple[str, ...] = (),
                     since: int | None = None) -> None:
        """This mount changed `paths` (the manager tells the other mounts): drop what is cached of
        them, keep `info` (the first path's attributes as the change left them), and have the
        kernel drop its copies of the same files under other names (it knows its own change of
        these names, except `own`: what it was told while the file was open here was the open
        handle's view, not the committed file's; `kernel_knows`: the names it knows the change of,
        if not all of `paths`). Each path exists after the change, except `gone`. `since`: the cache's
        epoch before the call that made the change; `info` is kept only if nothing changed since
        (a change another mount made meanwhile may be newer than `info`)."""
        if not self.caching:
            return
        with self._lock:
            keep = info is not None and (since is None or since == self.cache.epoch)
            told = self.cache.changed_here(paths, gone) + self.cache.changed([VERSIONS + p for p in paths])
            if keep:
                self.cache.put(paths[0], info, self.cache.epoch, time.monotonic())
        knows = () if own else (paths if kernel_knows is None else kernel_knows)
        others = [p for p in told if p not in knows]
        if others:
            self.kernel(others)

    def _committed(self, obj: OpenFile) -> None:
        """After a commit of `obj` that made a version."""
        since = self.cache.epoch
        result = obj.commit()
        if result is not None:
            self.changed_here([obj.path], result.info, own=True, since=since)
            if result.info is not None and isinstance(obj.base, CommittedBase):
                self._layouts.keep(obj.path, result.info.ino, obj.base)

    @translated
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        if path is None:  # asked through a handle (its name may be gone): answer from it
            handle = self._handle(fh)
            return self._told(handle.path, self._open_attrs(handle))
        normalize_path(path)  # ENAMETOOLONG before anything else
        for h in self._open_on(path):
            # A handle answers for its name only while it holds what the manager has not seen yet
            # (a closed file's release can come late: the manager's record is the truth by then).
            if h.path == path and ((isinstance(h.obj, OpenFile) and h.obj.changed) or self._is_hidden_name(path)):
                return self._told(path, self._open_attrs(h))
        if in_versions(path):
            return self._told(path, self._versions_attrs(path))
        return self._told(path, self._attrs(self._stat(path)))

    def _versions_attrs(self, path: str) -> dict[str, Any]:
        """.versions: directories r-x, each version a read-only file with its own commit time."""
        versioned = version_path(path)
        if versioned is not None:
            for v in self._versions(versioned[0]):
                if v["version"] == versioned[1]:
                    return version_file_attrs(self._attrs(self._stat(versioned[0])), path, v["size"],
                                              v["committed_at"])
        info = self._stat(path[len(VERSIONS):] or "/")
        if stat.S_ISLNK(info.mode):
            raise _fail(errno.ENOENT)
        return versions_dir_attrs(self._attrs(info), path)

    def _versions(self, path: str) -> list[dict[str, Any]]:
        try:
            return self.client.versions(path)
        except (NotFound, InvalidArgument):
            return []

    @translated
    def readlink(self, path: str) -> str:
        info = self._stat(path)
        if not stat.S_ISLNK(info.mode):
            raise _fail(errno.EINVAL)
        return info.target

    @translated
    def opendir(self, path: str) -> int:
        with self._lock:  # with nopath, readdir gets no path: keep it with the handle
            fh = self._next
            self._next += 1
            self._dirs[fh] = path
            return fh

    @translated
    def releasedir(self, path: str | None, fh: int) -> int:
        with self._lock:
            self._dirs.pop(fh, None)
        return 0

    @translated
    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """Names with their inode numbers (with use_ino, an entry without one would be skipped), and
        with all their attributes where the manager gave them (the kernel keeps them: ls -l asks
        nothing more)."""
        path = path or self._dirs.get(fh, "/")
        entries: dict[str, tuple[int, int]] = {}  # name -> (ino, mode)
        full: dict[str, dict[str, Any]] = {}  # name -> attributes
        prefix = path.rstrip("/") + "/"
        versions = path.startswith(VERSIONS + "/") or path == VERSIONS
        target = (path[len(VERSIONS):] or "/") if versions else path
        info = self._stat(target)
        if versions and not info.is_dir:
            for v in self._versions(target):
                name = str(v["version"])
                entries[name] = (synthetic_ino(f"{path}/{name}"), stat.S_IFREG)
        else:
            with self._lock:
                epoch = self.cache.epoch
            listing = self.client.listing(target)
            if self.caching and not versions:
                with self._lock:
                    self.cache.put_listing(target, ((e.path, e) for e in listing), epoch, time.monotonic())
            for e in listing:
                if self._hidden(e.path) or self._orphans.hiding(e.path):
                    continue
                if versions and e.kind == "symlink":
                    continue
                name = e.path.rsplit("/", 1)[1]
                mode = e.mode or (stat.S_IFDIR if e.is_dir else stat.S_IFREG)
                entries[name] = (synthetic_ino(f"{path}/{name}") if versions else e.ino, mode)
                if not versions and e.ino:
                    full[name] = self._told(prefix + name, self._attrs(e))
        with self._lock:
            for h in self._handles.values():
                rest = h.path[len(prefix):]
                if (isinstance(h.obj, OpenFile) and h.path.startswith(prefix) and "/" not in rest
                        and not self._is_hidden_name(h.path)):
                    entries.setdefault(rest, (synthetic_ino(h.path), stat.S_IFREG))
                    full.pop(rest, None)  # written here: its attributes are the handle's, asked for one by one
        if path == "/":
            entries[VERSIONS[1:]] = (synthetic_ino(VERSIONS), stat.S_IFDIR)
        own = info.ino or synthetic_ino(path)
        dots = [(".", {"st_ino": own, "st_mode": stat.S_IFDIR}, 0),
                ("..", {"st_ino": synthetic_ino(path + "/.."), "st_mode": stat.S_IFDIR}, 0)]
        return dots + [(n, full.get(n) or {"st_ino": ino, "st_mode": mode & stat.S_IFMT(mode)}, 0)
                       for n, (ino, mode) in sorted(entries.items())]

    @translated
    def statfs(self, path: str) -> dict[str, int]:
        reply = self.client.connections.call_manager("Status", manager_pb2.StatusRequest(), "statfs")
        return statfs_attrs(reply, self.client.settings.chunk_size)

    # -- metadata ----------------------------------------------------------------------------
    def _setattr(self, path: str | None, fh: int | None, **attrs: int) -> int:
        self._read_only(path)
        handles = [self._handle(fh)] if path is None else [h for h in self._open_on(path) if h.path == path]
        name = path if path is not None else handles[0].path
        writers = [h.obj for h in handles if isinstance(h.obj, OpenFile)]
        for w in writers:
            w.attrs.update(attrs)  # its commit carries them (a new file is not at the manager yet)
        try:
            info = self.client.setattr(name, **attrs)  # type: ignore[arg-type]
        except NotFound:
            if not writers:
                raise _fail(errno.ENOENT) from None
            return 0
        self.changed_here([name], info)
        for h in handles:
            if h.info is not None:
                h.info = info
        return 0

    @translated
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        return self._setattr(path, fh, mode=mode & 0o7777)

    @translated
    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        attrs = {k: v for k, v in (("uid", uid), ("gid", gid)) if v != -1}
        return self._setattr(path, fh, **attrs) if attrs else 0

    @translated
    def utimens(self, path: str | None, times: tuple[int, int] | None = None, fh: int | None = None) -> int:
        now = time.time_ns()
        atime, mtime = times if times is not None else (now, now)
        attrs = {k: v for k, v in (("atime_ns", atime), ("mtime_ns", mtime)) if v is not None}
        return self._setattr(path, fh, **attrs) if attrs else 0

    # -- namespace ---------------------------------------------------------------------------
    @staticmethod
    def _caller() -> tuple[int, int]:
        uid, gid, _ = mfusepy.fuse_get_context()
        return uid, gid

    @translated
    def mkdir(self, path: str, mode: int) -> int:
        self._read_only(path)
        self._settle(path)
        uid, gid = self._caller()
        self.client.mkdir(path, mode=mode & 0o7777, uid=uid, gid=gid)
        self.changed_here([path])
        if self.caching:
            with self._lock:  # new, so empty: names looked up in it are known absent
                self.cache.put_listing(path, (), self.cache.epoch, time.monotonic())
        return 0

    @translated
    def rmdir(self, path: str) -> int:
        self._read_only(path)
        if path == "/":
            raise _fail(errno.EBUSY)
        # A file unlinked while libfuse still counted it open is hidden here but may still wait to
        # move aside at the manager: move it now, or the directory is not empty there.
        with self._lock:
            waiting = self._orphans.hiding_in(path)
        for name in waiting:
            self._settle(name)
        self.client.rmdir(path)
        self.changed_here([path], gone=(path,))
        return 0

    @translated
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._read_only(path)
        self._settle(path)
        uid, gid = self._caller()
        if stat.S_ISREG(mode):  # an empty file
            handle = OpenFile(self.client, path, None, truncate=True, buffers=self._buffers)
            handle.attrs.update(mode=mode & 0o7777, uid=uid, gid=gid)
            self._committed(handle)
        else:  # FIFOs, sockets, devices: the kernel serves them; memstage keeps the name
            self.client.mknod(path, mode, dev, uid=uid, gid=gid)
            self.changed_here([path])
        return 0

    @translated
    def symlink(self, path: str, target: str) -> int:
        self._read_only(path)
        self._settle(path)
        uid, gid = self._caller()
        self.client.symlink(target, path, uid=uid, gid=gid)
        self.changed_here([path])
        return 0

    @translated
    def link(self, path: str, existing: str) -> int:
        self._read_only(path)
        self._settle(path)
        self._read_only(existing)
        writer = self._writer_of(existing)
        if writer is not None:
            self._committed(writer)  # a file created and not closed yet: its new name needs it at the manager
        self.client.link(existing, path)
        self.changed_here([existing, path], kernel_knows=(path,))  # the kernel's `existing` is another inode
        return 0

    # -- names unlinked or replaced while open here (see memstage.client.orphans) -----------------
    @staticmethod
    def _is_hidden_name(path: str) -> bool:
        return path.rsplit("/", 1)[-1].startswith(".fuse_hidden")

    def _hide(self, name: str, hidden: str) -> None:
        handles = [h for h in self._open_on(name) if h.path == name]
        for h in handles:
            if isinstance(h.obj, OpenFile):
                self._committed(h.obj)  # what it wrote so far goes with it
        with self._lock:
            # Handles closed meanwhile are gone. libfuse 3.14 counts a file open until our release
            # returns and may hide it after that (it then never unlinks the hidden name): so the
            # last close is ours to see, here (none left) or in release (the last on the hidden name).
            still = {id(h) for h in self._handles.values()}
            live = [h for h in handles if id(h) in still]
            for h in live:
                h.path = hidden
            writing = any(isinstance(h.obj, OpenFile) for h in live)
            actions = self._orphans.hide(name, hidden, writing, time.monotonic(), closed=not live)
            self._wake()
        self._run(actions)

    def _wake(self) -> None:
        """Called with the lock held: a timer fires when the next pending move is due."""
        due = self._orphans.next_due()
        if due is None or (self._wake_at is not None and self._wake_at <= due):
            return
        self._wake_at = due
        timer = threading.Timer(max(0.0, due - time.monotonic()), self._tick)
        timer.daemon = True
        timer.start()

    def _tick(self) -> None:
        with self._lock:
            self._wake_at = None
            actions = self._orphans.due(time.monotonic())
            self._wake()
        self._run(actions)

    def _run(self, actions: list[Action]) -> None:
        """Carry out what Orphans decided, telling it what came of each move."""
        for action in actions:
            if isinstance(action, Move):
                found = False
                try:
                    self.client.mv(action.name, action.target)
                    found = True
                    self.changed_here([action.name, action.target], gone=(action.name,))
                except NotFound:
                    pass  # a new file nobody committed: nothing at the manager
                except MemstageError as e:
                    self.log_once(f"unlink of open file {action.name}: {e}")
                finally:
                    with self._settled:
                        more = self._orphans.moved(action.hidden, found)
                        self._settled.notify_all()
                self._run(more)
            elif isinstance(action, Retarget):
                with self._lock:
                    for h in self._handles.values():
                        if h.path == action.hidden and isinstance(h.obj, OpenFile):
                            h.obj.path = action.path
            else:
                with contextlib.suppress(NotFound):
                    self.client.rm_file(action.target)
                self.changed_here([action.target], gone=(action.target,))

    def _wait_settled(self, hidden: str | None) -> None:
        if hidden is not None:
            with self._settled:
                self._settled.wait_for(lambda: self._orphans.settled(hidden), 30)

    def _settle(self, name: str, replaced: bool = False) -> None:
        """Before `name` is used again: a pending move of its hidden file is done now, or (replaced:
        the second half of a rename over it) called off."""
        with self._lock:
            actions, hidden = self._orphans.settle(name, replaced)
        self._run(actions)
        self._wait_settled(hidden)

    def _drop_hidden(self, hidden: str) -> None:
        """libfuse unlinks the hidden name at the last close: the file's versions go."""
        with self._lock:
            if not self._orphans.known(hidden):
                raise _fail(errno.ENOENT)
            actions = self._orphans.drop(hidden)
        self._run(actions)
        self._wait_settled(hidden)

    @translated
    def unlink(self, path: str) -> int:
        self._read_only(path)
        if self._is_hidden_name(path):
            self._drop_hidden(path)
            return 0
        self._settle(path)
        self.client.rm_file(path)
        self.changed_here([path], gone=(path,))
        return 0

    @translated
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._read_only(old)
        self._read_only(new)
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise _fail(errno.EINVAL)  # exchanging two names atomically is not supported
        if self._is_hidden_name(new):
            self._hide(old, new)
            return 0
        self._settle(old)
        self._settle(new, replaced=True)
        if flags & RENAME_NOREPLACE:
            try:
                self._stat(new)
            except mfusepy.FuseOSError:
                pass
            else:
                raise _fail(errno.EEXIST)
        for h in self._open_on(old):
            if isinstance(h.obj, OpenFile):
                self._committed(h.obj)  # what was written so far moves with the name
        since = self.cache.epoch
        info = self.client.rename_path(old, new, want_info=self.caching)
        self.changed_here([new, old], info, gone=(old,) if old != new else (), since=since)
        with self._lock:
            for h in self._handles.values():
                if h.path == old or h.path.startswith(old + "/"):
                    h.path = new + h.path[len(old):]
                    if isinstance(h.obj, OpenFile):
                        h.obj.path = h.path
        return 0

    # -- files -------------------------------------------------------------------------------
    @translated
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        self._read_only(path)
        self._settle(path)
        shared = self._writer_of(path)
        if shared is not None:  # created by another process meanwhile: one file, one write state
            return self._join(shared, None, path, flags)
        uid, gid = self._caller()
        handle = OpenFile(self.client, path, None, truncate=True, buffers=self._buffers)
        now = time.time_ns()
        # Its inode number is chosen now, so fstat before close and stat after agree (tar checks).
        handle.attrs.update(mode=mode & 0o7777, uid=uid, gid=gid, atime_ns=now, mtime_ns=now,
                            ino=(3 << 61) | secrets.randbits(61))
        return self._register(handle, None, path, append=bool(flags & os.O_APPEND))

    def _join(self, shared: OpenFile, info: FileStat | None, path: str, flags: int) -> int:
        """A new writing handle of a file other handles write here: their write state."""
        if flags & os.O_TRUNC:
            shared.truncate(0)
        return self._register(shared, info, path, append=bool(flags & os.O_APPEND))

    @translated
    def open(self, path: str, flags: int) -> int:
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if path.startswith(VERSIONS + "/"):
            versioned = version_path(path)
            if versioned is None:
                raise _fail(errno.EISDIR)
            if writing or flags & os.O_TRUNC:
                raise _fail(errno.EROFS)
            return self._register(self.client.reader(*versioned), None, path)
        shared = self._writer_of(path)
        info = self._stat(path) if shared is None else None
        if writing:
            if shared is not None:  # another handle writes this file: the same write state
                return self._join(shared, info, path, flags)
            # The layout this mount committed last, when the file is still that version (a version
            # never changes): the next update of it opens without asking the manager for its map.
            known = self._layouts.get(path, info)
            if known is not None:
                base: VersionReader | CommittedBase | None = known
            else:
                try:
                    base = self.client.reader(path)
                except NotFound:
                    base = None
            handle = OpenFile(self.client, path, base, truncate=bool(flags & os.O_TRUNC), buffers=self._buffers)
            if known is not None:
                known.follow(lambda: handle.path)
            return self._register(handle, info, path, append=bool(flags & os.O_APPEND))
        if shared is not None:  # written here: a read sees what the writers wrote (one inode)
            return self._register(shared, None, path, reads_only=True)
        reader = self.client.reader(path)
        if info is not None:
            info = self._relatime(path, info)
        return self._register(reader, info, path)

    def _relatime(self, path: str, info: FileStat) -> FileStat:
        """atime as relatime keeps it: set on a read open when older than the last change or a day."""
        now = time.time_ns()
        if info.atime_ns > max(info.mtime_ns, info.ctime_ns) and now - info.atime_ns < 86400 * 10**9:
            return info
        try:
            info = self.client.setattr(path, atime_ns=now, access=True)
            self.changed_here([path], info)
            return info
        except MemstageError as e:  # only a timestamp: the read goes on
            log.debug("atime of %s not updated: %s", path, e)
            return info

    @translated
    def read(self, path: str, size: int, offset: int, fh: int) -> list[bytes | memoryview]:
        """The bytes read, in pieces (the mount copies them into the kernel's buffer one by one)."""
        obj = self._handle(fh).obj
        if isinstance(obj, OpenFile):
            return [obj.read(size, offset)]
        return obj.read_parts(offset, offset + size)

    @translated
    def write(self, path: str, data: bytes | memoryview, offset: int, fh: int) -> int:
        handle = self._handle(fh)
        obj = handle.obj
        if not isinstance(obj, OpenFile) or handle.reads_only:
            raise _fail(errno.EBADF)
        handle.closing = False  # another descriptor of it still writes (a dup, a forked child)
        return obj.write(data, offset, append=handle.append)

    @translated
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._read_only(path)
        obj: OpenFile | VersionReader | None = self._handle(fh).obj if fh else (
            self._writer_of(path) if path else None)
        if path is None and not isinstance(obj, OpenFile):
            raise _fail(errno.EBADF)
        if isinstance(obj, OpenFile):
            obj.truncate(length)
            return 0
        assert path is not None
        handle = OpenFile(self.client, path, self.client.reader(path), truncate=False)
        handle.truncate(length)
        self._committed(handle)
        return 0

    @translated
    def flush(self, path: str, fh: int) -> int:
        handle = self._handles.get(fh)
        if handle is not None and isinstance(handle.obj, OpenFile) and not handle.reads_only:
            handle.closing = True
            if not self._other_writers(fh, handle.obj):
                self._committed(handle.obj)  # close() reports a failed commit (ENOSPC, EIO) to the application
        return 0

    def _other_writers(self, fh: int, obj: OpenFile) -> bool:
        """Another handle still writes this file: the last close (or an fsync) makes the version,
        and it carries this handle's writes too (an N-1 checkpoint commits once, not per writer).
        A handle being closed does not count: its release can come after the next close returned."""
        with self._lock:
            return any(h.obj is obj and not h.reads_only and not h.closing
                       for f, h in self._handles.items() if f != fh)

    @translated
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        """Commit what was written, then wait (up to protect_wait) until the version has the
        redundancy its namespace's policy asks: an fsync that returned means the version survives
        the loss of as many benefactors as the policy tolerates."""
        handle = self._handles.get(fh)
        if handle is not None and isinstance(handle.obj, OpenFile):
            self._committed(handle.obj)  # what every handle of the file wrote, as fsync of an inode does
            with contextlib.suppress(NotFound):  # nothing committed under that name: nothing to protect
                self.client.wait_protected(handle.obj.path)
        return 0

    @translated
    def release(self, path: str, fh: int) -> int:
        with self._lock:
            handle = self._handles.pop(fh, None)
            # The last close of a file hidden while open: its versions go now. libfuse unlinks the
            # hidden name too, but 3.14 may not (see _hide); a second drop does nothing.
            hidden_closed = handle is not None and self._orphans.known(handle.path) and not any(
                h.path == handle.path for h in self._handles.values())
        if handle is not None and isinstance(handle.obj, OpenFile) and not handle.reads_only \
                and not self._other_writers(fh, handle.obj):
            self._committed(handle.obj)
        if hidden_closed and handle is not None:
            with self._lock:
                actions = self._orphans.drop(handle.path)
            self._run(actions)
        return 0
