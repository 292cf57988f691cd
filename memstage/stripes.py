"""Stripe members computed from other members (rs:K+M): a chunk rebuilt for a degraded read, new
parity or a lost member for a benefactor. Every member read is verified against its key; the
result is verified by the caller (or, for new parity, is what gets a key)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from memstage.chunks import ChunkKey
from memstage.erasure import ABSENT, Codec
from memstage.proto import common_pb2, manager_pb2
from memstage.transport import ChunkTransport, read_from_memory, read_from_pfs


class StripeUnavailable(Exception):
    """Fewer than the members needed could be read."""


def read_member(transport: ChunkTransport, namespace: str, ref: manager_pb2.ChunkRef,
                readers: Sequence[common_pb2.Location], failures: list[str]) -> bytes | memoryview | None:
    """A member from memory, then from its PFS copy; None if no place had it intact."""
    key = ChunkKey.from_pb(ref.key)
    data = read_from_memory(transport, namespace, key, ref.locations, failures)
    return data if data is not None else read_from_pfs(transport, key, ref.drained, readers, failures)


def _gather(transport: ChunkTransport, namespace: str, spec: manager_pb2.StripeSpec, indices: Sequence[int],
            need: int, readers: Sequence[common_pb2.Location], failures: list[str]) -> dict[int, bytes | memoryview]:
    got: dict[int, bytes | memoryview] = {}
    for i in indices:
        if len(got) >= need:
            break
        ref = spec.members[i]
        if ChunkKey.from_pb(ref.key) == ABSENT:
            got[i] = b""
            continue
        data = read_member(transport, namespace, ref, readers, failures)
        if data is not None:
            got[i] = data
    if len(got) < need:
        raise StripeUnavailable(f"stripe {spec.id}: {len(got)} of the {need} members needed could be read "
                                f"({'; '.join(failures[-4:]) or 'no location recorded'})")
    return got


def build_member(transport: ChunkTransport, namespace: str, spec: manager_pb2.StripeSpec,
                 readers: Sequence[common_pb2.Location] = ()) -> tuple[bytes, float]:
    """Member `spec.index` of the stripe: new parity when its key is empty (from the K data members),
    else rebuilt from any K others (a data member cut to its length). Returns it and the CPU seconds
    the code took."""
    codec = Codec(spec.k, spec.m)
    index, failures = spec.index, list[str]()
    total = spec.k + spec.m
    if not spec.members[index].key.hash:
        data = _gather(transport, namespace, spec, range(spec.k), spec.k, readers, failures)
        cpu = time.thread_time()
        out = codec.encode([data[i] for i in range(spec.k)], spec.size)[index - spec.k]
        return out, time.thread_time() - cpu
    order = [i for i in range(total) if i != index]
    available = _gather(transport, namespace, spec, order, spec.k, readers, failures)
    cpu = time.thread_time()
    out = codec.rebuild(available, index, spec.size)
    if index < spec.k:
        out = out[:spec.members[index].key.length]
    return out, time.thread_time() - cpu
