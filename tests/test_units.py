"""Pure state and codecs, tested with plain calls: no sockets, no processes."""

from __future__ import annotations

import os

import pytest

from memstage.benefactor.arena import BLOCK_SIZE, Arena, ArenaFull
from memstage.benefactor.store import ChunkStore
from memstage.chunks import MAX_FRAME_DATA, ChunkKey
from memstage.errors import DataLost, InvalidArgument, InvalidPath, NotFound, SettingError
from memstage.frames import FrameError, decode_get_frame, decode_put_frame, encode_get_frame, encode_put_frame
from memstage.manager.catalog import Catalog
from memstage.manager.registry import Registry, Stats
from memstage.paths import check_namespace, normalize_path
from memstage.proto import benefactor_pb2
from memstage.settings import BenefactorSettings, ClientSettings, ManagerSettings, load
from memstage.units import parse_duration, parse_size

MiB = 1024 * 1024


# -- frames ---------------------------------------------------------------------------------------
def test_put_frame_codec_matches_protobuf_both_ways():
    data = os.urandom(100_000)
    header = benefactor_pb2.PutHeader(namespace="ns", key=ChunkKey.of(data).to_pb(), seq=42)
    ours = encode_put_frame(header, memoryview(data))
    assert ours == benefactor_pb2.PutFrame(header=header, data=data).SerializeToString()
    parsed = benefactor_pb2.PutFrame.FromString(ours)
    assert parsed.header == header and parsed.data == data
    view = decode_put_frame(benefactor_pb2.PutFrame(header=header, data=data).SerializeToString())
    assert view.header == header and bytes(view.data) == data
    tail = decode_put_frame(encode_put_frame(None, b"abc"))
    assert tail.header is None and bytes(tail.data) == b"abc"


def test_get_frame_codec_matches_protobuf():
    data = os.urandom(5000)
    assert encode_get_frame(data) == benefactor_pb2.GetFrame(data=data).SerializeToString()
    assert bytes(decode_get_frame(benefactor_pb2.GetFrame(data=data).SerializeToString())) == data


