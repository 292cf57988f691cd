"""FileStat: what the manager keeps about a name, as the client hands it out.

The manager answers with a protobuf; callers get this frozen value instead, so they cannot change
a shared answer by mistake and need not know the wire format.
"""

from __future__ import annotations

import dataclasses
import operator
import stat
from dataclasses import dataclass

from memstage.proto import manager_pb2


@dataclass(frozen=True, slots=True)
class FileStat:
    path: str
    is_dir: bool = False
    size: int = 0  # bytes of the latest version
    version: int = 0  # the latest version (0: none committed)
    committed_at: float = 0.0  # seconds since the epoch
    version_count: int = 0
    mode: int = 0  # file type and permission bits, as st_mode (0: never set)
    uid: int = -1  # -1: never set (a mount shows its own)
    gid: int = -1
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nlink: int = 0
    target: str = ""  # a symbolic link's target
    ino: int = 0  # stable while the file exists (all names of a file share it)
    stored: int = 0  # bytes of data, holes excluded (st_blocks)
    rdev: int = 0  # a device node's device number
    # The latest version has the redundancy its namespace's policy asks, or is on the PFS; filled
    # in only when the stat asked for it.
    protected: bool = False

    @classmethod
    def from_pb(cls, info: manager_pb2.FileInfo) -> FileStat:
        return cls(*_FROM_PB(info))

    @property
    def kind(self) -> str:
        """'directory', 'symlink' or 'file' (as fsspec's info() names them)."""
        if self.is_dir:
            return "directory"
        return "symlink" if stat.S_ISLNK(self.mode) else "file"


# A listing converts thousands of entries: the fields are read by one getter made once, in order.
_FROM_PB = operator.attrgetter(*(f.name for f in dataclasses.fields(FileStat)))
