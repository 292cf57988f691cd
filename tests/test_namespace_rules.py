"""The POSIX rules of the manager's namespace operations, as pure functions of the kinds of the
names involved (no catalog, no sockets)."""

from __future__ import annotations

import errno
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstage.errors import FsError, NotFound
from memstage.manager.namespace import (
    check_link_source,
    check_mkdir,
    check_new_name,
    check_parents,
    check_rename,
    check_rmdir,
    check_symlink_target,
    check_unlink,
    replaces_by_unlink,
    special_kind,
)
from memstage.manager.nodes import DIR, FILE, LINK, ROW_KINDS, SPECIAL, SYMLINK
from memstage.paths import MAX_SYMLINK_BYTES

KINDS = [None, DIR, FILE, SYMLINK, LINK, *SPECIAL.values()]
kinds = st.sampled_from(KINDS)


def refusal(call, *args) -> int | None:  # type: ignore[no-untyped-def]
    """The errno a rule refuses with (None: allowed)."""
    try:
        call(*args)
    except (FsError, NotFound) as e:
        return int(e.errno)
    return None


@given(kinds)
def test_a_parent_that_is_not_a_directory_refuses_with_enotdir(kind: str | None) -> None:
    names = {"/a": DIR, "/a/b": kind}
    got = refusal(check_parents, names.get, "/a/b/c")
    assert got == (None if kind in (None, DIR) else errno.ENOTDIR)


def test_parents_checked_from_the_top() -> None:
    with pytest.raises(FsError, match="/a: not a directory"):
        check_parents({"/a": FILE, "/a/b": SYMLINK}.get, "/a/b/c")


@given(kinds)
def test_unlink(kind: str | None) -> None:
    expected = {None: errno.ENOENT, DIR: errno.EISDIR}.get(kind)  # type: ignore[call-overload]
    assert refusal(check_unlink, "ns", "/f", kind) == expected


@given(st.sampled_from(KINDS[1:]), kinds)
def test_rename_by_kind(ksrc: str, kdst: str | None) -> None:
    got = refusal(check_rename, "/a", "/b", ksrc, kdst)
    if ksrc == DIR:
        assert got == (None if kdst in (None, DIR) else errno.ENOTDIR)
    else:
        assert got == (errno.EISDIR if kdst == DIR else None)


def test_a_directory_never_moves_into_itself() -> None:
    assert refusal(check_rename, "/a", "/a/b", DIR, None) == errno.EINVAL
    assert refusal(check_rename, "/a", "/ab", DIR, None) is None  # a sibling sharing a prefix


@given(st.sampled_from(KINDS[1:]), kinds, st.booleans())
def test_what_a_rename_unlinks_first(ksrc: str, kdst: str | None, others: bool) -> None:
    # A file over a file with no other names becomes its next version; any other name is replaced.
    expected = kdst in ROW_KINDS or (kdst == FILE and (ksrc != FILE or others))
    assert replaces_by_unlink(ksrc, kdst, others) == expected


@given(kinds)
def test_mkdir_rmdir_and_new_names(kind: str | None) -> None:
    assert refusal(check_mkdir, "/d", kind) == (None if kind in (None, DIR) else errno.EEXIST)
    assert refusal(check_rmdir, "/d", kind) == (None if kind in (None, DIR) else errno.ENOTDIR)
    assert refusal(check_new_name, "/d", kind) == (None if kind is None else errno.EEXIST)


@given(kinds)
def test_hard_links(kind: str | None) -> None:
    expected = {None: errno.ENOENT, DIR: errno.EPERM}.get(kind)  # type: ignore[call-overload]
    assert refusal(check_link_source, "ns", "/f", kind) == expected


def test_symlink_targets() -> None:
    assert refusal(check_symlink_target, "/l", "") == errno.ENOENT
    assert refusal(check_symlink_target, "/l", "x" * (MAX_SYMLINK_BYTES + 1)) == errno.ENAMETOOLONG
    assert refusal(check_symlink_target, "/l", "x" * MAX_SYMLINK_BYTES) is None


def test_special_files_by_mode() -> None:
    for fmt, kind in SPECIAL.items():
        assert special_kind("/n", fmt | 0o644) == kind
    for fmt in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, 0):
        assert refusal(special_kind, "/n", fmt | 0o644) == errno.EINVAL
