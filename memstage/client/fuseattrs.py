"""What stat shows on a mount: st_* attributes of what the manager keeps (a FileStat), of a file
open on the mount (with what it has not committed yet), and of the read-only .versions tree; and
the record of one open handle, which fstat answers from."""

from __future__ import annotations

import dataclasses
import os
import stat
import time
import zlib
from typing import Any

from memstage.client.filestat import FileStat
from memstage.client.fusefile import OpenFile
from memstage.client.reader import VersionReader
from memstage.proto import manager_pb2

VERSIONS = "/.versions"


def synthetic_ino(path: str) -> int:
    """An inode number for a name the manager does not number (.versions, a new file not committed)."""
    return (1 << 61) | (zlib.crc32(path.encode()) << 20) | 1


def in_versions(path: str) -> bool:
    return path == VERSIONS or path.startswith(VERSIONS + "/")


def version_path(path: str) -> tuple[str, int] | None:
    """'/.versions/a/b/3' -> ('/a/b', 3)."""
    rest = path[len(VERSIONS):]
    head, _, last = rest.rpartition("/")
    return (head, int(last)) if head and last.isdigit() else None


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


def attrs(info: FileStat, blksize: int, default_ns: int) -> dict[str, Any]:
    """default_ns: the times of a name that has none (the mount's start)."""
    mode = info.mode or ((stat.S_IFDIR | 0o755) if info.is_dir else (stat.S_IFREG | 0o644))
    default = info.mtime_ns or int(info.committed_at * 1e9) or default_ns
    return {"st_mode": mode, "st_nlink": info.nlink or (2 if info.is_dir else 1), "st_size": info.size,
            "st_uid": info.uid if info.uid >= 0 else os.getuid(),
            "st_gid": info.gid if info.gid >= 0 else os.getgid(),
            "st_mtime": default, "st_ctime": info.ctime_ns or default, "st_atime": info.atime_ns or default,
            "st_blksize": blksize, "st_blocks": -(-(info.stored or 0) // 512),
            "st_ino": info.ino, "st_rdev": info.rdev}


def open_attrs(handle: Handle, blksize: int, default_ns: int) -> dict[str, Any]:
    """A file open here: what the manager knows, with this handle's changes not committed yet."""
    info = handle.info or FileStat(path=handle.path)  # not at the manager yet: no owner set
    obj = handle.obj
    if not isinstance(obj, OpenFile):
        return attrs(dataclasses.replace(info, size=obj.size), blksize, default_ns)
    a = obj.attrs
    changed: dict[str, Any] = {"size": obj.size, "stored": obj.size, "uid": a.get("uid", info.uid),
                               "gid": a.get("gid", info.gid)}
    if "mode" in a:
        changed["mode"] = stat.S_IFREG | (a["mode"] & 0o7777)
    changed.update((field, a[field]) for field in ("atime_ns", "mtime_ns", "ino") if field in a)
    if not changed.get("mtime_ns", info.mtime_ns):
        changed["mtime_ns"] = time.time_ns()
    return attrs(dataclasses.replace(info, **changed), blksize, default_ns)


def version_file_attrs(base: dict[str, Any], path: str, size: int, committed_at: float) -> dict[str, Any]:
    """.versions/<path>/<n>: a read-only file with its own size and commit time (base: its file's)."""
    when = int(committed_at * 1e9)
    return {**base, "st_mode": stat.S_IFREG | 0o444, "st_size": size, "st_nlink": 1, "st_mtime": when,
            "st_ctime": when, "st_atime": when, "st_blocks": -(-size // 512), "st_ino": synthetic_ino(path)}


def versions_dir_attrs(base: dict[str, Any], path: str) -> dict[str, Any]:
    """A directory of .versions: r-x (base: the file or directory it stands for)."""
    return {**base, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0, "st_ino": synthetic_ino(path)}


def statfs_attrs(status: manager_pb2.StatusReply, chunk: int) -> dict[str, int]:
    """The deployment's memory as one file system: free as writers can use it, whole chunks on
    each live benefactor (a chunk is not split)."""
    alive = [b for b in status.benefactors if b.alive]
    capacity = sum(b.stats.memory_capacity for b in alive)
    free = sum(max(0, b.stats.memory_capacity - b.stats.memory_used) // chunk * chunk for b in alive)
    block = 65536
    return {"f_bsize": block, "f_frsize": block, "f_blocks": capacity // block, "f_bfree": free // block,
            "f_bavail": free // block, "f_files": 1 << 20, "f_ffree": 1 << 20, "f_namemax": 255}
