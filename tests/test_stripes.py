"""Reed-Solomon stripes (rs:K+M) with real processes: parity encoded by benefactors after each
commit, reads that survive any M SIGKILLed benefactors and corrupted memory, rebuild onto
survivors, loss beyond tolerance, failure domains, deduplication and freeing; and the codec and
planner alone."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import MiB, free_port, random_bytes, rpc_calls, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from memstage import erasure, isal
from memstage.chunks import ChunkKey
from memstage.erasure import Codec
from memstage.errors import SettingError
from memstage.manager.stripes import StripeWork, group, targets
from memstage.proto import manager_pb2
from memstage.redundancy import Redundancy

pytestmark = pytest.mark.timeout(240)


def namespace_status(cluster, namespace: str = "default") -> dict:
    return next((n for n in cluster.status()["namespaces"] if n["namespace"] == namespace), {})


def protected(cluster, versions: int) -> bool:
    n = namespace_status(cluster)
    return n.get("versions_protected") == versions and n.get("versions_degraded") == 0


def stripes(client, path: str) -> list[manager_pb2.StripeSpec]:
    """The stripe of each chunk of the latest version, with where each member is."""
    vmap = client.connections.call_manager(
        "Lookup", manager_pb2.LookupRequest(namespace=client.namespace, path=path, stripes=True), path)
    return [c.stripe for c in vmap.chunks]


def member_holders(spec: manager_pb2.StripeSpec) -> list[set[str]]:
    return [{loc.benefactor_id for loc in m.locations} for m in spec.members if m.key.length]


def test_rs_4_2_survives_two_losses_rebuilds_and_survives_two_more(local_cluster):
    cluster = local_cluster(benefactors=8, memory=48 * MiB)
    c = cluster.client(chunk_size="1MiB")
    # Nothing drains: memory is the only place the version is.
    assert c.policy(redundancy="rs:4+2", persist_every=0)["redundancy"] == "rs:4+2"
    data = random_bytes(16 * MiB)
    c.pipe("/ckpt", data)
    c.wait_protected("/ckpt", timeout=60)  # what fsync does on a mount
    assert c.stat("/ckpt").protected and protected(cluster, 1)
    specs = stripes(c, "/ckpt")
    assert len({s.id for s in specs}) == 4
    for s in specs:  # 4 data + 2 parity members on 6 distinct benefactors
        holders = member_holders(s)
        assert len(holders) == 6 and all(len(h) == 1 for h in holders)
        assert len(set.union(*holders)) == 6
    by_id = {b.id: b for b in cluster.benefactors}
    first = sorted(set.union(*member_holders(specs[0])))[:2]
    for bf in first:
        by_id[bf].kill()  # SIGKILL two members of stripe 0 (and whatever else they held)
    assert c.cat("/ckpt") == data
    assert c.metrics.degraded.labels(c.namespace)._value.get() >= 1  # some chunks were rebuilt to be read
    wait_for(lambda: not set(first) & cluster.alive_ids(), timeout=20, what="the killed benefactors to be dead")
    wait_for(lambda: protected(cluster, 1), timeout=90, what="the rebuild")
    alive = cluster.alive_ids()
    for s in stripes(c, "/ckpt"):  # every member on a live benefactor of its own (spare copies may remain)
        taken: set[str] = set()
        for h in member_holders(s):
            own = (h & alive) - taken
            assert own, (member_holders(s), alive)
            taken.add(min(own))
    second = sorted(set.union(*member_holders(stripes(c, "/ckpt")[8])) & alive)[:2]
    for bf in second:
        by_id[bf].kill()
    assert c.cat("/ckpt") == data
    assert namespace_status(cluster)["versions_lost"] == 0


def test_three_losses_in_one_stripe_lose_the_version_and_persisted_ones_stay(local_cluster):
    cluster = local_cluster(benefactors=6, memory=48 * MiB)
    c = cluster.client(chunk_size="1MiB")
    c.policy(redundancy="rs:4+2", persist_every=1)
    persisted = random_bytes(4 * MiB)
    c.pipe("/persisted", persisted)
    wait_for(lambda: c.versions("/persisted")[0]["persisted"], timeout=30, what="the drain")
    c.policy(persist_every=0)
    c.pipe("/memory", random_bytes(8 * MiB))
    wait_for(lambda: protected(cluster, 2), timeout=60, what="the parity")
    by_id = {b.id: b for b in cluster.benefactors}
    for bf in sorted(set.union(*member_holders(stripes(c, "/memory")[0])))[:3]:
        by_id[bf].kill()  # three of six members at once, before any rebuild
    wait_for(lambda: namespace_status(cluster).get("versions_lost") == 1, timeout=30, what="the loss to be seen")
    lost = cluster.status()["lost"]
    assert [v["path"] for v in lost] == ["/memory"] and "died" in lost[0]["reason"]
    assert "cannot be rebuilt: its stripe (rs:4+2) has 3 of its 6 members left, 4 are needed" in lost[0]["reason"]
    assert c.cat("/persisted") == persisted  # from the PFS


def test_losses_one_after_the_other_beyond_tolerance_lose_the_version(local_cluster):
    """rs:2+1 on exactly 3 benefactors (no room to rebuild): losing a data member leaves the stripe
    recoverable; losing the parity holder later makes it not, although the parity is in no version's
    map. The version is then lost with the stripe's reason (it was left "not lost" and unreadable)."""
    cluster = local_cluster(benefactors=3, memory=48 * MiB)
    c = cluster.client(chunk_size="1MiB")
    c.policy(redundancy="rs:2+1", persist_every=0)
    data = random_bytes(2 * MiB)
    c.pipe("/f", data)
    wait_for(lambda: protected(cluster, 1), timeout=60, what="the parity")
    holders = member_holders(stripes(c, "/f")[0])
    by_id = {b.id: b for b in cluster.benefactors}
    first, parity = next(iter(holders[0])), next(iter(holders[2]))
    by_id[first].kill()
    wait_for(lambda: first not in cluster.alive_ids(), what="the first loss to be seen")
    assert c.cat("/f") == data and not namespace_status(cluster).get("versions_lost")  # rebuilt on read
    by_id[parity].kill()
    wait_for(lambda: namespace_status(cluster).get("versions_lost") == 1, timeout=30, what="the loss to be seen")
    assert "its stripe (rs:2+1) has 1 of its 3 members left" in cluster.status()["lost"][0]["reason"]


