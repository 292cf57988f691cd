"""Model-based test of several writers of one file (socket-free): real OpenFile objects (the FUSE
mount's and the library's write state), each over the version current when it opened, do random
writes and truncates; they commit in a random order. A commit that finds a newer version is
refused (Conflict) and merged over it, as against the real manager. The reference model replays
each writer's operations, in commit order, over a byte array: disjoint writes always survive,
overlapping bytes are the last committer's."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from memstage.chunks import ChunkKey
from memstage.client.extents import Changes, Extents, chunk_plan
from memstage.client.fusefile import OpenFile
from memstage.client.writer import WriteStats
from memstage.errors import Conflict, NotFound

CHUNK = 16


@dataclass
class Store:
    """What the manager and the benefactors would hold: chunk bytes by key, versions of one path."""

    chunks: dict[ChunkKey, bytes] = field(default_factory=dict)
    versions: list[list[ChunkKey]] = field(default_factory=list)
    conflicts: int = 0

    def content(self, version: int) -> bytes:
        return b"".join(bytes(k.length) if k.is_hole else self.chunks[k] for k in self.versions[version - 1])


class Reader:
    def __init__(self, store: Store, version: int) -> None:
        self.store, self.version = store, version
        self.keys = list(store.versions[version - 1])
        self.size = sum(k.length for k in self.keys)

    def read_range(self, start: int, end: int, ahead: bool = True) -> bytes:
        return self.store.content(self.version)[start : min(end, self.size)]


class Writer:
    """VersionWriter's contract, in memory: puts keep bytes, the commit checks the base."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.layout: list[ChunkKey] = []
        self.want_info = False
        self.info = None  # the attributes a real commit's reply brings (none here)

    def check_space(self) -> None:
        pass

    def put(self, data: memoryview, ask: bool = True) -> ChunkKey:
        key = ChunkKey.of(data)
        self.store.chunks[key] = bytes(data)
        return key

    def place(self, key: ChunkKey) -> None:
        self.layout.append(key)

    def add_held(self, key: ChunkKey) -> None:
        assert key in self.store.chunks
        self.layout.append(key)

    def release(self, key: ChunkKey) -> None:
        pass

    def settle(self) -> None:
        pass

    def locate(self, key: ChunkKey) -> ChunkKey:
        return key

    def relayout(self) -> None:
        self.layout = []

    def finish(self) -> WriteStats:
        return WriteStats(0, 0, 0, len(self.layout), 0.0)

    def commit(self, attrs: object, base: int | None = None) -> int:
        if base is not None and base != len(self.store.versions):
            self.store.conflicts += 1
            raise Conflict("a newer version")
        self.store.versions.append(list(self.layout))
        return len(self.store.versions)

    def laid_out(self) -> list[ChunkKey]:
        return list(self.layout)

    def abort(self) -> None:
        pass


class Client:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.settings = SimpleNamespace(chunk_size=CHUNK, buffer_size=4 * CHUNK)  # 4 slots: hand-overs happen

    def reader(self, path: str, version: int = 0) -> Reader:
        if not self.store.versions:
            raise NotFound(path)
        return Reader(self.store, version or len(self.store.versions))

    def new_writer(self, path: str, opened_at: float, known: object = None) -> Writer:
        return Writer(self.store)

    def map_reader(self, key: ChunkKey, read_ahead: bool = True) -> SimpleNamespace:
        return SimpleNamespace(fetch=lambda index: self.store.chunks[key])

    def record(self, result: object) -> None:
        pass


def replay(content: bytearray, ops: list[tuple], seen: int) -> bytearray:
    """A writer's operations over `content`; `seen`: the size the writer saw at each truncate
    (a truncate that changed nothing in its own view is no operation)."""
    for op in ops:
        if op[0] == "write":
            _, offset, data = op
            if offset > len(content):
                content.extend(bytes(offset - len(content)))
            content[offset : offset + len(data)] = data
        elif op[0] == "truncate":
            _, length, size_seen = op
            if length == size_seen:
                continue
            del content[length:]
            content.extend(bytes(length - len(content)))
    return content


OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 8 * CHUNK), st.integers(1, 3 * CHUNK)),
    st.tuples(st.just("truncate"), st.integers(0, 8 * CHUNK), st.just(0)),
), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(initial=st.integers(0, 6 * CHUNK), writers=st.lists(OPS, min_size=1, max_size=4), data=st.data())
def test_writers_merge_like_their_operations_replayed_in_commit_order(initial, writers, data):
    store = Store()
    client = Client(store)
    first = bytes((i * 7 + 1) % 251 for i in range(initial))
    if initial:
        f = OpenFile(client, "/f", None, truncate=True)  # type: ignore[arg-type]
        f.write(first, 0)
        f.commit()
    files, logs = [], []
    for w, ops in enumerate(writers):
        base = client.reader("/f") if store.versions else None
        f = OpenFile(client, "/f", base, truncate=False)  # type: ignore[arg-type]
        log = []
        for n, op in enumerate(ops):
            if op[0] == "write":
                payload = bytes([(w * 50 + n * 13 + i) % 256 for i in range(op[2])])
                f.write(payload, op[1])
                log.append(("write", op[1], payload))
            else:
                log.append(("truncate", op[1], f.size))
                f.truncate(op[1])
        files.append(f)
        logs.append(log)
    order = data.draw(st.permutations(range(len(writers))))
    model = bytearray(first)
    for w in order:
        files[w].commit()
        model = replay(model, logs[w], 0)
        assert store.content(len(store.versions)) == bytes(model), f"after writer {w} (order {order})"
    # Every writer that committed first saw no conflict; the others merged.
    assert store.conflicts <= len(writers) - 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=12), st.integers(0, 260))
def test_extents_are_the_union_of_what_was_added_cut_where_told(ranges, cut_at):
    e, model = Extents(), set()
    for start, length in ranges:
        e.add(start, start + length)
        model |= set(range(start, start + length))
    assert {i for s, t in zip(e.starts, e.ends, strict=True) for i in range(s, t)} == model
    assert all(t < s2 for t, s2 in zip(e.ends, e.starts[1:], strict=False))  # disjoint, not touching
    e.cut(cut_at)
    assert {i for s, t in zip(e.starts, e.ends, strict=True) for i in range(s, t)} == {i for i in model if i < cut_at}
    assert e.within(10, 50) == [(max(10, s), min(50, t)) for s, t in zip(e.starts, e.ends, strict=True)
                                if s < 50 and t > 10]


def test_chunk_plan_splits_whole_and_partial_chunks():
    c = Changes()
    c.write(0, 32)  # chunks 0 and 1 whole
    c.write(40, 50)  # part of chunk 2
    c.write(64, 70)  # part of the last chunk, which ends at 70
    assert chunk_plan(c, 16, 70) == ([0, 1, 4], [2, 3])  # the last chunk [64, 70) is written whole
    assert chunk_plan(c, 16, 80) == ([0, 1], [2, 3, 4])
