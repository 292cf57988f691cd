"""Packed commits: the codec round-trips and refuses inconsistent sizes, and the manager confirms a
packed commit exactly as the same commit sent a message per chunk. No sockets."""

from __future__ import annotations

import os

import pytest
from conftest import ServicerContext
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from memstage import commitpack, receipts
from memstage.chunks import HOLE_HASH, ChunkKey
from memstage.errors import DataLost, InvalidArgument, MemstageError
from memstage.manager.catalog import Catalog
from memstage.manager.service import ManagerService
from memstage.proto import common_pb2, manager_pb2
from memstage.settings import ManagerSettings

key_st = st.builds(ChunkKey, st.binary(min_size=16, max_size=16), st.integers(1, 1 << 26))
loc_st = st.tuples(st.sampled_from(["b1", "b2", "b3"]), st.binary(min_size=16, max_size=16))


@settings(max_examples=200, deadline=None)
@given(refs=st.lists(st.tuples(key_st, st.lists(loc_st, max_size=3)), max_size=20))
def test_packed_references_unpack_to_what_was_packed(refs):
    got = commitpack.unpack(commitpack.pack(refs))
    assert [ChunkKey(h, n) for h, n in got.keys] == [k for k, _ in refs]
    assert list(got.counts) == [len(locs) for _, locs in refs]
    assert got.benefactors == [bf for _, locs in refs for bf, _ in locs]
    assert got.receipts == b"".join(r for _, locs in refs for _, r in locs)


def test_inconsistent_packed_references_are_refused():
    good = commitpack.pack([(ChunkKey(b"k" * 16, 5), [("b1", b"r" * 16)])])
    for broken in (manager_pb2.PackedChunks(keys=good.keys[:-1], counts=good.counts),
                   manager_pb2.PackedChunks(keys=good.keys, counts=b"\x02", benefactors=good.benefactors,
                                            locations=good.locations, receipts=good.receipts),
                   manager_pb2.PackedChunks(keys=good.keys, counts=good.counts, benefactors=[],
                                            locations=good.locations, receipts=good.receipts)):
        with pytest.raises(InvalidArgument):
            commitpack.unpack(broken)



def _service(state) -> tuple[Catalog, ManagerService, dict[str, bytes]]:  # type: ignore[no-untyped-def]
    """A manager service without sockets, with benefactors b0..b2 registered (their receipt keys)."""
    catalog = Catalog(str(state))
    svc = ManagerService(ManagerSettings(state=str(state)), catalog, CollectorRegistry())
    keys = {f"b{i}": os.urandom(32) for i in range(3)}
    for i, (bf, rk) in enumerate(keys.items()):
        svc.Register(manager_pb2.RegisterRequest(benefactor_id=bf, address=f"127.0.0.1:{i + 1}", incarnation=i + 1,
                                                 receipt_key=rk,
                                                 stats=manager_pb2.BenefactorStats(memory_capacity=1 << 30)),
                     ServicerContext())
    return catalog, svc, keys


def test_the_manager_takes_a_packed_commit_as_the_same_commit_unpacked(tmp_path):
    catalog, svc, keys = _service(tmp_path)
    ctx = ServicerContext()
    chunks = [ChunkKey(os.urandom(16), 100 + i) for i in range(6)] + [ChunkKey(HOLE_HASH, 4096)]

    def commit(path: str, packed: bool, forge: bool = False) -> int:
        session = svc.OpenSession(manager_pb2.OpenSessionRequest(namespace="ns", path=path), ctx).session
        refs = []
        for i, k in enumerate(chunks):
            bf = f"b{i % 3}"
            receipt = receipts.make(keys[bf], session, "ns", k) if not forge else b"x" * 16
            refs.append((k, [] if k.hash == HOLE_HASH else [(bf, receipt)]))
        size = sum(k.length for k in chunks)
        if packed:
            request = manager_pb2.CommitRequest(namespace="ns", path=path, size=size, session=session,
                                                packed=commitpack.pack(refs))
        else:
            request = manager_pb2.CommitRequest(namespace="ns", path=path, size=size, session=session, chunks=[
                manager_pb2.ChunkRef(key=k.to_pb(), locations=[common_pb2.Location(benefactor_id=b, receipt=r)
                                                               for b, r in locs]) for k, locs in refs])
        return int(svc.Commit(request, ctx).version)

    assert commit("/plain", packed=False) == 1
    assert commit("/packed", packed=True) == 1
    for path in ("/plain", "/packed"):
        vmap = svc.Lookup(manager_pb2.LookupRequest(namespace="ns", path=path), ctx)
        assert [ChunkKey.from_pb(c.key) for c in vmap.chunks] == chunks
        assert [[loc.benefactor_id for loc in c.locations] for c in vmap.chunks][:3] == [["b0"], ["b1"], ["b2"]]
    with pytest.raises(DataLost, match="not confirmed"):
        commit("/forged", packed=True, forge=True)
    catalog.close()