def test_stripe_members_go_to_distinct_failure_domains(local_cluster):
    cluster = local_cluster(benefactors=0)
    rack = {}
    for name in ("rackA", "rackA", "rackB", "rackB", "rackC", "rackC"):
        rack[cluster.add_benefactor(48 * MiB, "--domain", name).id] = name
    c = cluster.client(chunk_size="1MiB")
    c.policy(redundancy="rs:2+1", persist_every=0)
    c.pipe("/racked", random_bytes(12 * MiB))
    wait_for(lambda: protected(cluster, 1), timeout=60, what="the parity")
    for s in stripes(c, "/racked"):
        domains = [rack[b] for h in member_holders(s) for b in h]
        assert len(domains) == 3 and len(set(domains)) == 3, domains  # never two members in one rack


def _corrupt(pid: int, needle: bytes) -> int:
    """Overwrite, in the process's memory, every copy of `needle` (the benefactor's arena among
    them) with other bytes; returns how many were found."""
    found = 0
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) rw", line)
            if not m or line.split()[-1].startswith("["):
                continue
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            if end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                region = mem.read(end - start)
            except OSError:
                continue
            at = region.find(needle)
            while at >= 0:
                mem.seek(start + at)
                mem.write(bytes(b ^ 0xFF for b in needle))
                found += 1
                at = region.find(needle, at + 1)
    return found


