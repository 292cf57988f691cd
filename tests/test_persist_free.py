"""memstage persist and free of one version, socket-free: the rules (manager.retention) and what
the catalog does with them, with plain calls on a real catalog."""

from __future__ import annotations

import pytest

from memstage.chunks import ChunkKey
from memstage.errors import DataLost, InvalidArgument, NotFound
from memstage.manager import retention as r
from memstage.manager.catalog import Catalog, Policy


def test_persist_queues_a_drain_unless_on_the_pfs_waiting_or_lost():
    assert r.on_persist(persisted=False, waiting=False, lost=False) == r.QUEUE
    assert r.on_persist(persisted=True, waiting=False, lost=False) == r.ALREADY
    assert r.on_persist(persisted=False, waiting=True, lost=False) == r.ALREADY
    assert r.on_persist(persisted=False, waiting=False, lost=True) == r.REFUSE


def test_free_evicts_only_what_the_pfs_holds():
    assert r.on_free(in_memory=True, persisted=True) == r.EVICT
    assert r.on_free(in_memory=True, persisted=False) == r.REFUSE
    assert r.on_free(in_memory=False, persisted=True) == r.ALREADY


def key(n: int) -> ChunkKey:
    return ChunkKey(n.to_bytes(16, "big"), 10)


@pytest.fixture
def cat(tmp_path):
    c = Catalog(str(tmp_path))
    c.set_policy("ns", Policy(persist_every=0, keep_versions=5))  # nothing drains unless asked
    yield c
    c.close()


def drain_all(cat: Catalog, alive: set[str]) -> None:
    work = cat.drain_work("b0", 10_000)
    cat.drain_done("b0", [(t.id, f"ns{t.path}/{t.version}.{t.index}", False, "", 10) for t in work], alive)


def test_persist_then_free_a_version_policy_never_selected(cat):
    alive = {"b0"}
    cat.commit("ns", "/a", 10, [(key(1), ["b0"])], alive)
    cat.commit("ns", "/a", 10, [(key(2), ["b0"])], alive)
    assert cat.drain_work("b0", 100) == []  # persist_every 0: no drain
    with pytest.raises(InvalidArgument, match=r"/a version 1 is not on the PFS.*memstage persist"):
        cat.free_version("ns", "/a", 1)
    assert cat.versions("ns", "/a")[0].in_memory  # refused: still there

    assert cat.persist_version("ns", "/a", 1, alive, 0.0) == (1, r.QUEUE)
    assert cat.persist_version("ns", "/a", 1, alive, 0.0) == (1, r.ALREADY)  # queued once only
    assert [(t.path, t.version) for t in cat.drain_work("b0", 100)] == [("/a", 1)]
    with pytest.raises(InvalidArgument):  # draining is not drained
        cat.free_version("ns", "/a", 1)
    drain_all(cat, alive)
    v1, v2 = cat.versions("ns", "/a")
    assert v1.persist and v1.persisted and not v2.persist

    number, action, freed = cat.free_version("ns", "/a", 1)
    assert (number, action) == (1, r.EVICT) and set(freed) == {("ns", key(1))}  # ordered freed on b0
    v1, v2 = cat.versions("ns", "/a")
    assert not v1.in_memory and v1.persisted and v2.in_memory  # kept, read from the PFS
    assert cat.free_version("ns", "/a", 1)[1:] == (r.ALREADY, {})
    assert cat.persist_version("ns", "/a", 0, alive, 0.0) == (2, r.QUEUE)  # 0: the latest
    with pytest.raises(NotFound, match="/a: no version 7"):
        cat.persist_version("ns", "/a", 7, alive, 0.0)
    with pytest.raises(NotFound, match="/b: no such file"):
        cat.free_version("ns", "/b", 0)


def test_a_chunk_another_version_still_holds_in_memory_is_not_freed(cat):
    alive = {"b0"}
    cat.commit("ns", "/a", 20, [(key(1), ["b0"]), (key(2), ["b0"])], alive)
    cat.commit("ns", "/a", 20, [(key(1), ["b0"]), (key(3), ["b0"])], alive)
    cat.persist_version("ns", "/a", 1, alive, 0.0)
    drain_all(cat, alive)
    _, _, freed = cat.free_version("ns", "/a", 1)
    assert set(freed) == {("ns", key(2))}  # key(1) is version 2's too


def test_persist_of_a_lost_version_is_refused_naming_it(cat):
    cat.commit("ns", "/a", 10, [(key(1), ["b0"])], {"b0"})
    cat.void_benefactor("b0", set(), "benefactor b0 died")
    assert cat.versions("ns", "/a")[0].lost
    with pytest.raises(DataLost, match="/a version 1 is lost"):
        cat.persist_version("ns", "/a", 1, set(), 0.0)
