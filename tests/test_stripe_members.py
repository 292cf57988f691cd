"""Stripe members computed from the others (memstage.stripes), socket-free on the in-memory
transport, against a reference: the members read one after the other in order. Fetching them in
parallel must take the same members (an absent one, all zeros, counts where it comes), so that
new parity and rebuilt members are the same bytes."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from memstage import stripes
from memstage.chunks import ChunkKey
from memstage.erasure import ABSENT, Codec
from memstage.memtransport import MemoryBenefactor, MemoryTransport
from memstage.proto import common_pb2, manager_pb2

SIZE = 4096


def sequential(transport: MemoryTransport, spec: manager_pb2.StripeSpec, indices: list[int], need: int
               ) -> dict[int, bytes]:
    """The reference: members in order, each read before the next is asked for."""
    got: dict[int, bytes] = {}
    for i in indices:
        if len(got) >= need:
            break
        key = ChunkKey.from_pb(spec.members[i].key)
        if key == ABSENT:
            got[i] = b""
            continue
        data = stripes.read_member(transport, "ns", spec.members[i], [], [])
        if data is not None:
            got[i] = bytes(data)
    if len(got) < need:
        raise stripes.StripeUnavailable("short")
    return got


def reference(transport: MemoryTransport, spec: manager_pb2.StripeSpec) -> bytes:
    codec, index = Codec(spec.k, spec.m), spec.index
    if not spec.members[index].key.hash:
        data = sequential(transport, spec, list(range(spec.k)), spec.k)
        return codec.encode([data[i] for i in range(spec.k)], spec.size)[index - spec.k]
    available = sequential(transport, spec, [i for i in range(spec.k + spec.m) if i != index], spec.k)
    out = codec.rebuild(available, index, spec.size)
    return out[:spec.members[index].key.length] if index < spec.k else out


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 4), st.integers(1, 3), st.data())
def test_members_built_in_parallel_are_those_read_in_order(k: int, m: int, draw: st.DataObject) -> None:
    rnd = random.Random(draw.draw(st.integers(0, 10**6)))
    # A short stripe has absent data members; some members are held nowhere; parity not made yet
    # is absent in the stripe's record too (the manager's), so only the order of a sequential read
    # keeps it out of a rebuild.
    lengths = [SIZE] + [draw.draw(st.sampled_from([0, 1, SIZE // 2, SIZE])) for _ in range(k - 1)]
    data = [rnd.randbytes(n) for n in lengths]
    members = data + Codec(k, m).encode(data, SIZE)
    want = draw.draw(st.integers(0, k + m - 1))
    unmade = {i for i in range(k, k + m) if draw.draw(st.booleans())} | ({want} if want >= k and
                                                                         draw.draw(st.booleans()) else set())
    lost = set(draw.draw(st.sets(st.integers(0, k + m - 1), max_size=m + 1)))
    benefactors = {f"mem:{i}": MemoryBenefactor(1 << 20) for i in range(k + m)}
    spec = manager_pb2.StripeSpec(id=1, k=k, m=m, size=SIZE, index=want)
    for i, d in enumerate(members):
        if i in unmade:
            spec.members.add(key=ABSENT.to_pb())
            continue
        key = ChunkKey.of(d) if d else ABSENT
        if d and i not in lost:
            benefactors[f"mem:{i}"].chunks[("ns", key)] = d
        spec.members.add(key=key.to_pb(), locations=[common_pb2.Location(benefactor_id=f"b{i}", address=f"mem:{i}")])
    transport = MemoryTransport(benefactors)
    try:
        expected: bytes | None = reference(transport, spec)
    except (stripes.StripeUnavailable, ValueError):
        expected = None
    try:
        got: bytes | None = stripes.build_member(transport, "ns", spec)[0]
    except (stripes.StripeUnavailable, ValueError):
        got = None
    assert got == expected
    if expected is not None and not unmade:  # a stripe whose parity is all made rebuilds its members
        assert got == members[want]


def test_members_the_reader_has_are_not_fetched() -> None:
    rnd = random.Random(7)
    data = [rnd.randbytes(SIZE) for _ in range(2)]
    parity = Codec(2, 1).encode(data, SIZE)
    spec = manager_pb2.StripeSpec(id=1, k=2, m=1, size=SIZE, index=0)
    for d in [*data, *parity]:  # held nowhere
        spec.members.add(key=ChunkKey.of(d).to_pb(), locations=[common_pb2.Location(address="mem:nowhere")])
    have = {ChunkKey.of(d): d for d in [data[1], parity[0]]}
    out, _ = stripes.build_member(MemoryTransport({}), "ns", spec, known=have.get)
    assert out == data[0]