def test_a_chunk_corrupted_in_benefactor_memory_is_rebuilt_on_read(local_cluster):
    cluster = local_cluster(benefactors=6, memory=48 * MiB)
    c = cluster.client(chunk_size="1MiB")
    c.policy(redundancy="rs:4+2", persist_every=0)
    data = random_bytes(8 * MiB)
    c.pipe("/c", data)
    wait_for(lambda: protected(cluster, 1), timeout=60, what="the parity")
    holder = next(iter(member_holders(stripes(c, "/c")[0])[0]))
    pid = next(b.pid for b in cluster.benefactors if b.id == holder)
    assert _corrupt(pid, data[:4096]) >= 1
    degraded = c.metrics.degraded.labels(c.namespace)
    assert degraded._value.get() == 0
    assert c.cat("/c") == data
    assert degraded._value.get() == 1  # chunk 0 failed its hash and was rebuilt from its stripe


def test_dedup_under_rs_sends_only_changed_chunks_and_frees_old_parity(local_cluster):
    cluster = local_cluster(benefactors=6, memory=48 * MiB)
    c = cluster.client(chunk_size="1MiB")
    c.policy(redundancy="rs:4+2", persist_every=0, keep_versions=2)
    data = bytearray(random_bytes(16 * MiB))
    c.pipe("/d", bytes(data))
    wait_for(lambda: protected(cluster, 1), timeout=60, what="the parity of version 1")
    before = {s.id for s in stripes(c, "/d")}
    data[5 * MiB:5 * MiB + 10] = b"0123456789"  # one chunk changes
    with c.open("/d", "wb") as f:
        f.write(bytes(data))
    assert c.last_commit.stats.bytes_sent == MiB  # only the changed chunk travelled
    wait_for(lambda: protected(cluster, 2), timeout=60, what="the parity of version 2")
    after = stripes(c, "/d")
    assert {s.id for i, s in enumerate(after) if i != 5} <= before  # unchanged chunks keep their stripes
    assert after[5].id not in before  # the changed one is in a new stripe
    assert c.cat("/d") == bytes(data)
    c.rm("/d")
    # Every version is gone: stripes, parity and data leave memory.
    wait_for(lambda: cluster.memory_used() == 0, timeout=30, what="parity and data to be freed")


def test_rs_policy_is_parsed_and_bounded():
    r = Redundancy.parse("rs:4+2")
    assert (r.k, r.m, r.tolerates, str(r)) == (4, 2, 2, "rs:4+2")
    for bad in ("rs:0+2", "rs:4+0", "rs:17+1", "rs:4+9", "rs:4-2"):
        with pytest.raises(SettingError, match="redundancy"):
            Redundancy.parse(bad)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 6), m=st.integers(1, 4), size=st.integers(1, 3000), data=st.data())
def test_codec_rebuilds_any_member_from_any_k_others(k, m, size, data):
    codec = Codec(k, m)
    members = [data.draw(st.binary(min_size=0, max_size=size)) for _ in range(k)]
    parity = codec.encode(members, size)
    full = [x + bytes(size - len(x)) for x in members] + parity
    lost = data.draw(st.sets(st.integers(0, k + m - 1), min_size=1, max_size=m))
    available = {i: (members[i] if i < k else parity[i - k]) for i in range(k + m) if i not in lost}
    for want in lost:
        assert codec.rebuild(available, want, size) == full[want]


def test_isal_is_loaded_for_the_codec():
    # Without it every stripe goes through pyeclib's copies, several times slower.
    assert isal.lib() is not None


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 8), m=st.integers(1, 4), size=st.integers(1, 3000), data=st.data())
def test_direct_isal_and_pyeclib_make_the_same_parity_and_read_each_other(k, m, size, data):
    members = [data.draw(st.binary(min_size=0, max_size=size)) for _ in range(k)]
    codec = Codec(k, m)
    lost = data.draw(st.sets(st.integers(0, k + m - 1), min_size=1, max_size=m))
    want = data.draw(st.sampled_from(sorted(lost)))
    fast = codec.encode(members, size)
    full = [x + bytes(size - len(x)) for x in members] + [bytes(p) for p in fast]
    available = {i: full[i] for i in range(k + m) if i not in lost}
    by_isal = codec.rebuild(available, want, size)
    erasure._pyeclib_only = True
    try:
        assert codec.encode(members, size) == full[k:]
        assert codec.rebuild(available, want, size) == by_isal == full[want]
    finally:
        erasure._pyeclib_only = False


