"""Validation of user-supplied file paths and namespace names.

A path is absolute within its namespace ('/run42/rank0.bin'), made of components that are not
'.', '..' or empty, contain no NUL or '/', and are at most 255 bytes (NAME_MAX); 64 KiB in all.
A drained name ('<namespace>/<path components>/<chunk file>', relative to the PFS root) is judged
as it stands, never normalised into shape: one '..', '.' or empty component refuses it, so the
namespace it names is the directory it resolves under.
"""

from __future__ import annotations

import re

from memstage.errors import InvalidPath, NameTooLong

MAX_COMPONENT_BYTES = 255
# Not PATH_MAX: that bounds one system call's path argument, and a local file system holds deeper
# trees (made with relative calls), so the mount does too; the PFS copy is walked with directory
# descriptors, whatever its length. What is left is a sanity bound on what one name may cost: it
# travels in control messages (gRPC's limit is 4 MiB), catalog rows and drained chunk names, and
# 64 KiB is 16 times what any one system call can name while still small beside those.
MAX_PATH_BYTES = 64 * 1024
# A symbolic link's target is read by the kernel as one path: PATH_MAX, as on Linux.
MAX_SYMLINK_BYTES = 4096
# A drained chunk file's name: '<namespace>/<path>/<chunk file>', each part bounded.
MAX_DRAINED_BYTES = 63 + 1 + MAX_PATH_BYTES + 1 + MAX_COMPONENT_BYTES
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def normalize_path(path: str) -> str:
    """Return the canonical form ('/a/b'), or raise InvalidPath saying what is wrong."""
    if not isinstance(path, str):
        raise InvalidPath(f"path must be a string, not {type(path).__name__}")
    if "\x00" in path:
        raise InvalidPath(f"path {path!r} contains a NUL byte")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise NameTooLong(f"path is longer than {MAX_PATH_BYTES} bytes")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise InvalidPath(f"path {path!r} contains '..': paths may not leave their namespace")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise NameTooLong(f"path component {part[:40]!r}... is longer than {MAX_COMPONENT_BYTES} bytes")
    return "/" + "/".join(parts)


def normalize_file_path(path: str) -> str:
    """Like normalize_path, but the root itself is not a file."""
    norm = normalize_path(path)
    if norm == "/":
        raise InvalidPath("'/' is a directory, not a file")
    return norm


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise InvalidPath(
            f"namespace {namespace!r} is invalid: use 1-63 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return namespace


def split_drained(drained: str) -> tuple[str, str]:
    """(namespace, rest) of a drained chunk file's name, or InvalidPath. Every component must be a
    plain name: the namespace a grant is checked against is then the one the name resolves under."""
    if not isinstance(drained, str) or not drained:
        raise InvalidPath("drained name is empty")
    if "\x00" in drained:
        raise InvalidPath(f"drained name {drained!r} contains a NUL byte")
    if len(drained.encode("utf-8", "surrogateescape")) > MAX_DRAINED_BYTES:
        raise NameTooLong(f"drained name is longer than {MAX_DRAINED_BYTES} bytes")
    parts = drained.split("/")
    if len(parts) < 3 or any(p in ("", ".", "..") for p in parts):
        raise InvalidPath(f"drained name {drained!r} is not <namespace>/<path>/<chunk file> with plain components")
    return check_namespace(parts[0]), "/".join(parts[1:])


def parent_dirs(path: str) -> list[str]:
    """'/a/b/c' -> ['/', '/a', '/a/b']."""
    parts = path.strip("/").split("/")[:-1]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