@settings(max_examples=60, deadline=None)
@given(layout=st.lists(st.lists(st.sampled_from(["b0", "b1", "b2", "gone"]), max_size=3, unique=True),
                       min_size=1, max_size=12),
       forge=st.one_of(st.none(), st.integers(0, 40)))
def test_a_packed_commit_is_refused_for_the_same_chunk_and_benefactor_as_the_unpacked_one(tmp_path_factory, layout,
                                                                                           forge):
    """Receipts of a packed commit are checked in one comparison; a commit with a forged receipt, or a
    location at a benefactor that is not registered, is refused naming the same chunk and benefactor
    as the per-chunk check does, and a good one is taken."""
    state = tmp_path_factory.mktemp("state")
    catalog, svc, keys = _service(state)
    ctx = ServicerContext()
    flat = [bf for names in layout for bf in names]
    forged = forge % len(flat) if forge is not None and flat else None  # the location given a false receipt
    outcomes = []
    for packed in (False, True):
        path = "/f"  # the same in both, as refusals name it
        session = svc.OpenSession(manager_pb2.OpenSessionRequest(namespace="ns", path=path), ctx).session
        refs, at = [], 0
        for i, names in enumerate(layout):
            k = ChunkKey(bytes([i + 1]) * 16, 100)  # not the hole hash (zeros)
            locs = []
            for bf in names:
                good = receipts.make(keys.get(bf, b"k" * 32), session, "ns", k)
                locs.append((bf, b"x" * 16 if at == forged else good))
                at += 1
            refs.append((k, locs))
        size = 100 * len(layout)
        if packed:
            request = manager_pb2.CommitRequest(namespace="ns", path=path, size=size, session=session,
                                                packed=commitpack.pack(refs))
        else:
            request = manager_pb2.CommitRequest(namespace="ns", path=path, size=size, session=session, chunks=[
                manager_pb2.ChunkRef(key=k.to_pb(), locations=[common_pb2.Location(benefactor_id=b, receipt=r)
                                                               for b, r in locs]) for k, locs in refs])
        try:
            svc.Commit(request, ctx)
            outcomes.append("committed")
        except MemstageError as e:
            outcomes.append(f"{e.code.name}: {e}")
    catalog.close()
    assert outcomes[0] == outcomes[1]
    unlocated = any(not names for names in layout)  # and not in the index already: refused too
    should_fail = "gone" in flat or forged is not None or unlocated
    assert (outcomes[0] != "committed") == should_fail


@pytest.mark.parametrize("length", [0, (1 << 26) + 1, 1 << 40])
def test_a_packed_commit_with_a_chunk_length_out_of_range_is_refused(tmp_path, length):
    catalog = Catalog(str(tmp_path))
    svc = ManagerService(ManagerSettings(state=str(tmp_path)), catalog, CollectorRegistry())
    refs = [(ChunkKey(b"a" * 16, 10), []), (ChunkKey(b"b" * 16, length), [])]
    request = manager_pb2.CommitRequest(namespace="ns", path="/f", size=10 + length, packed=commitpack.pack(refs))
    with pytest.raises(InvalidArgument, match="length of 1"):
        svc.Commit(request, ServicerContext())
    catalog.close()
