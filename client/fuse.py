"""The FUSE staging directory: a thin layer that translates file system calls to the Client.

The data path stays in the client (OpenFile and VersionReader); this module maps calls, open
handles and errors (full -> ENOSPC, unknown -> ENOENT, backend failure -> EIO, logged once per
reason). A file opened for writing is committed when it is closed (flush) or fsynced; other
readers see the last committed version meanwhile. `.versions/<path>/<n>` shows every version
read-only. Built on mfusepy (libfuse 3).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

# mfusepy picks libfuse 2 when both are installed; libfuse 3 negotiates 1 MiB writes (libfuse 2
# sends the file system 4 KiB ones here), so ask for it unless the user chose otherwise.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # noqa: E402

from memstage.client.client import Client
from memstage.client.fusefile import BufferPool, OpenFile
from memstage.client.reader import VersionReader
from memstage.errors import InvalidArgument, MemstageError, NotFound
from memstage.proto import manager_pb2

log = logging.getLogger(__name__)

VERSIONS = "/.versions"
F = TypeVar("F", bound=Callable[..., Any])


def translated(method: F) -> F:
    """Errors become errno values at this boundary; an unexpected one is logged once and is EIO."""

    @functools.wraps(method)
    def wrapper(self: MemstageFS, *args: Any) -> Any:
        try:
            return method(self, *args)
        except mfusepy.FuseOSError:
            raise
        except InvalidArgument as e:
            raise mfusepy.FuseOSError(errno.ENOTEMPTY if "not empty" in str(e) else e.errno) from None
        except MemstageError as e:
            if e.errno == errno.EIO:
                self.log_once(f"{method.__name__}: {e}")
            raise mfusepy.FuseOSError(e.errno) from None
        except Exception as e:
            self.log_once(f"{method.__name__}: unexpected {type(e).__name__}: {e}", exc=True)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class MemstageFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True
    # Calls on open files work from the handle: a file renamed over or deleted while open keeps
    # working for its opener (libfuse passes path=None then, instead of failing with ENOENT).
    flag_nopath = True
    flag_nullpath_ok = True

    def __init__(self, client: Client) -> None:
        self.client = client
        self._handles: dict[int, OpenFile | VersionReader] = {}
        self._writers: dict[str, set[int]] = {}  # files open for writing, by path
        self._dirs: dict[int, str] = {}  # open directories: handle -> path
        self._next = 1
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self._buffers = BufferPool(client.settings.chunk_size)
        self._started = time.time()
        self.started = False

    def init(self, path: str) -> None:
        self.started = True  # libfuse calls this once the file system is mounted

    def log_once(self, message: str, exc: bool = False) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.error("%s", message, exc_info=exc)

    # -- handles -----------------------------------------------------------------------------
    def _register(self, obj: OpenFile | VersionReader) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = obj
            if isinstance(obj, OpenFile):
                self._writers.setdefault(obj.path, set()).add(fh)
            return fh

    def _writer_of(self, path: str) -> OpenFile | None:
        with self._lock:
            for fh in self._writers.get(path, ()):
                obj = self._handles[fh]
                if isinstance(obj, OpenFile):
                    return obj
        return None

    # -- attributes --------------------------------------------------------------------------
    def _attrs(self, is_dir: bool, size: int = 0, mtime: float | None = None) -> dict[str, Any]:
        when = int((mtime or self._started) * 1e9)  # use_ns: nanoseconds
        mode = (stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644)
        return {"st_mode": mode, "st_nlink": 2 if is_dir else 1, "st_size": size, "st_uid": os.getuid(),
                "st_gid": os.getgid(), "st_mtime": when, "st_ctime": when, "st_atime": when,
                "st_blksize": self.client.settings.chunk_size, "st_blocks": -(-size // 512)}

    @staticmethod
    def _version_path(path: str) -> tuple[str, int] | None:
        """'/.versions/a/b/3' -> ('/a/b', 3)."""
        rest = path[len(VERSIONS):]
        head, _, last = rest.rpartition("/")
        return (head, int(last)) if head and last.isdigit() else None

    @translated
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        if path is None:  # an open file whose name is gone: answer from its handle
            obj = self._handles.get(fh or 0)
            if obj is None:
                raise mfusepy.FuseOSError(errno.EBADF)
            return self._attrs(False, obj.size, time.time())
        if path in ("/", VERSIONS):
            return self._attrs(True)
        writer = self._writer_of(path)
        if writer is not None:
            return self._attrs(False, writer.size, time.time())
        if path.startswith(VERSIONS + "/"):
            versioned = self._version_path(path)
            if versioned is not None:
                for v in self._versions(versioned[0]):
                    if v["version"] == versioned[1]:
                        return self._attrs(False, v["size"], v["committed_at"])
            info = self._info(path[len(VERSIONS):])
            return self._attrs(True, 0, info.get("mtime"))  # a file's versions are a directory
        info = self._info(path)
        return self._attrs(info["type"] == "directory", info["size"], info.get("mtime"))

    def _info(self, path: str) -> dict[str, Any]:
        try:
            return self.client.info(path)
        except NotFound:
            raise mfusepy.FuseOSError(errno.ENOENT) from None

    def _versions(self, path: str) -> list[dict[str, Any]]:
        try:
            return self.client.versions(path)
        except (NotFound, InvalidArgument):
            return []

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
    def readdir(self, path: str | None, fh: int) -> list[str]:
        path = path or self._dirs.get(fh, "/")
        names = [".", ".."]
        if path.startswith(VERSIONS + "/") or path == VERSIONS:
            target = path[len(VERSIONS):] or "/"
            if self._info(target)["type"] == "file":
                return names + [str(v["version"]) for v in self._versions(target)]
            return names + [e["name"].rsplit("/", 1)[1] for e in self.client.ls(target)]
        entries = {e["name"].rsplit("/", 1)[1] for e in self.client.ls(path)}
        prefix = path.rstrip("/") + "/"
        with self._lock:
            entries |= {p[len(prefix):] for p in self._writers if p.startswith(prefix) and "/" not in p[len(prefix):]}
        if path == "/":
            entries.add(VERSIONS[1:])
        return names + sorted(entries)

    @translated
    def statfs(self, path: str) -> dict[str, int]:
        reply = self.client.connections.call_manager("Status", manager_pb2.StatusRequest(), "statfs")
        alive = [b for b in reply.benefactors if b.alive]
        capacity = sum(b.stats.memory_capacity for b in alive)
        free = max(0, capacity - sum(b.stats.memory_used for b in alive))
        block = 65536
        return {"f_bsize": block, "f_frsize": block, "f_blocks": capacity // block, "f_bfree": free // block,
                "f_bavail": free // block, "f_files": 1 << 20, "f_ffree": 1 << 20, "f_namemax": 255}

    # -- namespace ---------------------------------------------------------------------------
    @translated
    def mkdir(self, path: str, mode: int) -> int:
        self.client.mkdir(path)
        return 0

    @translated
    def rmdir(self, path: str) -> int:
        self.client.rmdir(path)
        return 0

    @translated
    def unlink(self, path: str) -> int:
        self.client.rm_file(path)
        return 0

    @translated
    def rename(self, old: str, new: str) -> int:
        writer = self._writer_of(old)
        if writer is not None:
            writer.commit()  # what was written so far moves with the name
        self.client.mv(old, new)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        return 0  # accepted for cp -a / tar / rsync; modes are not kept

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: Any = None) -> int:
        return 0  # times are the commit times

    # -- files -------------------------------------------------------------------------------
    @translated
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return self._register(OpenFile(self.client, path, None, truncate=True, buffers=self._buffers))

    @translated
    def open(self, path: str, flags: int) -> int:
        if path.startswith(VERSIONS + "/"):
            versioned = self._version_path(path)
            if versioned is None or flags & (os.O_WRONLY | os.O_RDWR):
                raise mfusepy.FuseOSError(errno.EROFS if versioned else errno.EISDIR)
            return self._register(self.client.reader(*versioned))
        if flags & (os.O_WRONLY | os.O_RDWR):
            try:
                base = self.client.reader(path)
            except NotFound:
                base = None
            return self._register(OpenFile(self.client, path, base, truncate=bool(flags & os.O_TRUNC),
                                               buffers=self._buffers))
        return self._register(self.client.reader(path))

    @translated
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        obj = self._handles[fh]
        if isinstance(obj, OpenFile):
            return obj.read(size, offset)
        return obj.read_range(offset, offset + size)

    @translated
    def write(self, path: str, data: bytes | memoryview, offset: int, fh: int) -> int:
        obj = self._handles[fh]
        if not isinstance(obj, OpenFile):
            raise mfusepy.FuseOSError(errno.EBADF)
        return obj.write(data, offset)

    @translated
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        obj = self._handles.get(fh) if fh else (self._writer_of(path) if path else None)
        if path is None and not isinstance(obj, OpenFile):
            raise mfusepy.FuseOSError(errno.EBADF)
        if isinstance(obj, OpenFile):
            obj.truncate(length)
            return 0
        handle = OpenFile(self.client, path, self.client.reader(path), truncate=False)
        handle.truncate(length)
        handle.commit()
        return 0

    @translated
    def flush(self, path: str, fh: int) -> int:
        obj = self._handles.get(fh)
        if isinstance(obj, OpenFile):
            obj.commit()  # close() reports a failed commit (ENOSPC, EIO) to the application
        return 0

    @translated
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return self.flush(path, fh)

    @translated
    def release(self, path: str, fh: int) -> int:
        with self._lock:
            obj = self._handles.pop(fh, None)
            if isinstance(obj, OpenFile):
                self._writers.get(obj.path, set()).discard(fh)
                if not self._writers.get(obj.path):
                    self._writers.pop(obj.path, None)
        if isinstance(obj, OpenFile):
            obj.commit()
        return 0


class _FUSE(mfusepy.FUSE):  # type: ignore[misc]
    """Two call adapters of mfusepy 3.1, replaced."""

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # mfusepy copies every write into a new bytes object first; hand FUSE's own buffer over
        # instead (OpenFile.write keeps nothing of it after returning): one copy less per byte.
        data = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
        return int(self.operations.write(None if path is None else path.decode(self.encoding, self.errors),
                                         data, offset, fip.contents.fh))

    # mfusepy drops the file handle of truncate under libfuse 3; with nopath, ftruncate would then
    # reach us with neither a path nor a handle. Pass the handle on, as its ftruncate does.

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        fh = fip.contents.fh if fip else None
        return int(self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors),
                                            length, fh))


def mount(client: Client, mountpoint: str, foreground: bool = True) -> None:
    """Mount and serve until unmounted (Ctrl-C, SIGTERM, or `memstage umount`)."""
    # hard_remove: libfuse would otherwise "hide" an open rename target by renaming it to
    # .fuse_hiddenN, taking its version history along; memstage readers keep their version anyway.
    fs = MemstageFS(client)
    try:
        _FUSE(fs, mountpoint, foreground=foreground, nothreads=False, fsname="memstage", subtype="memstage",
              hard_remove=True)
    except RuntimeError as e:
        # libfuse 3 ends its loop with an error code when a signal stops it: after a mount that
        # started and is gone again, that is the normal end.
        if not fs.started:
            raise MemstageError(f"cannot mount {mountpoint} (libfuse code {e}; is /dev/fuse usable?)") from None
        if os.path.ismount(mountpoint):
            raise MemstageError(f"FUSE failed on {mountpoint} (libfuse code {e})") from None
