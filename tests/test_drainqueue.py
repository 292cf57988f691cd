"""The drain queue (a row per version and benefactor, chunks packed): a model test of random
queueing, draining, moving and dropping against a plain list of tasks, and the catalog's drain
reports on top of it. No sockets."""

from __future__ import annotations

import sqlite3

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from memstage.chunks import ChunkKey
from memstage.manager.catalog import Catalog, Policy
from memstage.manager.drainqueue import DrainQueue, split_task_id

OWNERS = ["b1", "b2", "b3", ""]


class DrainQueueModel(RuleBasedStateMachine):
    """Reference: a list of tasks (place in the queue, version, chunk index, length, owner)."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = DrainQueue(sqlite3.connect(":memory:", isolation_level=None), group_max=2)  # groups split
        self.model: list[tuple[int, tuple[str, str, int], int, int, str]] = []
        self.versions = 0

    @rule(owners=st.lists(st.sampled_from(OWNERS), min_size=1, max_size=6), size=st.integers(1, 9))
    def commit(self, owners: list[str], size: int) -> None:
        self.versions += 1
        vk = ("ns", f"/f{self.versions % 3}", self.versions)
        keys = [ChunkKey(bytes([i + 1]) * 16, size + i) for i in range(len(owners))]
        self.queue.queue_version(*vk, keys, owners, float(self.versions))
        self.model += [(self.versions, vk, i, k.length, bf) for i, (k, bf) in enumerate(zip(keys, owners, strict=True))]

    @rule(bf=st.sampled_from(OWNERS), k=st.integers(1, 5))
    def drain(self, bf: str, k: int) -> None:
        """The benefactor reports its k oldest tasks drained (the catalog pops them and saves)."""
        taken = list(self.queue.work(bf, k))
        for group, member in taken:
            g = self.queue.group(group.id)
            assert g is not None
            del g.members[member.index]
            self.queue.save(g)
            self.model = [t for t in self.model if not (t[1] == group.version_key and t[2] == member.index)]

    @rule(bf=st.sampled_from(OWNERS), to=st.sampled_from(OWNERS), k=st.integers(1, 5))
    def move(self, bf: str, to: str, k: int) -> None:
        """Its k oldest tasks go to another benefactor and keep their place in the queue."""
        for group, member in list(self.queue.work(bf, k)):
            g = self.queue.group(group.id)
            assert g is not None
            del g.members[member.index]
            self.queue.save(g)
            self.queue.add(g.ns, g.path, g.version, g.count, {to: [member]}, g.queued_at, g.seq)
            self.model = [t if not (t[1] == group.version_key and t[2] == member.index) else (*t[:4], to)
                          for t in self.model]

    @rule(data=st.data())
    def drop_version(self, data: st.DataObject) -> None:
        if self.model:
            vk = data.draw(st.sampled_from(sorted({t[1] for t in self.model})))
            self.queue.drop_version(*vk)
            self.model = [t for t in self.model if t[1] != vk]

    @invariant()
    def same_tasks_in_queue_order(self) -> None:
        for bf in OWNERS:
            work = list(self.queue.work(bf, 1000))
            got = [(group.version_key, m.index) for group, m in work]
            assert sorted(got) == sorted((t[1], t[2]) for t in self.model if t[4] == bf)
            places = [group.seq for group, _ in work]
            assert places == sorted(places), "a benefactor drains in commit order"
            for k in (1, 3):
                assert [(g.version_key, m.index) for g, m in self.queue.work(bf, k)] == got[:k]
            mine = [t for t in self.model if t[4] == bf]
            assert self.queue.backlog_of(bf) == (sum(t[3] for t in mine), len(mine))
        assert self.queue.versions() == {t[1] for t in self.model}
        assert self.queue.owners() == {t[4] for t in self.model}


TestDrainQueueModel = DrainQueueModel.TestCase
TestDrainQueueModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def _persisted_catalog(tmp_path) -> Catalog:
    cat = Catalog(str(tmp_path))
    cat.set_policy("ns", Policy(persist_every=1, keep_versions=2))
    return cat


def test_a_persisted_commit_queues_a_row_per_benefactor_and_drains_in_chunk_order(tmp_path):
    cat = _persisted_catalog(tmp_path)
    alive = {"b0", "b1", "b2", "b3"}
    keys = [ChunkKey(i.to_bytes(16, "big"), 10) for i in range(1, 1025)]
    cat.commit("ns", "/big", 10 * len(keys), [(k, [f"b{i % 4}"]) for i, k in enumerate(keys)], alive)
    assert cat._db.execute("SELECT COUNT(*) FROM drain_groups").fetchone()[0] == 4
    tasks = cat.drain_work("b1", 1000)
    assert [t.index for t in tasks] == list(range(1, 1024, 4))
    assert [t.offset for t in tasks[:2]] == [10, 50] and tasks[0].key == keys[1] and tasks[0].count == 1024
    assert cat.backlog_of("b1") == (2560, 256)
    out = cat.drain_done("b1", [(t.id, f"ns/c/{t.index}", False, "", 10) for t in tasks[:100]], alive)
    assert out.drained_bytes == 1000 and not out.persisted
    assert [t.index for t in cat.drain_work("b1", 2)] == [401, 405]
    for bf in sorted(alive):
        out = cat.drain_done(bf, [(t.id, f"ns/c/{t.index}", False, "", 10) for t in cat.drain_work(bf, 1000)], alive)
    assert out.persisted == {("ns", "/big")} and cat.version("ns", "/big").persisted
    cat.close()


def test_a_version_lost_in_a_drain_report_stays_lost_though_other_chunks_of_it_drained(tmp_path):
    """One report: chunk 0 drained, chunk 1 missing on the only benefactor that held it. The version
    cannot be restored from the PFS: it is lost, not persisted."""
    cat = _persisted_catalog(tmp_path)
    alive = {"b1"}
    keys = [ChunkKey(bytes([i + 1]) * 16, 5) for i in range(2)]
    cat.commit("ns", "/f", 10, [(k, ["b1"]) for k in keys], alive)
    first, second = cat.drain_work("b1", 10)
    out = cat.drain_done("b1", [(first.id, "ns/c/0", False, "", 5), (second.id, "", True, "", 0)], alive)
    assert out.lost and not out.persisted
    rec = cat.version("ns", "/f")
    assert rec.lost and not rec.persisted
    cat.close()


def test_drain_tasks_moved_to_another_holder_keep_their_place(tmp_path):
    cat = _persisted_catalog(tmp_path)
    alive = {"b1", "b2"}
    old = ChunkKey(bytes([1]) * 16, 5)
    cat.commit("ns", "/a", 5, [(old, ["b1", "b2"])], alive)  # both hold it; b1 drains it
    cat.commit("ns", "/b", 5, [(ChunkKey(bytes([2]) * 16, 5), ["b2"])], alive)
    (task,) = cat.drain_work("b1", 10)
    out = cat.drain_done("b1", [(task.id, "", True, "", 0)], alive)  # b1 no longer has it: b2 drains it
    assert not out.lost
    assert [(t.path, split_task_id(t.id)[1]) for t in cat.drain_work("b2", 10)] == [("/a", 0), ("/b", 0)]
    assert cat.locations(("ns", old)) == {"b2": cat.locations(("ns", old))["b2"]}
    cat.close()


def test_queued_tasks_of_an_earlier_release_become_groups_in_their_order(tmp_path):
    cat = _persisted_catalog(tmp_path)
    keys = [ChunkKey(bytes([i + 1]) * 16, 5) for i in range(3)]
    cat.commit("ns", "/f", 15, [(k, ["b1"]) for k in keys], {"b1"})
    cat._db.executescript("""
        DELETE FROM drain_groups;
        CREATE TABLE drain_tasks (
            id INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL,
            idx INTEGER NOT NULL, count INTEGER NOT NULL, offset INTEGER NOT NULL, hash BLOB NOT NULL,
            length INTEGER NOT NULL, benefactor TEXT NOT NULL, queued_at REAL NOT NULL);""")
    for i, k in reversed(list(enumerate(keys))):  # ids in another order than the chunks: ids decide
        cat._db.execute("INSERT INTO drain_tasks (ns, path, version, idx, count, offset, hash, length, benefactor, "
                        "queued_at) VALUES ('ns', '/f', 1, ?, 3, ?, ?, 5, 'b1', 0)", (i, 5 * i, k.hash))
    cat.close()
    cat = Catalog(str(tmp_path))
    assert [(t.index, t.offset, t.key) for t in cat.drain_work("b1", 10)] == [(2, 10, keys[2]), (1, 5, keys[1]),
                                                                              (0, 0, keys[0])]
    assert not cat._db.execute("SELECT 1 FROM sqlite_master WHERE name='drain_tasks'").fetchone()
    out = cat.drain_done("b1", [(t.id, f"ns/c/{t.index}", False, "", 5) for t in cat.drain_work("b1", 10)], {"b1"})
    assert out.persisted == {("ns", "/f")}
    cat.close()


def test_a_large_version_is_queued_in_bounded_groups(tmp_path):
    """A report rewrites one group's blob: a file of many chunks is split so that stays small."""
    cat = _persisted_catalog(tmp_path)
    keys = [ChunkKey(i.to_bytes(16, "big"), 3) for i in range(1, 2501)]
    cat.commit("ns", "/huge", 3 * len(keys), [(k, ["b1"]) for k in keys], {"b1"})
    sizes = [n for (n,) in cat._db.execute("SELECT chunks FROM drain_groups ORDER BY id")]
    assert sizes == [1024, 1024, 452]
    assert [t.index for t in cat.drain_work("b1", 3000)] == list(range(2500))
    cat.close()
