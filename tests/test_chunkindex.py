"""ChunkIndex.add_version (the one-loop commit path) against the index's own per-chunk operations. No sockets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memstage.chunks import HOLE_HASH, ChunkKey
from memstage.manager.chunkindex import ChunkIndex

KEYS = [ChunkKey(bytes([i]) * 16, 10 * i) for i in range(1, 6)] + [ChunkKey(HOLE_HASH, 7)]
chunk = st.tuples(st.sampled_from(KEYS), st.lists(st.sampled_from(["b1", "b2", "b3"]), max_size=2, unique=True))


def _reference(index: ChunkIndex, ns: str, chunks, gen: int):  # type: ignore[no-untyped-def]
    """What a commit did chunk by chunk before add_version."""
    touched = set()
    located, holds = [], {}
    for key, locs in chunks:
        if key.is_hole:
            continue
        ik = (ns, key)
        if ik not in touched:
            touched.add(ik)
            index.bump(ik, 1, 1)
        for bf in locs:
            held = index.locations(ik).get(bf)
            if held is None:
                held = gen
                index.add_location(ik, bf, gen)
                located.append((key, bf, gen))
            holds.setdefault(bf, []).append((key, held))
    return located, holds


def _state(index: ChunkIndex):  # type: ignore[no-untyped-def]
    return ({ik: (e.refs, e.mem_refs, dict(e.locations)) for ik, e in index.items()}, index.held_stats(),
            index.location_count)


@settings(max_examples=200, deadline=None)
@given(commits=st.lists(st.lists(chunk, max_size=8), max_size=6))
def test_add_version_does_what_the_per_chunk_operations_do(commits):
    fast, slow = ChunkIndex(), ChunkIndex()
    for gen, chunks in enumerate(commits, start=1):
        assert fast.add_version("ns", chunks, gen) == _reference(slow, "ns", chunks, gen)
        assert _state(fast) == _state(slow)


def test_first_holder_is_the_live_holder_of_lowest_id():
    index = ChunkIndex()
    index.add_version("ns", [(KEYS[0], ["b3", "b2", "b1"])], 1)
    assert index.first_holder(("ns", KEYS[0]), {"b2", "b3"}) == "b2"
    assert index.first_holder(("ns", KEYS[0]), set()) == ""
    assert index.first_holder(("ns", KEYS[1]), {"b1"}) == ""


def _short_reference(index: ChunkIndex, ns: str, keys: list[ChunkKey], copies: int, alive: set[str]) -> bool:
    for k in keys:
        if k.is_hole:
            continue
        if (ns, k) not in index:
            return True
        if index.drained((ns, k)):
            continue
        if sum(1 for bf in index.locations((ns, k)) if bf in alive) < copies:
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(commits=st.lists(st.lists(chunk, max_size=6), max_size=5), drained=st.sets(st.integers(0, 5)),
       version=st.lists(st.sampled_from(KEYS + [ChunkKey(b"\x09" * 16, 3)]), max_size=6),
       alive=st.sets(st.sampled_from(["b1", "b2", "b3"])), copies=st.integers(1, 2),
       ns=st.sampled_from(["ns", "other"]))
def test_short_of_walks_a_packed_map_as_the_index_reads_it(commits, drained, version, alive, copies, ns):
    from memstage.manager.catalog import pack_map

    index = ChunkIndex()
    for gen, chunks in enumerate(commits, start=1):
        index.add_version("ns", chunks, gen)
    for i in drained:
        index.set_drained(("ns", KEYS[i]), f"drained/{i}")
    got = index.short_of(ns, pack_map(version), copies, index.numbers(alive))
    assert got == _short_reference(index, ns, version, copies, alive)


@settings(max_examples=200, deadline=None)
@given(commits=st.lists(st.tuples(st.sampled_from(["ns", "other"]), st.lists(chunk, max_size=6)), max_size=6),
       drained=st.sets(st.integers(0, 5)), evicted=st.sets(st.integers(0, 5)),
       alive=st.sets(st.sampled_from(["b1", "b2", "b3"])),
       want=st.dictionaries(st.sampled_from(["ns", "other", "absent"]), st.integers(1, 4)))
def test_short_held_reads_the_arrays_as_items_would(commits, drained, evicted, alive, want):
    index = ChunkIndex()
    for gen, (ns, chunks) in enumerate(commits, start=1):
        index.add_version(ns, chunks, gen)
    for i in drained:
        index.set_drained(("ns", KEYS[i]), f"drained/{i}")
    for i in evicted:
        if ("other", KEYS[i]) in index:
            index.bump(("other", KEYS[i]), 0, -1)  # out of memory: its copies are dropped
    expected = []
    for ik, e in index.items():
        limit = want.get(ik[0])
        if limit is None or e.mem_refs <= 0 or e.drained:
            continue
        live = sorted(bf for bf in e.locations if bf in alive)
        if 0 < len(live) < limit:
            expected.append((ik, live, list(e.locations)))
    assert list(index.short_held(want, alive)) == expected


@settings(max_examples=100, deadline=None)
@given(entries=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from([bytes(16), b"\xff" * 16,
                                                                                     bytes([1]) + bytes(15)]),
                                  st.sampled_from([0, 1, 1 << 20, 1 << 26, (1 << 32) + 1, 1 << 70])),
                        max_size=25))
def test_keys_that_differ_only_in_namespace_or_length_stay_apart(entries):
    """The index keys a chunk by one int of length, namespace number and hash: chunks alike but for
    one of them are distinct entries, and every entry reads back as the key it was given."""
    index = ChunkIndex()
    model: dict[tuple[str, ChunkKey], int] = {}
    for ns, h, n in entries:
        ik = (ns, ChunkKey(h, n))
        index.bump(ik, 1, 1)
        index.add_location(ik, "b1", 5)
        model[ik] = model.get(ik, 0) + 1
    assert {ik: e.refs for ik, e in index.items()} == model
    assert all(index.locations(ik) == {"b1": 5} for ik in model)
    assert index.stored_bytes() == {ns: sum(k.length for (m, k) in model if m == ns) for ns in {m for m, _ in model}}
    assert ("a", ChunkKey(b"\x01" * 15, 1)) not in index  # a short hash cannot alias a 16-byte one


PLACED_KEYS = [ChunkKey(bytes([i]) * 16, 4 if i % 3 else 9) for i in range(1, 9)]
placed_commit = st.lists(st.tuples(st.sampled_from(PLACED_KEYS), st.sampled_from(["b1", "b2", "b3"])), max_size=6)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.one_of(st.tuples(st.just("commit"), placed_commit),
                                st.tuples(st.just("release"), st.sampled_from(PLACED_KEYS))), max_size=12))
def test_add_placed_does_what_add_version_does_or_leaves_it_to_add_version(steps):
    """The commit of new data, in a few passes, against the one-loop path: the same locations,
    holds, counts and state, slots freed by releases reused; and nothing touched when a key is
    already indexed or repeated (the caller then takes the one-loop path)."""
    fast, slow = ChunkIndex(), ChunkIndex()
    for gen, (what, arg) in enumerate(steps, start=1):
        if what == "release":
            ik = ("ns", arg)
            if ik in slow:
                assert fast.bump(ik, -1, -1) == slow.bump(ik, -1, -1)
            continue
        keys, names = [k for k, _ in arg], [bf for _, bf in arg]
        chunks = [(k, [bf]) for k, bf in arg]
        fresh = len(set(keys)) == len(keys) and not any(("ns", k) in slow for k in keys) and bool(keys)
        before = _state(fast)
        got = fast.add_placed("ns", keys, names, gen)
        if not fresh:
            assert got is None and _state(fast) == before
            got = fast.add_version("ns", chunks, gen)
        assert got == _reference(slow, "ns", chunks, gen)
        assert _state(fast) == _state(slow)
    for k in PLACED_KEYS:
        assert fast.first_holder(("ns", k), {"b1", "b2", "b3"}) == slow.first_holder(("ns", k), {"b1", "b2", "b3"})


NEW = [ChunkKey(bytes([100 + i]) * 16, 1000 + i) for i in range(6)]


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("commit"), st.sampled_from(["ns", "other"]), st.lists(chunk, max_size=5)),
    st.tuples(st.just("placed"), st.sampled_from(["ns", "other"]), st.integers(0, 5)),
    st.tuples(st.just("evict"), st.integers(0, 20)),  # a version leaves memory (kept on the PFS)
    st.tuples(st.just("delete"), st.integers(0, 20)),  # a version is deleted
    st.tuples(st.just("reload"),),  # a manager restart: the counts are loaded again
), max_size=40))
def test_memory_bytes_per_namespace_follows_every_change(ops):
    """The per-namespace in-memory byte count (checked against memory quotas on every striping map)
    equals what a full walk of the index counts, after any sequence of changes."""
    index = ChunkIndex()
    versions: list[tuple[str, list[ChunkKey], bool]] = []  # (namespace, distinct keys, in memory)
    used_new = 0
    for op in ops:
        if op[0] == "commit":
            _, ns, chunks = op
            index.add_version(ns, chunks, len(versions) + 1)
            versions.append((ns, list({k for k, _ in chunks if not k.is_hole}), True))
        elif op[0] == "placed" and used_new < len(NEW):
            _, ns, n = op
            keys = NEW[used_new:used_new + max(1, n)]
            used_new += len(keys)
            if index.add_placed(ns, keys, ["b1"] * len(keys), len(versions) + 1) is None:
                index.add_version(ns, [(k, ["b1"]) for k in keys], len(versions) + 1)
            versions.append((ns, keys, True))
        elif op[0] in ("evict", "delete") and versions:
            i = op[1] % len(versions)
            ns, keys, in_memory = versions[i]
            if op[0] == "evict" and in_memory:
                for k in keys:
                    index.bump((ns, k), 0, -1)
                versions[i] = (ns, keys, False)
            elif op[0] == "delete":
                for k in keys:
                    index.bump((ns, k), -1, -1 if in_memory else 0)
                del versions[i]
        elif op[0] == "reload":
            counts: dict = {}
            for ns, keys, in_memory in versions:
                for k in keys:
                    c = counts.setdefault((ns, k), [0, 0])
                    c[0] += 1
                    c[1] += 1 if in_memory else 0
            index = ChunkIndex()
            for ik, (refs, mem) in counts.items():
                index.load(ik, refs, mem, "")
        walked = index.usage()
        for ns in ("ns", "other"):
            assert index.memory_bytes(ns) == walked.get(ns, (0, 0))[0], (ns, op)
