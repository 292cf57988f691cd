"""The location log: replaying its records gives the locations the changes left, a snapshot says
the same, and the catalog keeps its locations across restarts and compactions. No sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstage.chunks import ChunkKey
from memstage.manager import locationlog
from memstage.manager.catalog import Catalog, Placed, pack_map, store

KEYS = [ChunkKey(bytes([i]) * 16, 100 + i) for i in range(1, 5)]
NAMESPACES = ["a", "b"]
BENEFACTORS = ["b1", "b2", "b3"]

op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(NAMESPACES), st.sampled_from(KEYS), st.sampled_from(BENEFACTORS),
              st.integers(1, 1 << 62)),
    st.tuples(st.just("del"), st.sampled_from(NAMESPACES), st.sampled_from(KEYS), st.sampled_from(BENEFACTORS)),
    st.tuples(st.just("drop"), st.sampled_from(NAMESPACES), st.sampled_from(KEYS)),
    st.tuples(st.just("void"), st.sampled_from(BENEFACTORS)),
    st.tuples(st.just("adds"), st.sampled_from(NAMESPACES),
              st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(BENEFACTORS)), max_size=5),
              st.integers(1, 1 << 62)),
)


def _apply(model: dict[tuple[str, ChunkKey, str], int], batch: locationlog.Batch, o: tuple) -> None:  # type: ignore[type-arg]
    """One change, to the reference model (a plain dict) and to the batch."""
    kind = o[0]
    if kind == "add":
        _, ns, key, bf, gen = o
        model[(ns, key, bf)] = gen
        batch.add(ns, key, bf, gen)
    elif kind == "del":
        _, ns, key, bf = o
        model.pop((ns, key, bf), None)
        batch.delete(ns, key, bf)
    elif kind == "adds":  # a commit's new chunks, packed as it brought them
        _, ns, placed, gen = o
        for key, bf in placed:
            model[(ns, key, bf)] = gen
        batch.add_packed(ns, b"".join(key.hash + key.length.to_bytes(8, "big") for key, _ in placed),
                         [bf for _, bf in placed], gen)
    elif kind == "drop":
        _, ns, key = o
        for k in [k for k in model if k[:2] == (ns, key)]:
            del model[k]
        batch.drop(ns, key)
    else:
        for k in [k for k in model if k[2] == o[1]]:
            del model[k]
        batch.void(o[1])


@settings(max_examples=300, deadline=None)
@given(records=st.lists(st.lists(op, max_size=12), max_size=8))
def test_replay_gives_what_the_changes_left(records):
    model: dict[tuple[str, ChunkKey, str], int] = {}
    blobs = []
    count = 0
    for ops in records:
        batch = locationlog.Batch()
        for o in ops:
            _apply(model, batch, o)
        count += len(batch)
        blobs.append(batch.encode())
    located, ops_seen = locationlog.replay(blobs)
    assert ops_seen == count
    assert {(ns, key, bf): gen for ns, key, bf, gen in located} == model
    # A snapshot of that state replays to the same state, whatever the record size.
    again, _ = locationlog.replay(locationlog.snapshot(located, per_record=3))
    assert sorted(again, key=repr) == sorted(located, key=repr)


def test_a_copy_added_again_after_its_benefactor_was_voided_stays():
    batch = locationlog.Batch()
    batch.add("a", KEYS[0], "b1", 5)
    batch.add("a", KEYS[1], "b1", 6)
    batch.void("b1")
    batch.add("a", KEYS[1], "b1", 9)
    located, _ = locationlog.replay([batch.encode()])
    assert located == [("a", KEYS[1], "b1", 9)]


def _commit(cat: Catalog, path: str, keys: list[ChunkKey], bf: str, packed: bool = False) -> None:
    # packed: as a client's commit of new chunks arrives (logged as one ADDS of the packed keys)
    placed = Placed(keys, [bf] * len(keys), pack_map(keys)) if packed else None
    cat.commit("ns", path, sum(k.length for k in keys), [(k, [bf]) for k in keys], {bf}, placed=placed)


@pytest.mark.parametrize("packed", [False, True])
def test_the_catalog_keeps_its_locations_across_compactions_and_restarts(tmp_path, monkeypatch, packed):
    monkeypatch.setattr(store, "LOG_COMPACT_AT", 10)
    cat = Catalog(str(tmp_path))
    keys = [ChunkKey(i.to_bytes(16, "big"), 10) for i in range(1, 41)]
    for n in range(4):
        _commit(cat, f"/f{n}", keys[n * 10:(n + 1) * 10], f"b{n % 2}", packed)
    cat.void_benefactor("b0", {"b1"}, "gone")  # f0 and f2: held only by b0 -> no locations
    expected = {k: cat.locations(("ns", k)) for k in keys}
    assert sum(1 for v in expected.values() if v) == 20
    rows = cat._db.execute("SELECT COUNT(*) FROM location_log").fetchone()[0]
    assert rows <= 2, "the log was compacted into a snapshot"
    cat.close()
    cat = Catalog(str(tmp_path))
    assert {k: cat.locations(("ns", k)) for k in keys} == expected
    cat.close()


def test_a_commit_of_new_chunks_is_logged_as_one_record_and_replayed(tmp_path):
    cat = Catalog(str(tmp_path))
    keys = [ChunkKey(i.to_bytes(16, "big"), 10) for i in range(1, 9)]
    _commit(cat, "/a", keys[:4], "b1", packed=True)
    _commit(cat, "/b", keys[4:], "b2", packed=True)
    expected = {k: cat.locations(("ns", k)) for k in keys}
    assert [set(expected[k]) for k in keys] == [{"b1"}] * 4 + [{"b2"}] * 4
    blobs = [blob for (blob,) in cat._db.execute("SELECT ops FROM location_log ORDER BY seq")]
    assert [op[0] for blob in blobs for op in locationlog.decode(blob)] == [locationlog.ADD] * 8
    cat.close()
    cat = Catalog(str(tmp_path))
    assert {k: cat.locations(("ns", k)) for k in keys} == expected
    cat.close()
