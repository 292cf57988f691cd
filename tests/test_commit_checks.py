"""The checks a commit passes before it is recorded, as pure functions (no catalog, no sockets):
the name is a file's, every location is proved by its receipt, the memory quota holds."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstage import receipts
from memstage.chunks import ChunkKey
from memstage.errors import DataLost, FsError, QuotaExceeded
from memstage.manager.commits import check_target, chunk_of_location, confirm, over_quota
from memstage.manager.nodes import DIR, FILE, LINK, SPECIAL, SYMLINK

KEYS = {bf: os.urandom(32) for bf in ("b0", "b1", "b2")}


def chunk(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "big"), 100 + i)


@pytest.mark.parametrize("kind", [None, FILE, DIR, SYMLINK, LINK, *SPECIAL.values()])
def test_a_commit_writes_only_a_file(kind: str | None) -> None:
    if kind in (None, FILE):
        check_target("/f", kind)
        return
    with pytest.raises(FsError) as refused:
        check_target("/f", kind)
    assert refused.value.errno == (errno.EISDIR if kind == DIR else errno.EEXIST)


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000))
def test_the_memory_quota(quota: int, used: int, added: int) -> None:
    refusal = over_quota("ns", quota, used, added)
    assert (refusal is not None) == (quota > 0 and added > 0 and used + added > quota)
    if refusal is not None:
        assert isinstance(refusal, QuotaExceeded) and "nothing was committed" in str(refusal)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=20), st.data())
def test_the_chunk_a_location_belongs_to(counts: list[int], data: st.DataObject) -> None:
    location = data.draw(st.integers(0, sum(counts) - 1))
    i = chunk_of_location(counts, location)
    assert sum(counts[:i]) <= location < sum(counts[:i + 1])


def located(session: int, copies: list[list[str]]) -> list[tuple[ChunkKey, list[tuple[str, bytes]]]]:
    return [(chunk(i), [(bf, receipts.make(KEYS[bf], session, "ns", chunk(i))) for bf in bfs])
            for i, bfs in enumerate(copies)]


def test_receipts_prove_every_location() -> None:
    copies = [["b0"], ["b1", "b2"], []]
    assert confirm(7, "ns", located(7, copies), KEYS) == [(chunk(i), bfs) for i, bfs in enumerate(copies)]


@given(st.integers(0, 2), st.sampled_from(["forged", "other session", "other namespace", "restarted", "unknown"]))
def test_the_first_location_not_proved_refuses_the_commit(bad: int, how: str) -> None:
    chunks = located(7, [["b0"], ["b1", "b2"], ["b0"]])
    key, locs = chunks[bad]
    bf, receipt = locs[-1]
    keys = dict(KEYS)
    if how == "forged":
        receipt = b"x" * len(receipt)
    elif how == "other session":
        receipt = receipts.make(KEYS[bf], 8, "ns", key)
    elif how == "other namespace":
        receipt = receipts.make(KEYS[bf], 7, "other", key)
    elif how == "restarted":  # a new incarnation has a new key
        keys[bf] = os.urandom(32)
    else:
        keys[bf] = b""  # not registered
    chunks[bad] = (key, [*locs[:-1], (bf, receipt)])
    if how in ("restarted", "unknown"):  # every chunk it holds is unproved: the first one refuses
        bad = next(i for i, (_, ls) in enumerate(chunks) if any(b == bf for b, _ in ls))
    with pytest.raises(DataLost, match=rf"chunk {bad} \(.*\) is not confirmed by benefactor {bf}"):
        confirm(7, "ns", chunks, keys)


def test_without_a_session_no_location_is_proved() -> None:
    with pytest.raises(DataLost, match="chunk 0"):
        confirm(0, "ns", located(0, [["b0"]]), KEYS)
    assert confirm(0, "ns", [(chunk(0), [])], KEYS) == [(chunk(0), [])]  # nothing to prove
