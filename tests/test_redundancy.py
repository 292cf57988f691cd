"""In-memory redundancy with real processes: replicas made after each commit, reads that survive
SIGKILLed benefactors, rebuild onto survivors, loss beyond tolerance; and the copy planner alone."""

from __future__ import annotations

import pytest
from conftest import MiB, random_bytes, wait_for

from memstage.chunks import ChunkKey
from memstage.client import InvalidArgument
from memstage.errors import SettingError
from memstage.manager.replication import Replicator
from memstage.redundancy import Redundancy

pytestmark = pytest.mark.timeout(180)


def namespace_status(cluster, namespace: str = "default") -> dict:
    for n in cluster.status()["namespaces"]:
        if n["namespace"] == namespace:
            return n
    return {}


def protected(cluster, versions: int) -> bool:
    n = namespace_status(cluster)
    return n.get("versions_protected") == versions and n.get("versions_degraded") == 0


def holders(client, path: str) -> list[set[str]]:
    """Benefactors holding each chunk of the latest version, as the manager's map says."""
    vmap = client.connections.call_manager(
        "Lookup", __import__("memstage.proto.manager_pb2", fromlist=["x"]).LookupRequest(
            namespace=client.namespace, path=path), path)
    return [{loc.benefactor_id for loc in c.locations} for c in vmap.chunks]


def test_replicate_2_survives_one_loss_rebuilds_and_survives_the_next(local_cluster):
    cluster = local_cluster(benefactors=4, memory=96 * MiB)
    c = cluster.client(chunk_size="1MiB")
    # Nothing drains: memory is the only place the version is (a drained chunk needs no copies).
    assert c.policy(redundancy="replicate:2", persist_every=0)["redundancy"] == "replicate:2"
    data = random_bytes(24 * MiB)
    c.pipe("/ckpt", data)
    wait_for(lambda: protected(cluster, 1), timeout=30, what="the copies of the new version")
    assert all(len(h) == 2 for h in holders(c, "/ckpt"))  # two distinct benefactors per chunk
    by_id = {b.id: b for b in cluster.benefactors}
    first = next(iter(holders(c, "/ckpt")[0]))
    by_id[first].kill()  # SIGKILL after the copies were made
    assert c.cat("/ckpt") == data  # every chunk still has a live copy
    wait_for(lambda: first not in cluster.alive_ids(), timeout=15, what="the killed benefactor to be dead")
    wait_for(lambda: protected(cluster, 1), timeout=60, what="the rebuild")  # survivors copied what it held
    alive = cluster.alive_ids()
    assert all(len(h & alive) == 2 for h in holders(c, "/ckpt")), (holders(c, "/ckpt"), alive)
    second = next(iter(holders(c, "/ckpt")[3] & alive))
    by_id[second].kill()
    assert c.cat("/ckpt") == data
    assert namespace_status(cluster)["versions_lost"] == 0


def test_copies_go_to_other_failure_domains(local_cluster):
    cluster = local_cluster(benefactors=0, memory=64 * MiB)
    rack = {}
    for name in ("rackA", "rackA", "rackB", "rackB"):
        rack[cluster.add_benefactor(64 * MiB, "--domain", name).id] = name
    c = cluster.client(chunk_size="1MiB")
    c.policy(redundancy="replicate:2", persist_every=0)
    c.pipe("/racked", random_bytes(16 * MiB))
    wait_for(lambda: protected(cluster, 1), timeout=30, what="the copies")
    for h in holders(c, "/racked"):
        assert len(h) == 2 and len({rack[b] for b in h}) == 2  # never both copies in one rack


def test_losing_every_copy_loses_the_version_with_a_reason(local_cluster):
    cluster = local_cluster(benefactors=3, memory=64 * MiB)
    c = cluster.client(chunk_size="1MiB")
    c.policy(redundancy="replicate:2", persist_every=0)
    c.pipe("/v", random_bytes(6 * MiB))
    wait_for(lambda: protected(cluster, 1), timeout=30, what="the copies")
    both = holders(c, "/v")[0]
    for b in cluster.benefactors:
        if b.id in both:
            b.kill()  # both copies of chunk 0 at once, before any rebuild
    wait_for(lambda: namespace_status(cluster).get("versions_lost") == 1, timeout=30, what="the loss to be seen")
    lost = cluster.status()["lost"]
    assert lost and lost[0]["path"] == "/v" and "died" in lost[0]["reason"]


