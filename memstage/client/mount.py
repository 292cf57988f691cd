"""Serving a mount: libfuse's session for MemstageFS, its call adapters, and a clean stop on a
signal (see memstage.client.fuse for what each call does)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from memstage.client.bdi import raise_read_ahead
from memstage.client.client import Client
from memstage.client.fuse import MemstageFS
from memstage.client.libfuse import mfusepy
from memstage.errors import MemstageError

log = logging.getLogger(__name__)
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
_READDIR_PLUS, _FILL_DIR_PLUS = 1, 2  # libfuse 3: enum fuse_readdir_flags, enum fuse_fill_dir_flags
_CAP_READDIRPLUS, _CAP_READDIRPLUS_AUTO = 1 << 13, 1 << 14  # libfuse 3: FUSE_CAP_* of fuse_common.h
_INVALIDATE = mfusepy._libfuse.fuse_invalidate_path
_INVALIDATE.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
_INVALIDATE.restype = ctypes.c_int


def _fill(st: Any, a: dict[str, Any]) -> None:
    """A struct stat from MemstageFS's attributes (times in ns), field by field: mfusepy's generic
    setter looks each key up twice, which a listing of 10,000 entries feels."""
    st.st_mode, st.st_ino, st.st_nlink, st.st_size = a["st_mode"], a["st_ino"], a["st_nlink"], a["st_size"]
    st.st_uid, st.st_gid, st.st_rdev = a["st_uid"], a["st_gid"], a["st_rdev"]
    st.st_blksize, st.st_blocks = a["st_blksize"], a["st_blocks"]
    st.st_atimespec.tv_sec, st.st_atimespec.tv_nsec = divmod(a["st_atime"], 1_000_000_000)
    st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec = divmod(a["st_mtime"], 1_000_000_000)
    st.st_ctimespec.tv_sec, st.st_ctimespec.tv_nsec = divmod(a["st_ctime"], 1_000_000_000)


class _FUSE(mfusepy.FUSE):  # type: ignore[misc]
    """Call adapters of mfusepy 3.1, replaced."""

    def __init__(self, operations: MemstageFS, mountpoint: str, read_ahead: int = 0, **options: Any) -> None:
        self._read_ahead = read_ahead
        self._config: Any = None
        self._fuse: Any = None
        super().__init__(operations, mountpoint, **options)  # serves until unmounted

    def init_fuse_3(self, conn: Any, config: Any) -> None:
        # libfuse 3.14 takes no max_readahead mount option: it goes in the INIT answer, where the
        # kernel keeps the lower of it and the mount's read-ahead (see memstage.client.bdi).
        if self._read_ahead and conn:
            conn.contents.max_readahead = self._read_ahead
        if conn and conn.contents.want & _CAP_READDIRPLUS:
            # Always readdirplus: "auto" lets the kernel ask for attributes only while a process
            # looks names up between reads of the directory, and ls -l reads the whole listing first.
            conn.contents.want &= ~_CAP_READDIRPLUS_AUTO
        # libfuse reads the timeouts from its config at every reply: the lease sets them (below).
        self._config = config
        self._fuse = ctypes.c_void_p(mfusepy._libfuse.fuse_get_context().contents.fuse)
        self.operations.attach(self.invalidate, self.keep_for)
        super().init_fuse_3(conn, config)

    def keep_for(self, seconds: float) -> None:
        """How long the kernel keeps the attributes and names it is told from now on."""
        if self._config:
            self._config.contents.attr_timeout = seconds
            self._config.contents.entry_timeout = seconds

    def destroy(self, private_data: Any) -> None:
        super().destroy(private_data)  # the watch stops first: it tells the kernel through libfuse
        self._fuse = None

    def invalidate(self, paths: list[str]) -> None:
        """The kernel drops what it keeps of these paths (attributes and cached pages); a path it
        does not know is skipped."""
        if self._fuse is None:
            return
        for path in paths:
            _INVALIDATE(self._fuse, path.encode(self.encoding, self.errors))

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        # readdirplus (libfuse asks with flag 1): entries go with all their attributes, so the kernel
        # answers ls -l, find and du from them. mfusepy passes on only the type and inode number.
        if not flags & _READDIR_PLUS:
            return int(super().readdir_fuse_3(path, buf, filler, offset, fip, flags))
        st = mfusepy.c_stat()
        size = ctypes.sizeof(st)
        for name, attrs, _ in self.operations.readdir(self._path(path), fip.contents.fh):
            ctypes.memset(ctypes.byref(st), 0, size)
            plus = len(attrs) > 2
            if plus:
                _fill(st, attrs)
            else:
                st.st_mode, st.st_ino = attrs["st_mode"], attrs["st_ino"]
            if filler(buf, name.encode(self.encoding, self.errors), st, 0, _FILL_DIR_PLUS if plus else 0) != 0:
                break
        return 0

    def _path(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # The pieces go straight into FUSE's buffer: mfusepy wants one bytes object, a copy more.
        parts = self.operations.read(self._path(path), size, offset, fip.contents.fh)
        out = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
        pos = 0
        for part in parts:
            out[pos : pos + len(part)] = part
            pos += len(part)
        return pos

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        # mfusepy looks at the signature of operations.create (inspect.signature) on every call to
        # learn whether it takes flags: ~50 us of a small file's create, write and close.
        fi = fip.contents
        fi.fh = self.operations.create(path.decode(self.encoding, self.errors), mode, fi.flags)
        return 0

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
    target = os.path.realpath(mountpoint)  # resolved now: once mounted, a look at it waits for the mount
    read_ahead = client.settings.read_ahead

    def ready() -> None:
        # Called before libfuse answers the kernel's INIT: the kernel keeps the lower of the two.
        if read_ahead:
            raise_read_ahead(target, read_ahead)
        if on_ready is not None:
            on_ready()

    fs = MemstageFS(client, ready)
    stop = _StopOnSignal(client, mountpoint)
    # max_idle_threads: libfuse 3.14, called through its older API as mfusepy does, warns about its
    # own unset default ("Ignoring invalid max threads value") unless it is given.
    # use_ino: the manager numbers files, so all names of a file show one inode (tar, rsync -H).
    # Timeouts 0 until the manager's lease lets the kernel keep attributes and names (with
    # metadata_cache); without it, attributes are asked for at every stat: the names of a file
    # are separate kernel inodes here (libfuse numbers nodes by name), and a change through one
    # name must show through the others (nlink, size, data) at once.
    options: dict[str, Any] = {"max_idle_threads": 16, "use_ino": True, "attr_timeout": 0}
    if client.settings.metadata_cache:
        options["entry_timeout"] = 0
    if allow_other:
        options.update(allow_other=True, default_permissions=True)
    try:
        _FUSE(fs, mountpoint, read_ahead, foreground=foreground, nothreads=False, fsname="memstage",
              subtype="memstage", **options)
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
        fs.detach()
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