@pytest.mark.parametrize("raw", [b"\x12\x05abc", b"\x12", b"\x0f\x00", b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"])
def test_malformed_frames_raise(raw):
    with pytest.raises(FrameError):
        decode_put_frame(raw)


# -- registry -------------------------------------------------------------------------------------
def test_registry_ttl_is_three_intervals():
    r = Registry(heartbeat_interval=10)
    r.register("a", "h:1", Stats(100, 0), now=0)
    assert r.is_alive("a", 29.9)
    assert not r.is_alive("a", 30.1)
    assert [d.id for d in r.newly_dead(31)] == ["a"]
    assert r.newly_dead(32) == []  # reported once
    assert not r.heartbeat("a", Stats(100, 0), now=31)  # dead: must register again
    assert not r.heartbeat("unknown", Stats(), now=0)


def test_striping_map_orders_by_free_memory_and_honours_exclude_and_width():
    r = Registry(heartbeat_interval=10)
    r.register("small", "h:1", Stats(100, 90), now=0)
    r.register("big", "h:2", Stats(100, 10), now=0)
    r.register("mid", "h:3", Stats(100, 50), now=0)
    assert [p.id for p in r.striping_map(3, set(), 1, now=1)] == ["big", "mid", "small"]
    assert [p.id for p in r.striping_map(2, set(), 1, now=1)] == ["big", "mid"]
    assert [p.id for p in r.striping_map(3, {"big"}, 1, now=1)] == ["mid", "small"]
    assert [p.id for p in r.striping_map(3, set(), 20, now=1)] == ["big", "mid"]  # small has 10 free
    assert r.striping_map(3, set(), 1, now=100) == []  # all dead
    r.note_used("big", 85)
    assert [p.id for p in r.striping_map(1, set(), 1, now=1)] == ["mid"]


# -- catalog --------------------------------------------------------------------------------------
def _key(n: int, length: int = 10) -> ChunkKey:
    return ChunkKey(n.to_bytes(16, "big"), length)


def test_catalog_versions_refcounts_and_durability(tmp_path):
    cat = Catalog(str(tmp_path))
    live = {"b1", "b2"}
    shared, only1, only2 = _key(1), _key(2), _key(3)
    version, holds = cat.commit("ns", "/a", 20, [(shared, ["b1"]), (only1, ["b1"])], live)
    assert version == 1 and [k for k, _ in holds["b1"]] == [shared, only1]
    assert cat.commit("ns", "/b", 30, [(shared, ["b2"]), (only2, ["b2"]), (shared, ["b2"])], live)[0] == 1
    assert cat.commit("ns", "/a", 10, [(shared, [])], live)[0] == 2  # referenced, not sent: held already
    assert cat.refs(("ns", shared)) == 3 and set(cat.locations(("ns", shared))) == {"b1", "b2"}
    gen_only1 = cat.locations(("ns", only1))["b1"]
    count, freed = cat.delete_file("ns", "/a")
    assert count == 2 and freed == {("ns", only1): {"b1": gen_only1}}  # freed at the generation it was held at
    assert cat.refs(("ns", shared)) == 1
    cat.close()
    again = Catalog(str(tmp_path))  # a restart loses nothing committed
    assert again.refs(("ns", shared)) == 1 and set(again.locations(("ns", only2))) == {"b2"}
    assert again.version("ns", "/b").keys == (shared, only2, shared)
    with pytest.raises(NotFound):
        again.version("ns", "/a")
    with pytest.raises(InvalidArgument, match="size"):
        again.commit("ns", "/c", 999, [(shared, ["b1"])], live)
    assert [f.path for f in again.files_under("ns", "/")] == ["/b"]


def test_catalog_commit_refuses_chunks_no_live_benefactor_holds(tmp_path):
    cat = Catalog(str(tmp_path))
    a, b = _key(1), _key(2)
    cat.commit("ns", "/a", 10, [(a, ["b1"])], {"b1"})
    assert cat.find("ns", [a, b], {"b1"}) == [True, False]
    assert cat.find("other", [a], {"b1"}) == [False]  # dedup never crosses namespaces
    assert cat.find("ns", [a], {"b2"}) == [False]  # its only holder is dead
    with pytest.raises(DataLost, match="chunk 0 .* no longer held"):
        cat.commit("ns", "/b", 10, [(b, [])], {"b1"})  # referenced but never stored
    with pytest.raises(DataLost, match="chunk 1 .* on b9, not alive"):
        cat.commit("ns", "/b", 20, [(a, []), (b, ["b9"])], {"b1"})
    cat.delete_file("ns", "/a")
    with pytest.raises(DataLost):
        cat.commit("ns", "/c", 10, [(a, [])], {"b1"})  # freed since the writer learned of it
    assert cat.files_under("ns", "/") == []  # nothing committed by the refused commits


def test_catalog_refuses_unwritable_state_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SettingError, match="--state"):
        Catalog(str(tmp_path / "file" / "sub"))


# -- arena and chunk store ------------------------------------------------------------------------
def test_arena_stores_in_runs_and_reuses_freed_blocks():
    arena = Arena(4 * BLOCK_SIZE, prefault=False)
    a = os.urandom(BLOCK_SIZE + 1)
    runs = arena.store(a)
    assert runs == ((0, 2),) and b"".join(arena.views(runs, len(a))) == a
    b = os.urandom(2 * BLOCK_SIZE)
    runs_b = arena.store(b)
    with pytest.raises(ArenaFull):
        arena.store(b"x")
    arena.free(runs)
    c = os.urandom(2 * BLOCK_SIZE)
    runs_c = arena.store(c)
    assert b"".join(arena.views(runs_c, len(c))) == c and b"".join(arena.views(runs_b, len(b))) == b


def test_chunk_store_reserves_never_overcommits_and_reads_ranges():
    store = ChunkStore(2 * MiB, prefault=False)
    assert store.reserve(MiB) and store.reserve(MiB)
    assert not store.reserve(1)  # reservations count before the bytes arrive
    data = os.urandom(MiB)
    key = ("ns", ChunkKey.of(data))
    store.put_reserved(key, data, session=1)
    store.put_reserved(key, data, session=1)  # the same chunk twice: stored once, reservation released
    assert store.used == MiB and store.reserve(MiB)
    assert store.read(key, 10, 20, prefix=b"P") == b"P" + data[10:20]
    assert store.read(("other", key[1])) is None  # keyed by namespace too
    assert store.end_session(1) == MiB and store.used == 0  # never committed: gone with its session


# -- settings, units, paths -----------------------------------------------------------------------
def test_settings_precedence_flags_env_toml_defaults(tmp_path):
    toml = tmp_path / "memstage.toml"
    toml.write_text('[benefactor]\nmemory = "3GiB"\nheartbeat_interval = "5s"\nlisten = "127.0.0.1:9000"\n')
    env = {"MEMSTAGE_HEARTBEAT_INTERVAL": "7s", "MEMSTAGE_LISTEN": "127.0.0.1:9001"}
    s = load(BenefactorSettings, {"listen": "127.0.0.1:9002"}, env=env, config=str(toml))
    assert s.listen == "127.0.0.1:9002"  # flag
    assert s.heartbeat_interval == 7.0  # env over TOML
    assert s.memory == 3 * 1024**3  # TOML over default
    assert s.orphan_grace == 600.0  # default
    assert load(ManagerSettings, {}, env={}).heartbeat_interval == 30.0


@pytest.mark.parametrize("flags, message", [
    ({"memory": "4XB"}, "--memory: '4XB' is not a size"),
    ({"heartbeat_interval": "soon"}, "--heartbeat-interval: 'soon' is not a duration"),
    ({"manager": "nohost"}, "--manager: 'nohost' is not HOST:PORT"),
    ({"memory": "0"}, "--memory: must be greater than 0"),
])
def test_bad_setting_values_name_the_setting(flags, message):
    with pytest.raises(SettingError) as info:
        load(BenefactorSettings, flags, env={})
    assert str(info.value).startswith(message)


def test_bad_env_and_toml_values_name_their_source(tmp_path):
    with pytest.raises(SettingError, match="^MEMSTAGE_CHUNK_SIZE: 'big' is not a size"):
        load(ClientSettings, {}, env={"MEMSTAGE_CHUNK_SIZE": "big"})
    toml = tmp_path / "c.toml"
    toml.write_text("[client]\nchunksize = 1\n")
    with pytest.raises(SettingError, match="unknown setting \\[client\\] chunksize"):
        load(ClientSettings, {}, env={}, config=str(toml))
    with pytest.raises(SettingError, match="chunk_size: .* over the limit"):
        load(ClientSettings, {"chunk_size": "65MiB"}, env={}, flag_style=str)


def test_units():
    assert parse_size("4GiB") == 4 * 1024**3 and parse_size("1.5MiB") == 1572864 and parse_size("10k") == 10000
    assert parse_duration("500ms") == 0.5 and parse_duration("2m") == 120 and parse_duration(3) == 3.0
    for bad in ("", "GiB", "-1", "1 parsec"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_paths():
    assert normalize_path("a//b/./c/") == "/a/b/c"
    assert normalize_path("/") == "/"
    with pytest.raises(InvalidPath):
        normalize_path("/a/../b")
    with pytest.raises(InvalidPath):
        check_namespace("../x")


def test_big_chunks_span_several_frames():
    from memstage.transport import encode_chunk

    data = memoryview(os.urandom(MAX_FRAME_DATA * 2 + 5))
    frames = encode_chunk("ns", 1, 3, ChunkKey.of(data), data)
    parsed = [decode_put_frame(f) for f in frames]
    assert len(frames) == 3 and parsed[0].header is not None and parsed[1].header is None
    assert b"".join(bytes(p.data) for p in parsed) == bytes(data)


def test_a_state_directory_of_an_earlier_release_gains_the_new_columns(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "manager.sqlite3")
    db.executescript("""
        CREATE TABLE benefactors (id TEXT PRIMARY KEY, address TEXT NOT NULL, capacity INTEGER NOT NULL,
                                  registered_at REAL NOT NULL);
        CREATE TABLE versions (ns TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, size INTEGER NOT NULL,
            committed_at REAL NOT NULL, chunk_map BLOB NOT NULL, persist INTEGER NOT NULL,
            persisted INTEGER NOT NULL DEFAULT 0, in_memory INTEGER NOT NULL DEFAULT 1,
            lost INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ns, path, version));
        CREATE TABLE locations (ns TEXT NOT NULL, hash BLOB NOT NULL, length INTEGER NOT NULL,
                                benefactor TEXT NOT NULL, PRIMARY KEY (ns, hash, length, benefactor));
        CREATE TABLE nodes (ns TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, mode INTEGER NOT NULL,
            uid INTEGER NOT NULL, gid INTEGER NOT NULL, atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL, target TEXT NOT NULL DEFAULT '', PRIMARY KEY (ns, path));
        INSERT INTO versions VALUES ('ns', '/old', 1, 0, 0, x'', 0, 0, 1, 0);
        INSERT INTO versions VALUES ('ns', '/held', 1, 3, 0,
                                     x'010101010101010101010101010101010000000000000003', 0, 0, 1, 0);
        INSERT INTO locations VALUES ('ns', x'01010101010101010101010101010101', 3, 'b1');
        INSERT INTO benefactors VALUES ('b1', 'h:1', 10, 0);
        INSERT INTO nodes VALUES ('ns', '/old', 'file', 416, 7, 8, 1, 2, 3, '');
    """)
    db.commit()
    db.close()
    cat = Catalog(str(tmp_path))
    assert cat.version("ns", "/old").lost_reason == "" and cat.incarnation("b1") == 0
    node = cat.node("ns", "/old")  # metadata rows from before inode numbers were stored keep theirs
    assert node is not None and (node.mode, node.uid, node.ino) == (416, 7, 2)
    cat.remember_benefactor("b1", "h:1", 10, 42)
    assert cat.incarnation("b1") == 42
    # One row per location became the location log, and says the same after a restart.
    key = ("ns", ChunkKey(bytes([1]) * 16, 3))
    assert cat.locations(key) == {"b1": 0}
    cat.close()
    cat = Catalog(str(tmp_path))
    assert cat.locations(key) == {"b1": 0}
    cat.close()