def ik(n: int) -> tuple[str, ChunkKey]:
    return ("ns", ChunkKey(bytes([n]) * 16, 10))


def test_grouping_prefers_distinct_domains_and_waits_for_a_short_stripe():
    domains = {"a1": "A", "a2": "A", "b1": "B", "c1": "C"}
    cands = [(ik(1), ["a1"]), (ik(2), ["a2"]), (ik(3), ["b1"]), (ik(4), ["c1"]), (ik(5), ["a1"])]
    assert group(cands, 3, domains, short_ok=False) == [[ik(1), ik(3), ik(4)]]  # 2 left wait a round
    assert group(cands, 3, domains, short_ok=True) == [[ik(1), ik(3), ik(4)], [ik(2), ik(5)]]
    # Taken greedily in order, these would leave the last stripe inside rack C; the fullest
    # domains go first instead.
    racks = {f"{r}{i}": r for r in "ABC" for i in (1, 2)}
    order = ["A1", "B1", "A2", "B2", "C1", "C2"]
    grouped = group([(ik(n + 1), [bf]) for n, bf in enumerate(order)], 2, racks, short_ok=True)
    assert len(grouped) == 3 and all(len({racks[order[i[1].hash[0] - 1]] for i in g}) == 2 for g in grouped)
    room = {"a1": 100, "a2": 100, "b1": 100, "c1": 5, "d1": 50}
    chosen, shared = targets(2, 10, room, {"a1"}, {"A"}, domains)
    assert chosen == ["b1", "d1"] and shared == 0  # c1 has no room; a2 shares A with a member
    assert targets(1, 10, room, {"a1", "b1", "d1"}, {"A", "B", "D"}, domains) == (["a2"], 1)


def test_stripe_work_tracks_parity_until_every_member_is_in():
    w = StripeWork(timeout=5.0)
    from memstage.manager.stripes import NewStripe
    w.new[7] = NewStripe("ns", 2, 2, 10, (ik(1)[1], ik(2)[1]), deadline=5.0, targets={2: ("x", 1), 3: ("y", 2)})
    assert w.pending_data() == {ik(1), ik(2)} and w.in_flight == 2
    assert w.parity_done(7, 2, ik(9)[1], "x", 1, True) is None
    assert w.parity_done(7, 3, ik(9)[1], "other", 2, True) is None  # not the order's target
    done = w.parity_done(7, 3, ik(8)[1], "y", 2, True)
    assert done is not None and set(done.done) == {2, 3} and w.encoded == 2
    w.finished(7)
    assert not w.new and not w.pending_data()
    w.rebuilding[(7, 0)] = ("z", 3, 1.0)
    assert w.expire(now=2.0) == [] and not w.rebuilding  # timed out: planned again


