"""The memstage client library and fsspec filesystem (`memstage://HOST:PORT/NAMESPACE/PATH`)."""

from memstage.client.client import Client
from memstage.client.filestat import FileStat
from memstage.client.writer import CommitResult, WriteStats
from memstage.errors import (
    ChunkRejected,
    DataLost,
    DeploymentFull,
    FsError,
    InvalidArgument,
    InvalidPath,
    MemstageError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    SettingError,
    Unavailable,
)

__all__ = [
    "ChunkRejected", "Client", "CommitResult", "DataLost", "DeploymentFull", "FileStat", "FsError", "InvalidArgument",
    "InvalidPath",
    "MemstageError", "NotFound", "PermissionDenied", "QuotaExceeded", "SettingError", "Unavailable", "WriteStats",
]
