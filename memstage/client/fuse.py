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
import ctypes
import dataclasses
import errno
import functools
import itertools
import logging
import os
import secrets
import signal
import stat
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

# mfusepy picks libfuse 2 when both are installed; libfuse 3 negotiates 1 MiB writes (libfuse 2
# sends the file system 4 KiB ones here), so ask for it unless the user chose otherwise.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # noqa: E402

from memstage.client.client import Client
from memstage.client.filestat import FileStat
from memstage.client.fusefile import BufferPool, OpenFile
from memstage.client.reader import VersionReader
from memstage.errors import InvalidArgument, MemstageError, NotFound
from memstage.paths import normalize_path
from memstage.proto import manager_pb2

log = logging.getLogger(__name__)

VERSIONS = "/.versions"
# Where a name unlinked while open here waits for its last close (hidden from listings).
UNLINKED = "/.memstage-unlinked"
F = TypeVar("F", bound=Callable[..., Any])
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def translated(method: F) -> F:
    """Errors become errno values at this boundary; an unexpected one is logged once and is EIO."""

    @functools.wraps(method)
    def wrapper(self: MemstageFS, *args: Any) -> Any:
        try:
            return method(self, *args)
        except mfusepy.FuseOSError:
            raise
        except MemstageError as e:
            if e.errno == errno.EIO:
                self.log_once(f"{method.__name__}: {e}")
            raise mfusepy.FuseOSError(e.errno) from None
        except Exception as e:
            self.log_once(f"{method.__name__}: unexpected {type(e).__name__}: {e}", exc=True)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _ino(path: str) -> int:
    """An inode number for a name the manager does not number (.versions, a new file not committed)."""
    return (1 << 61) | (zlib.crc32(path.encode()) << 20) | 1


def _fail(number: int) -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(number)


class Handle:
    """One open file: its reader or writer (shared by the handles writing one file), the metadata
    it was opened with (for fstat), and whether it appends."""

    __slots__ = ("obj", "info", "path", "append", "reads_only", "closing")

    def __init__(self, obj: OpenFile | VersionReader, info: FileStat | None, path: str,
                 append: bool = False, reads_only: bool = False) -> None:
        self.obj = obj
        self.info = info
        self.path = path
        self.append = append
        self.reads_only = reads_only  # a read-only open of a file written here: its close commits nothing
        # Flushed (a close of it) and not written since: its release may come late, but it writes
        # no more, so it does not hold back the commit of another handle's close.
        self.closing = False