def test_members_sharing_a_benefactor_are_rebuilt_elsewhere(tmp_path):
    """Two members on one benefactor: one loss would cost the stripe two, so the stripe is not
    protected until one of them has a copy on a benefactor of its own."""
    from memstage.manager.catalog import Catalog, Policy
    from memstage.manager.stripes import Stripe

    rs = Redundancy.parse("rs:2+1")
    catalog = Catalog(str(tmp_path), Policy(0, 2, str(rs)))
    alive = {"b0", "b1", "b2"}
    a, b, parity = ChunkKey(b"\1" * 16, 10), ChunkKey(b"\2" * 16, 10), ChunkKey(b"\3" * 16, 10)
    catalog.commit("ns", "/f", 20, [(a, ["b0"]), (b, ["b0"])], alive)
    stripe = Stripe(catalog.new_stripe_id(), "ns", 2, 1, 10, (a, b, parity))
    assert catalog.add_stripe(stripe, {2: ("b1", catalog.new_gen())})
    assert [(st.id, rebuild, readable) for st, rebuild, readable in catalog.stripe_health(alive)] == [
        (stripe.id, [1], 3)]
    assert not catalog.version_protected("ns", "/f", 1, rs, alive)
    assert catalog.protection("ns", rs, alive) == (0, 1, 0)
    assert catalog.add_copy(("ns", b), "b2", catalog.new_gen())  # rebuilt onto a benefactor of its own
    assert catalog.stripe_health(alive) == [] and catalog.version_protected("ns", "/f", 1, rs, alive)
    assert catalog.stripe_health({"b1", "b2"})[0][1] == [0]  # b0 lost: member 0 to rebuild, 2 still readable
    catalog.close()


def test_fsync_on_a_mount_returns_once_the_version_is_protected(mounted):
    point, cluster, _ = mounted(benefactors=4, memory=64 * MiB)
    c = cluster.client()
    c.policy(redundancy="rs:2+1", persist_every=0)
    data = random_bytes(12 * MiB)
    with open(point / "ckpt", "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
        # Committed and protected by now, before close: parity encoded on benefactors of their own.
        assert c.stat("/ckpt").protected
    assert protected(cluster, 1)


def test_waiting_for_protection_is_one_call_answered_when_it_is_protected(local_cluster):
    """fsync (Client.wait_protected) asks the manager once: the manager answers when the stripe's
    parity is recorded. Before, the client asked again and again, with pauses growing to 0.2 s,
    each call a look at every chunk of the version."""
    port = free_port()
    cluster = local_cluster(benefactors=2, memory=48 * MiB, manager_args=("--metrics-port", str(port)))
    c = cluster.client(chunk_size="1MiB")
    c.policy(redundancy="rs:2+1", persist_every=0)
    c.pipe("/ckpt", random_bytes(2 * MiB))  # two data members: parity needs a third benefactor
    before = rpc_calls(port).get("Stat", 0)
    waiter = ThreadPoolExecutor(1).submit(c.wait_protected, "/ckpt", 60)
    wait_for(lambda: rpc_calls(port).get("Stat", 0) > before, 10, "the client asking the manager")
    assert not waiter.done()
    cluster.add_benefactor(48 * MiB)  # a process start: well over the old client's first pauses
    waiter.result(timeout=60)
    assert c.stat("/ckpt").protected
    assert rpc_calls(port)["Stat"] - before <= 3  # the wait, and the stat just above


def test_new_parity_costs_k_fetches_and_m_minus_1_hand_overs_per_stripe(local_cluster):
    """One benefactor fetches a stripe's K data members once, makes all M parity members and hands
    M-1 of them on, instead of each of the M fetching the K members."""
    from conftest import free_port, metric

    cluster = local_cluster(benefactors=0)
    ports = [free_port() for _ in range(7)]
    for port in ports:
        cluster.add_benefactor(48 * MiB, "--metrics-port", str(port))
    c = cluster.client(chunk_size="1MiB")
    c.policy(redundancy="rs:4+2", persist_every=0)
    c.pipe("/p", random_bytes(8 * MiB))  # two stripes of four 1 MiB data members
    c.wait_protected("/p", timeout=60)
    specs = {s.id: s for s in stripes(c, "/p")}
    assert len(specs) == 2
    served = sum(metric(port, "memstage_benefactor_served_bytes_total") for port in ports)
    received = sum(metric(port, "memstage_benefactor_received_bytes_total") for port in ports)
    assert served == 2 * 4 * MiB, "each stripe's data members were read once (K fetches)"
    assert received == 8 * MiB  # the client's chunks; parity handed over is not a client's put
    for spec in specs.values():
        holders = member_holders(spec)
        assert all(len(h) == 1 for h in holders[4:]) and len(set().union(*holders[4:])) == 2
