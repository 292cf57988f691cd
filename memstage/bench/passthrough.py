"""A bare passthrough FUSE filesystem (mfusepy, like memstage's mount): the ceiling of FUSE in Python.

`python -m memstage.bench.passthrough SOURCE_DIR MOUNTPOINT` serves SOURCE_DIR through FUSE with
no work beyond the system calls, so `memstage bench --fuse` can compare the memstage mount with
what FUSE in Python allows on the machine at all.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# mfusepy picks libfuse 2 when both are installed; libfuse 3 negotiates 1 MiB writes (libfuse 2
# sends the file system 4 KiB ones here), so ask for it unless the user chose otherwise.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # noqa: E402


class Passthrough(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, root: str) -> None:
        self.root = root

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._p(path))
        keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid")
        out: dict[str, Any] = {k: getattr(st, k) for k in keys}
        out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return out

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._p(path))]

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def open(self, path: str, flags: int) -> int:
        return os.open(self._p(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(self._p(path), length)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        os.fsync(fh)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._p(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._p(old), self._p(new))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._p(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._p(path))
        return 0

    def chmod(self, path: str, mode: int, fh: int | None = None) -> int:  # dbm.dumb sets its files' modes
        os.chmod(self._p(path), mode)
        return 0


if __name__ == "__main__":
    # libfuse 2 sends 4 KiB writes unless asked for big ones (up to 128 KiB); libfuse 3 always may.
    # max_idle_threads as the memstage mount sets it (libfuse 3.14 warns about its own default
    # otherwise, in the middle of the bench's table).
    extra = {"big_writes": True} if mfusepy.fuse_version_major == 2 else {"max_idle_threads": 16}
    mfusepy.FUSE(Passthrough(sys.argv[1]), sys.argv[2], foreground=True, nothreads=False, fsname="passthrough",
                 **extra)
