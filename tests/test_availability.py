"""What versions() says when the benefactors holding a version are gone: not in memory, and
unavailable until its PFS copy is found (or it is lost), at once; and the look at the PFS goes ahead
of the new owner's drain queue."""

from __future__ import annotations

import pytest
from conftest import MiB, random_bytes, wait_for

from memstage.chunks import ChunkKey
from memstage.manager.catalog import Catalog, Policy

pytestmark = pytest.mark.timeout(120)


def test_after_a_restart_of_the_whole_deployment_nothing_claims_to_be_in_memory(local_cluster):
    cluster = local_cluster(benefactors=1)
    c = cluster.client()
    c.policy(persist_every=0)
    c.pipe("/mem.bin", random_bytes(MiB))
    assert c.versions("/mem.bin")[-1]["in_memory"]
    cluster.benefactors[0].kill()
    cluster.restart_manager()  # SIGKILL, then the same state again; the benefactor is not back
    v = c.versions("/mem.bin")[-1]
    assert not v["in_memory"] and v["unavailable"], v


def test_a_dead_holder_makes_its_undrained_versions_unavailable_at_once(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=0)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    # Its PFS cannot be written (the drain retries): the version is in its memory only.
    slow = cluster.add_benefactor(64 * MiB, "--pfs", str(blocked / "pfs"))
    c = cluster.client()
    c.policy(persist_every=1)
    c.pipe("/ckpt.bin", random_bytes(MiB))
    cluster.add_benefactor(64 * MiB)
    slow.kill()
    wait_for(lambda: slow.id not in cluster.alive_ids(), what="the benefactor to be declared dead")
    # From its death on, never "fine": unavailable until the PFS was looked at, then lost.
    v = c.versions("/ckpt.bin")[-1]
    assert v["unavailable"] or v["lost"], v
    assert not v["in_memory"]
    wait_for(lambda: c.versions("/ckpt.bin")[-1]["lost"], timeout=30, what="the PFS look to find no copy")


def test_looking_for_a_dead_holders_chunks_on_the_pfs_goes_ahead_of_the_queue(tmp_path):
    cat = Catalog(str(tmp_path))
    cat.set_policy("ns", Policy(persist_every=1, keep_versions=100))
    both = {"b1", "b2"}
    for i in range(20):  # b2's own backlog
        cat.commit("ns", f"/busy{i}", 10, [(ChunkKey(i.to_bytes(16, "big"), 10), ["b2"])], both)
    orphan = ChunkKey(b"\xff" * 16, 10)
    cat.commit("ns", "/only-on-b1", 10, [(orphan, ["b1"])], both)
    cat.reassign_drains("b1", {"b2"}, "b1 died")
    first = cat.drain_work("b2", 1)
    assert [(t.path, t.key) for t in first] == [("/only-on-b1", orphan)]
    cat.close()
