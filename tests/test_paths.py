"""Drained chunk names judged after normalisation (socket-free): whatever string a caller sends, a
name that is accepted resolves inside the directory of the namespace it names, which is the one a
grant is checked against."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from memstage.benefactor.drain import DrainLoop
from memstage.chunks import ChunkKey
from memstage.errors import InvalidPath
from memstage.paths import split_drained

COMPONENTS = st.sampled_from(["attacker", "victim", "..", ".", "", "a.bin", "x.chunk", "...", "/", "\x00", "v"])
NAMES = st.one_of(st.lists(COMPONENTS, max_size=7).map("/".join), st.text(max_size=40))


@settings(max_examples=600, deadline=None)
@given(NAMES)
@example("attacker/../victim/a.bin/x.chunk")
@example("attacker/./../victim/a.bin/x.chunk")
@example("attacker//../victim/a.bin/x.chunk")
@example("attacker/mine.bin/../../victim/a.bin/x.chunk")
@example("/victim/a.bin/x.chunk")
def test_an_accepted_drained_name_resolves_under_the_namespace_it_names(name):
    root = "/pfs"
    try:
        namespace, rest = split_drained(name)
    except InvalidPath:
        return
    resolved = os.path.normpath(os.path.join(root, name))
    assert resolved.startswith(f"{root}/{namespace}/"), (name, resolved)
    assert os.path.normpath(os.path.join(root, namespace, rest)) == resolved


@pytest.mark.parametrize("name", ["attacker/../victim/a.bin/x.chunk", "attacker/./../victim/a.bin/x.chunk",
                                  "attacker//../victim/a.bin/x.chunk", "attacker/mine.bin/../../victim/a/x.chunk",
                                  "/victim/a.bin/x.chunk", "victim", "victim/x.chunk", "", "../x/y/z"])
def test_names_that_climb_or_are_not_plain_are_refused(name):
    with pytest.raises(InvalidPath):
        split_drained(name)


def test_a_symlink_in_one_namespace_does_not_read_another(tmp_path: Path):
    """The drain loop reads only under the namespace's own directory, through symlinks too."""
    data = b"victim's bytes"
    key = ChunkKey.of(data)
    (tmp_path / "victim" / "a.bin").mkdir(parents=True)
    (tmp_path / "victim" / "a.bin" / "x.chunk").write_bytes(data)
    (tmp_path / "attacker").mkdir()
    (tmp_path / "attacker" / "link").symlink_to(tmp_path / "victim" / "a.bin")
    loop = DrainLoop.__new__(DrainLoop)
    loop.root = tmp_path
    assert loop.read_drained("victim/a.bin/x.chunk", key) == data
    with pytest.raises(PermissionError):
        loop.read_drained("attacker/link/x.chunk", key)
