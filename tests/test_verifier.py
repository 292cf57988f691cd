"""Receipt checks in helper processes: the same verdict as the manager's own check, real helper
processes that are used for large commits, and a commit that still goes through (or is still
refused) when its helper is killed."""

from __future__ import annotations

import os
import signal
import struct

import pytest
from conftest import ServicerContext, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from memstage import commitpack, receipts
from memstage.chunks import ChunkKey
from memstage.errors import DataLost
from memstage.manager import commits as service_mod
from memstage.manager import verifier
from memstage.manager.catalog import Catalog
from memstage.manager.service import ManagerService
from memstage.manager.verifier import receipts_valid
from memstage.proto import manager_pb2
from memstage.settings import ManagerSettings


def _packed(keys: list[ChunkKey], owners: list[int]) -> tuple[bytes, bytes]:
    return (b"".join(k.hash + k.length.to_bytes(8, "big") for k in keys),
            struct.pack(f">{len(owners)}I", *owners))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 1 << 40), max_size=20), width=st.integers(1, 4),
       session=st.integers(0, (1 << 64) - 1), namespace=st.sampled_from(["ns", "ckpt-é"]),
       forge=st.one_of(st.none(), st.integers(0, 19)), data=st.data())
def test_a_helper_gives_the_verdict_of_the_per_chunk_check(lengths, width, session, namespace, forge, data):
    keys = [ChunkKey(os.urandom(16), n) for n in lengths]
    table = [os.urandom(32) for _ in range(width)]
    owners = [data.draw(st.integers(0, width - 1)) for _ in keys]
    given_ = bytearray(receipts.expected(session, namespace, keys, [table[o] for o in owners]) if keys else b"")
    if forge is not None and keys:
        given_[16 * (forge % len(keys))] ^= 1
    blob, where = _packed(keys, owners)
    want = all(receipts.make(table[o], session, namespace, k) == bytes(given_[16 * i:16 * i + 16])
               for i, (k, o) in enumerate(zip(keys, owners, strict=True)))
    assert receipts_valid(session, namespace, blob, where, table, bytes(given_)) == want


def test_a_benefactor_without_a_key_or_out_of_range_fails_the_check():
    keys = [ChunkKey(os.urandom(16), 10) for _ in range(3)]
    table = [os.urandom(32), b""]
    blob, where = _packed(keys, [0, 1, 0])
    given_ = receipts.expected(7, "ns", keys, [table[0], b"x" * 32, table[0]])
    assert not receipts_valid(7, "ns", blob, where, table, given_)
    blob, where = _packed(keys, [0, 2, 0])
    assert not receipts_valid(7, "ns", blob, where, [table[0]] * 2, given_)


@pytest.mark.timeout(60)
def test_large_commits_are_checked_by_a_helper_and_still_checked_when_it_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(service_mod, "default_workers", lambda: 1)  # whatever this machine's core count
    catalog = Catalog(str(tmp_path))
    svc = ManagerService(ManagerSettings(state=str(tmp_path)), catalog, CollectorRegistry())
    ctx = ServicerContext()
    names = ["b0", "b1", "b2"]
    keys = {bf: os.urandom(32) for bf in names}
    for i, bf in enumerate(names):
        svc.Register(manager_pb2.RegisterRequest(benefactor_id=bf, address=f"127.0.0.1:{i + 1}", incarnation=i + 1,
                                                 receipt_key=keys[bf],
                                                 stats=manager_pb2.BenefactorStats(memory_capacity=1 << 40)), ctx)
    n = verifier.MIN_RECEIPTS * 2

    def commit(path: str, forge: int | None = None) -> None:
        session = svc.OpenSession(manager_pb2.OpenSessionRequest(namespace="ns", path=path), ctx).session
        refs = []
        for i in range(n):
            k = ChunkKey(os.urandom(16), 100)
            bf = names[i % 3]
            refs.append((k, [(bf, b"x" * 16 if i == forge else receipts.make(keys[bf], session, "ns", k))]))
        svc.Commit(manager_pb2.CommitRequest(namespace="ns", path=path, size=100 * n, session=session,
                                             packed=commitpack.pack(refs)), ctx)

    try:
        commit("/a")
        helpers = list(svc.receipt_checkers._started)
        assert len(helpers) == 1, "a large commit's receipts went to a helper process"
        with pytest.raises(DataLost, match=f"chunk {n - 5} .* not confirmed by benefactor {names[(n - 5) % 3]}"):
            commit("/forged", forge=n - 5)
        pid = helpers[0].proc.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: helpers[0].proc.poll() is not None, timeout=10, what="the killed helper to exit")
        commit("/b")  # checked in the manager, a new helper started for the next one
        with pytest.raises(DataLost, match=f"chunk 3 .* not confirmed by benefactor {names[0]}"):
            commit("/forged", forge=3)
        commit("/c")
        assert [p.proc.pid for p in svc.receipt_checkers._started] != [pid]
        started = list(svc.receipt_checkers._started)
        for path in ("/a", "/b", "/c"):
            assert len(svc.Lookup(manager_pb2.LookupRequest(namespace="ns", path=path), ctx).chunks) == n
    finally:
        svc.receipt_checkers.close()
        catalog.close()
    assert all(h.proc.poll() is not None for h in started), "closing stops the helpers"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.timeout(120)
def test_a_real_managers_receipt_checker_checks_a_large_file_and_dies_with_it(local_cluster):
    """A manager process on a machine of several cores checks a large commit's receipts in its
    helper; SIGKILLed, it leaves no helper behind, and what it acknowledged is there after a restart."""
    from memstage.procs import children

    if verifier.default_workers() == 0:
        pytest.skip("a single core: the manager checks receipts itself")
    cluster = local_cluster(benefactors=2, memory=64 * 1024 * 1024)
    c = cluster.client(chunk_size="4KiB")
    data = os.urandom(4096 * (verifier.MIN_RECEIPTS + 40))
    with c.open("/big", "wb") as f:
        f.write(data)
    manager = cluster.manager.pid
    helpers = [p for p in children(manager) if "memstage.manager.verifier" in _cmdline(p)]
    assert len(helpers) == 1, f"one receipt checker after a commit of {len(data) // 4096} chunks"
    cluster.manager.kill()
    wait_for(lambda: not _cmdline(helpers[0]), timeout=15, what="the receipt checker to exit with its manager")
    cluster.start_manager(cluster.manager_address)
    wait_for(lambda: len(cluster.alive_ids()) == 2, timeout=30, what="the benefactors to register again")
    assert cluster.client(chunk_size="4KiB").cat("/big") == data