class Aside:
    """A file unlinked (or replaced) while open here, under libfuse's hidden name."""

    __slots__ = ("name", "target", "handles", "state", "timer", "settled")

    def __init__(self, name: str, target: str, handles: list[Handle]) -> None:
        self.name = name  # the name it had
        self.target = target  # where its versions wait at the manager for the last close
        self.handles = handles
        self.state = "pending"  # -> moving -> moved | gone; or kept (a rename over the name)
        self.timer: threading.Timer | None = None
        self.settled = threading.Event()


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
        self._started_ns = time.time_ns()
        self._aside_seq = itertools.count(1)
        self._asides: dict[str, Aside] = {}  # libfuse's hidden name -> the file behind it
        self._pending: dict[str, str] = {}  # a name whose hidden file may still move -> hidden name
        self._tag = f"{os.uname().nodename}-{os.getpid()}-{time.time_ns() % 10**9}"
        self.started = False

    def init(self, path: str) -> None:
        self.started = True  # libfuse calls this once the file system is mounted
        if self._on_ready is not None:
            self._on_ready()

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
        mode = info.mode or ((stat.S_IFDIR | 0o755) if info.is_dir else (stat.S_IFREG | 0o644))
        default = info.mtime_ns or int(info.committed_at * 1e9) or self._started_ns
        size = info.size
        return {"st_mode": mode, "st_nlink": info.nlink or (2 if info.is_dir else 1), "st_size": size,
                "st_uid": info.uid if info.uid >= 0 else os.getuid(),
                "st_gid": info.gid if info.gid >= 0 else os.getgid(),
                "st_mtime": default, "st_ctime": info.ctime_ns or default, "st_atime": info.atime_ns or default,
                "st_blksize": self.client.settings.chunk_size, "st_blocks": -(-(info.stored or 0) // 512),
                "st_ino": info.ino, "st_rdev": info.rdev}

    def _open_attrs(self, handle: Handle) -> dict[str, Any]:
        """A file open here: what the manager knows, with this handle's changes not committed yet."""
        info = handle.info or FileStat(path=handle.path)  # not at the manager yet: no owner set
        obj = handle.obj
        if not isinstance(obj, OpenFile):
            return self._attrs(dataclasses.replace(info, size=obj.size))
        a = obj.attrs
        changed: dict[str, Any] = {"size": obj.size, "stored": obj.size, "uid": a.get("uid", info.uid),
                                   "gid": a.get("gid", info.gid)}
        if "mode" in a:
            changed["mode"] = stat.S_IFREG | (a["mode"] & 0o7777)
        changed.update((field, a[field]) for field in ("atime_ns", "mtime_ns", "ino") if field in a)
        if not changed.get("mtime_ns", info.mtime_ns):
            changed["mtime_ns"] = time.time_ns()
        return self._attrs(dataclasses.replace(info, **changed))

    @staticmethod
    def _version_path(path: str) -> tuple[str, int] | None:
        """'/.versions/a/b/3' -> ('/a/b', 3)."""
        rest = path[len(VERSIONS):]
        head, _, last = rest.rpartition("/")
        return (head, int(last)) if head and last.isdigit() else None

    @staticmethod
    def _read_only(path: str | None) -> None:
        if path is not None and (path == VERSIONS or path.startswith(VERSIONS + "/")):
            raise _fail(errno.EROFS)

    @staticmethod
    def _hidden(path: str) -> bool:
        return path == UNLINKED or path.startswith(UNLINKED + "/")

    def _stat(self, path: str) -> FileStat:
        if self._hidden(path) or path in self._pending or self._is_hidden_name(path):
            raise _fail(errno.ENOENT)
        try:
            return self.client.stat(path, protection=False)
        except NotFound:
            raise _fail(errno.ENOENT) from None

    @translated
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        if path is None:  # an open file whose name is gone: answer from its handle
            return self._open_attrs(self._handle(fh))
        normalize_path(path)  # ENAMETOOLONG before anything else
        for h in self._open_on(path):
            # A handle answers for its name only while it holds what the manager has not seen yet
            # (a closed file's release can come late: the manager's record is the truth by then).
            if h.path == path and ((isinstance(h.obj, OpenFile) and h.obj.changed) or self._is_hidden_name(path)):
                return self._open_attrs(h)
        if path == VERSIONS or path.startswith(VERSIONS + "/"):
            return self._versions_attrs(path)
        return self._attrs(self._stat(path))

    def _versions_attrs(self, path: str) -> dict[str, Any]:
        """.versions: directories r-x, each version a read-only file with its own commit time."""
        versioned = self._version_path(path)
        if versioned is not None:
            for v in self._versions(versioned[0]):
                if v["version"] == versioned[1]:
                    when = int(v["committed_at"] * 1e9)
                    info = self._stat(versioned[0])
                    return {**self._attrs(info), "st_mode": stat.S_IFREG | 0o444, "st_size": v["size"],
                            "st_nlink": 1, "st_mtime": when, "st_ctime": when, "st_atime": when,
                            "st_blocks": -(-v["size"] // 512),
                            "st_ino": _ino(path)}
        info = self._stat(path[len(VERSIONS):] or "/")
        if stat.S_ISLNK(info.mode):
            raise _fail(errno.ENOENT)
        return {**self._attrs(info), "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0,
                "st_ino": _ino(path)}

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
        """Names with their inode numbers (with use_ino, an entry without one would be skipped)."""
        path = path or self._dirs.get(fh, "/")
        entries: dict[str, tuple[int, int]] = {}  # name -> (ino, mode)
        versions = path.startswith(VERSIONS + "/") or path == VERSIONS
        target = (path[len(VERSIONS):] or "/") if versions else path
        info = self._stat(target)
        if versions and not info.is_dir:
            for v in self._versions(target):
                name = str(v["version"])
                entries[name] = (_ino(f"{path}/{name}"), stat.S_IFREG)
        else:
            for e in self.client.ls(target):
                if self._hidden(e["name"]) or e["name"] in self._pending:
                    continue
                if versions and e["type"] == "symlink":
                    continue
                name = e["name"].rsplit("/", 1)[1]
                entries[name] = (_ino(f"{path}/{name}") if versions else e["ino"], e["mode"])
        prefix = path.rstrip("/") + "/"
        with self._lock:
            for h in self._handles.values():
                rest = h.path[len(prefix):]
                if (isinstance(h.obj, OpenFile) and h.path.startswith(prefix) and "/" not in rest
                        and not self._is_hidden_name(h.path)):
                    entries.setdefault(rest, (_ino(h.path), stat.S_IFREG))
        if path == "/":
            entries[VERSIONS[1:]] = (_ino(VERSIONS), stat.S_IFDIR)
        own = info.ino or _ino(path)
        listing = [(".", {"st_ino": own, "st_mode": stat.S_IFDIR}, 0), ("..", {"st_ino": _ino(path + "/.."),
                                                                                  "st_mode": stat.S_IFDIR}, 0)]
        return listing + [(n, {"st_ino": ino, "st_mode": mode & stat.S_IFMT(mode)}, 0)
                          for n, (ino, mode) in sorted(entries.items())]

    @translated
    def statfs(self, path: str) -> dict[str, int]:
        reply = self.client.connections.call_manager("Status", manager_pb2.StatusRequest(), "statfs")
        alive = [b for b in reply.benefactors if b.alive]
        capacity = sum(b.stats.memory_capacity for b in alive)
        # Free as writers can use it: whole chunks on each benefactor (a chunk is not split).
        chunk = self.client.settings.chunk_size
        free = sum(max(0, b.stats.memory_capacity - b.stats.memory_used) // chunk * chunk for b in alive)
        block = 65536
        return {"f_bsize": block, "f_frsize": block, "f_blocks": capacity // block, "f_bfree": free // block,
                "f_bavail": free // block, "f_files": 1 << 20, "f_ffree": 1 << 20, "f_namemax": 255}

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
        for h in handles:
            if h.info is not None:
                h.info = FileStat.from_pb(info)
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
        return 0

    @translated
    def rmdir(self, path: str) -> int:
        self._read_only(path)
        if path == "/":
            raise _fail(errno.EBUSY)
        self.client.rmdir(path)
        return 0

    @translated
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._read_only(path)
        self._settle(path)
        uid, gid = self._caller()
        if stat.S_ISREG(mode):  # an empty file
            handle = OpenFile(self.client, path, None, truncate=True, buffers=self._buffers)
            handle.attrs.update(mode=mode & 0o7777, uid=uid, gid=gid)
            handle.commit()
        else:  # FIFOs, sockets, devices: the kernel serves them; memstage keeps the name
            self.client.mknod(path, mode, dev, uid=uid, gid=gid)
        return 0

    @translated
    def symlink(self, path: str, target: str) -> int:
        self._read_only(path)
        self._settle(path)
        uid, gid = self._caller()
        self.client.symlink(target, path, uid=uid, gid=gid)
        return 0

    @translated
    def link(self, path: str, existing: str) -> int:
        self._read_only(path)
        self._settle(path)
        self._read_only(existing)
        writer = self._writer_of(existing)
        if writer is not None:
            writer.commit()  # a file created and not closed yet: its new name needs it at the manager
        self.client.link(existing, path)
        return 0

    # -- names unlinked or replaced while open here ------------------------------------------
    # libfuse keeps such a file usable for its openers by renaming it to a hidden name
    # (.fuse_hiddenN, in the same directory) and unlinking that at the last close. Here the hidden
    # name is never shown: the file's versions move to UNLINKED at the manager (so the name is
    # gone for everyone, and the openers' chunks stay). When the file is only read here, the move
    # waits a moment: if the hiding is the first half of a rename over the name (libfuse renames
    # the new file onto the name next, on the same thread), the name keeps its history (the
    # renamed file becomes its next version; readers keep the version they opened).

    @staticmethod
    def _is_hidden_name(path: str) -> bool:
        return path.rsplit("/", 1)[-1].startswith(".fuse_hidden")

    def _hide(self, name: str, hidden: str) -> None:
        handles = [h for h in self._open_on(name) if h.path == name]
        for h in handles:
            if isinstance(h.obj, OpenFile):
                h.obj.commit()  # what it wrote so far goes with it
        aside = Aside(name, f"{UNLINKED}/{self._tag}-{next(self._aside_seq)}", handles)
        with self._lock:
            self._asides[hidden] = aside
            self._pending[name] = hidden
            for h in handles:
                h.path = hidden
        if any(isinstance(h.obj, OpenFile) for h in handles):
            self._move_aside(hidden)
        else:
            aside.timer = threading.Timer(0.2, self._move_aside, (hidden,))
            aside.timer.daemon = True
            aside.timer.start()

    def _move_aside(self, hidden: str) -> None:
        """The hidden file's versions leave their name (unless a rename over the name came first)."""
        with self._lock:
            aside = self._asides.get(hidden)
            if aside is None or aside.state != "pending":
                return
            aside.state = "moving"
        try:
            self.client.mv(aside.name, aside.target)
            aside.state = "moved"
        except NotFound:
            aside.state = "gone"  # a new file nobody committed: nothing at the manager
        except MemstageError as e:
            aside.state = "gone"
            self.log_once(f"unlink of open file {aside.name}: {e}")
        finally:
            with self._lock:
                if self._pending.get(aside.name) == hidden:
                    del self._pending[aside.name]
                for h in aside.handles:
                    if isinstance(h.obj, OpenFile):
                        h.obj.path = aside.target if aside.state == "moved" else hidden
                aside.settled.set()

    def _settle(self, name: str, replaced: bool = False) -> None:
        """Before `name` is used again: a pending move of its hidden file is done now, or (replaced:
        the second half of a rename over it) called off."""
        with self._lock:
            hidden = self._pending.get(name)
            aside = self._asides.get(hidden or "")
            if aside is None:
                return
            if replaced and aside.state == "pending":
                aside.state = "kept"
                del self._pending[name]
                if aside.timer is not None:
                    aside.timer.cancel()
                return
        if aside.timer is not None:
            aside.timer.cancel()
        self._move_aside(hidden or "")
        aside.settled.wait(30)

    def _drop_hidden(self, hidden: str) -> None:
        """libfuse unlinks the hidden name at the last close: the file's versions go."""
        with self._lock:
            aside = self._asides.get(hidden)
        if aside is None:
            raise _fail(errno.ENOENT)
        self._settle(aside.name)
        with self._lock:
            self._asides.pop(hidden, None)
        if aside.state == "moved":
            with contextlib.suppress(NotFound):
                self.client.rm_file(aside.target)

    @translated
    def unlink(self, path: str) -> int:
        self._read_only(path)
        if self._is_hidden_name(path):
            self._drop_hidden(path)
            return 0
        self._settle(path)
        self.client.rm_file(path)
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
                h.obj.commit()  # what was written so far moves with the name
        self.client.mv(old, new)
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
            versioned = self._version_path(path)
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
            try:
                base = self.client.reader(path)
            except NotFound:
                base = None
            handle = OpenFile(self.client, path, base, truncate=bool(flags & os.O_TRUNC), buffers=self._buffers)
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
            return FileStat.from_pb(self.client.setattr(path, atime_ns=now, access=True))
        except MemstageError as e:  # only a timestamp: the read goes on
            log.debug("atime of %s not updated: %s", path, e)
            return info

    @translated
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        obj = self._handle(fh).obj
        if isinstance(obj, OpenFile):
            return obj.read(size, offset)
        return obj.read_range(offset, offset + size)

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
        handle.commit()
        return 0

    @translated
    def flush(self, path: str, fh: int) -> int:
        handle = self._handles.get(fh)
        if handle is not None and isinstance(handle.obj, OpenFile) and not handle.reads_only:
            handle.closing = True
            if not self._other_writers(fh, handle.obj):
                handle.obj.commit()  # close() reports a failed commit (ENOSPC, EIO) to the application
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
            handle.obj.commit()  # what every handle of the file wrote, as fsync of an inode does
            with contextlib.suppress(NotFound):  # nothing committed under that name: nothing to protect
                self.client.wait_protected(handle.obj.path)
        return 0

    @translated
    def release(self, path: str, fh: int) -> int:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is not None and isinstance(handle.obj, OpenFile) and not handle.reads_only \
                and not self._other_writers(fh, handle.obj):
            handle.obj.commit()
        return 0


class _FUSE(mfusepy.FUSE):  # type: ignore[misc]
    """Call adapters of mfusepy 3.1, replaced."""

    def _path(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # mfusepy copies every write into a new bytes object first; hand FUSE's own buffer over
        # instead (OpenFile.write keeps nothing of it after returning): one copy less per byte.
        data = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
        return int(self.operations.write(self._path(path), data, offset, fip.contents.fh))

    # mfusepy drops the file handle of truncate, chmod, chown and utimens under libfuse 3; with
    # nopath, the f-variants (ftruncate, fchmod, futimens) would then reach us with neither a path
    # nor a handle. Pass the handle on.

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return int(self.operations.rename(self._path(old), self._path(new), flags))

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        fh = fip.contents.fh if fip else None
        return int(self.operations.truncate(self._path(path), length, fh))

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return int(self.operations.chmod(self._path(path), mode, fip.contents.fh if fip else None))

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        uid = -1 if ctypes.c_uint32(uid + 1).value == 0 else uid
        gid = -1 if ctypes.c_uint32(gid + 1).value == 0 else gid
        return int(self.operations.chown(self._path(path), uid, gid, fip.contents.fh if fip else None))

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # The timespecs as the kernel sent them: UTIME_NOW and UTIME_OMIT are not times.
        times = None
        if buf:
            now = time.time_ns()

            def one(ts: Any) -> int | None:
                if ts.tv_nsec == UTIME_OMIT:
                    return None
                return now if ts.tv_nsec == UTIME_NOW else ts.tv_sec * 1_000_000_000 + ts.tv_nsec

            times = (one(buf.contents.actime), one(buf.contents.modtime))
        return int(self.operations.utimens(self._path(path), times, fip.contents.fh if fip else None))


def mount(client: Client, mountpoint: str, foreground: bool = True, allow_other: bool = False,
          on_ready: Callable[[], None] | None = None) -> None:
    """Mount and serve until unmounted (Ctrl-C, SIGTERM, or `memstage umount`). With allow_other,
    other users may use the mount and the kernel checks the stored modes (default_permissions)."""
    # max_idle_threads: libfuse 3.14, called through its older API as mfusepy does, warns about its
    # own unset default ("Ignoring invalid max threads value") unless it is given.
    fs = MemstageFS(client, on_ready)
    stop = _StopOnSignal(client, mountpoint)
    # use_ino: the manager numbers files, so all names of a file show one inode (tar, rsync -H).
    # attr_timeout 0: the names of a file are separate kernel inodes here (libfuse numbers nodes by
    # name), so a change through one name shows through the others (nlink, size, data) at once.
    options: dict[str, Any] = {"max_idle_threads": 16, "use_ino": True, "attr_timeout": 0}
    if allow_other:
        options.update(allow_other=True, default_permissions=True)
    try:
        _FUSE(fs, mountpoint, foreground=foreground, nothreads=False, fsname="memstage", subtype="memstage",
              **options)
    except RuntimeError as e:
        if stop.signalled:
            return
        # libfuse 3 ends its loop with an error code when a signal stops it: after a mount that
        # started and is gone again, that is the normal end.
        if not fs.started:
            raise MemstageError(f"cannot mount {mountpoint} (libfuse code {e}; is /dev/fuse usable?)") from None
        if os.path.ismount(mountpoint):
            raise MemstageError(f"FUSE failed on {mountpoint} (libfuse code {e})") from None
    finally:
        stop.close()


class _StopOnSignal:
    """SIGTERM, SIGHUP and SIGINT unmount at once, even while calls are blocked (a write waiting for
    space): waits are cut short and the mount is detached, so libfuse's loop ends. libfuse's own
    handlers would only set a flag that blocked calls never look at."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self, client: Client, mountpoint: str) -> None:
        self.client = client
        self.mountpoint = mountpoint
        self.signalled = False
        self._active = threading.current_thread() is threading.main_thread()  # signals reach only that one
        if not self._active:
            return
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write)
        # A Python handler (not SIG_DFL) also keeps libfuse from installing its own.
        self._old = {sig: signal.signal(sig, lambda *_: None) for sig in self.SIGNALS}
        self._patched = mfusepy.signal
        mfusepy.signal = lambda sig, handler: signal.getsignal(sig)  # mfusepy would reset SIGINT to SIG_DFL
        threading.Thread(target=self._watch, name="memstage-stop", daemon=True).start()

    def _watch(self) -> None:
        try:
            data = os.read(self._read, 16)
        except OSError:
            return
        if not data:
            return  # closed: the mount ended by itself
        self.signalled = True
        log.info("signal %d: unmounting %s", data[0], self.mountpoint)
        self.client.closing.set()
        result = subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True, text=True)
        if result.returncode:
            log.error("unmounting %s: %s", self.mountpoint, result.stderr.strip())

    def close(self) -> None:
        if not self._active:
            return
        mfusepy.signal = self._patched
        signal.set_wakeup_fd(self._old_fd)
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        os.close(self._write)
        os.close(self._read)

