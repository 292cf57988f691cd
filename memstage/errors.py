"""Domain errors, and their translation to and from gRPC status codes at the process boundary.

Library users catch these typed exceptions; the CLI prints their message as one line; the FUSE
layer maps them to errno values. Nothing here imports grpc at module level beyond the status codes.
"""

from __future__ import annotations

import errno
import re

import grpc


class MemstageError(Exception):
    """Base of every error memstage raises on purpose. The message is meant for a user."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    errno: int = errno.EIO


class SettingError(MemstageError, ValueError):
    """A setting (flag, MEMSTAGE_* variable, TOML key) has a bad value."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    errno = errno.EINVAL


class InvalidPath(MemstageError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    errno = errno.EINVAL


class InvalidArgument(MemstageError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    errno = errno.EINVAL


class NameTooLong(InvalidPath):
    errno = errno.ENAMETOOLONG


class FsError(InvalidArgument):
    """A file system call refused for a POSIX reason (ENOTEMPTY, EISDIR, EEXIST, ...). Its errno
    travels with it: the message starts with the errno's name in brackets across gRPC."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.errno = number  # type: ignore[misc]

    def __str__(self) -> str:
        return str(self.args[0])


class NotFound(MemstageError, FileNotFoundError):
    code = grpc.StatusCode.NOT_FOUND
    errno = errno.ENOENT


class DeploymentFull(MemstageError):
    """No live benefactor has room for more chunks."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    errno = errno.ENOSPC


class QuotaExceeded(DeploymentFull):
    """The namespace is at a quota its policy sets (memory, or open write sessions): EDQUOT on a
    mount. Other namespaces' writes go on."""

    errno = errno.EDQUOT


class ChunkRejected(MemstageError):
    """A benefactor refused a chunk whose bytes do not match its hash."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    errno = errno.EIO


class DataLost(MemstageError):
    """Chunks a write or a version needs are on benefactors that died."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    errno = errno.EIO


class DataDamaged(MemstageError):
    """Stored bytes that cannot be read back as they were written (a damaged or unreadable PFS copy)."""

    code = grpc.StatusCode.DATA_LOSS
    errno = errno.EIO


class Conflict(MemstageError):
    """Another writer committed the file since this writer's base version: lay the changes over
    the newer version and commit again (the write session is still open)."""

    code = grpc.StatusCode.ABORTED
    errno = errno.EAGAIN


class Unavailable(MemstageError, ConnectionError):
    """A manager or benefactor could not be reached."""

    code = grpc.StatusCode.UNAVAILABLE
    errno = errno.EIO


class Unauthenticated(MemstageError, PermissionError):
    """No credential, or one the server does not know (a wrong token or cluster secret)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    errno = errno.EACCES


class PermissionDenied(MemstageError, PermissionError):
    """A known credential that does not grant this (another namespace, read-only, not admin)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    errno = errno.EACCES


_BY_CODE: dict[grpc.StatusCode, type[MemstageError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: DeploymentFull,
    grpc.StatusCode.FAILED_PRECONDITION: DataLost,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
}


_TAGGED = re.compile(r"^\[(E[A-Z0-9]+)\] (.*)$", re.S)


def to_rpc_detail(error: MemstageError) -> str:
    """The message a server sends: tagged with the errno when the status code alone would not say it."""
    expected = _BY_CODE.get(error.code, MemstageError).errno
    if error.errno != expected:
        return f"[{errno.errorcode.get(error.errno, 'EIO')}] {error}"
    return str(error)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The status code sent as a number (a stream port's replies carry them so)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def from_rpc_error(err: grpc.RpcError, what: str) -> MemstageError:
    """Turn a failed call into the typed error a caller expects; `what` names the peer or call."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    detail = err.details() if isinstance(err, grpc.Call) else str(err)
    return from_status(code, detail, what)


def from_status(code: grpc.StatusCode, detail: str | None, what: str) -> MemstageError:
    """The typed error of a call that ended with this status, by gRPC or by another port that
    answers with gRPC's codes and details (the manager's control port)."""
    tagged = _TAGGED.match(detail or "")
    if tagged and tagged.group(1) == "EDQUOT":
        message = tagged.group(2)
        return QuotaExceeded(message if message.startswith(what) else f"{what}: {message}")
    if tagged and hasattr(errno, tagged.group(1)):
        message = tagged.group(2)
        return FsError(getattr(errno, tagged.group(1)), message if message.startswith(what) else f"{what}: {message}")
    cls = _BY_CODE.get(code, MemstageError)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in (detail or ""):
        # gRPC's own size limit, not a full deployment: say so rather than "no space".
        return InvalidArgument(f"{what}: a message exceeds gRPC's size limit ({detail}); "
                               "a file this large needs a larger chunk_size")
    if cls is Unavailable:
        return Unavailable(f"{what}: unreachable ({detail})")
    # The manager's messages mostly start with the path already: name it once ("/a: no such ...").
    return cls(detail if detail and (detail == what or detail.startswith(f"{what}:")) else f"{what}: {detail}")