def test_redundancy_policy_is_validated_and_named():
    assert str(Redundancy.parse("replicate:3")) == "replicate:3" and Redundancy.parse("none").copies == 1
    for bad in ("replicate:0", "replicate:x", "mirror", "rs:4"):
        with pytest.raises(SettingError, match="redundancy"):
            Redundancy.parse(bad)


def test_policy_rpc_refuses_a_bad_redundancy(local_cluster):
    c = local_cluster(benefactors=1).client()
    with pytest.raises(InvalidArgument, match="replicate:R"):
        c.policy(redundancy="replicate:99")
    assert c.policy()["redundancy"] == "none"


def test_planner_spreads_copies_over_other_benefactors_and_bounds_them():
    r = Replicator(max_in_flight=3, timeout=5.0)
    k1, k2 = ("ns", ChunkKey(b"\1" * 16, 100)), ("ns", ChunkKey(b"\2" * 16, 100))
    free = {"a": 1000, "b": 500, "c": 150, "d": 50}
    plan = r.plan([(k1, ["a"], ["a"]), (k2, ["b"], ["b", "dead"])], {"ns": 3}, free)
    # k1 needs 2 more: the roomiest benefactors that do not hold it; d has no room for a chunk.
    assert plan[:2] == [(k1, "a", "b"), (k1, "a", "c")]
    assert plan[2:] == [(k2, "b", "a")]  # the in-flight bound (3) stops the rest
    for ik, _, target in plan:
        r.started(ik, target, 1, now=0.0)
    assert r.plan([(k1, ["a"], ["a"])], {"ns": 3}, free) == []  # its copies are pending
    r.finished(k1, "b", ok=True)
    r.finished(k1, "c", ok=True)
    r.expire(now=10.0)  # the rest were never reported: planned again
    assert r.in_flight == 0 and r.copies_made == 2


def test_planner_prefers_a_domain_without_a_copy_and_counts_when_it_cannot():
    r = Replicator()
    k = ("ns", ChunkKey(b"\3" * 16, 10))
    domains = {"a1": "A", "a2": "A", "b1": "B"}
    # The roomiest is in the holder's domain; the other domain wins all the same.
    assert r.plan([(k, ["a1"], ["a1"])], {"ns": 2}, {"a2": 1000, "b1": 100}, domains) == [(k, "a1", "b1")]
    assert r.shared_domains == 0
    # Only the holder's domain has room: the copy is made there, and counted.
    assert r.plan([(k, ["a1"], ["a1"])], {"ns": 2}, {"a2": 1000, "b1": 0}, domains) == [(k, "a1", "a2")]
    assert r.shared_domains == 1


def test_a_second_copy_on_the_same_benefactor_moves_its_location_to_the_newer_hold(tmp_path):
    """Two copy orders to one benefactor (the second planned before the first was recorded): the
    benefactor holds the chunk at the newer generation, so the location must name that one. Before,
    the second report was refused and its free (at the newer generation) dropped the only copy there
    while the index still located it: a read got NOT_FOUND."""
    from memstage.manager.catalog import Catalog

    catalog = Catalog(str(tmp_path))
    key = ChunkKey(b"\7" * 16, 10)
    catalog.commit("ns", "/f", 10, [(key, ["a"])], {"a", "b"})
    first, second = catalog.new_gen(), catalog.new_gen()
    assert catalog.add_copy(("ns", key), "b", first)
    assert catalog.add_copy(("ns", key), "b", second)  # not refused: nothing gets freed
    assert catalog.locations(("ns", key))["b"] == second
    assert catalog.add_copy(("ns", key), "b", first)  # a late report of the older one changes nothing
    assert catalog.locations(("ns", key))["b"] == second
    catalog.close()
