"""Stripe members computed from other members (rs:K+M): a chunk rebuilt for a degraded read, new
parity or a lost member for a benefactor. Every member read is verified against its key; the
result is verified by the caller (or, for new parity, is what gets a key)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from memstage.chunks import ChunkKey
from memstage.erasure import ABSENT, Codec, Member
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


# Members of a stripe are fetched in parallel, from as many benefactors (its callers run in
# pools of their own, so a pool apart cannot deadlock with them).
_FETCHERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="stripe-member")

Known = Callable[[ChunkKey], "bytes | memoryview | None"]


def _gather(transport: ChunkTransport, namespace: str, spec: manager_pb2.StripeSpec, indices: Sequence[int],
            need: int, readers: Sequence[common_pb2.Location], failures: list[str],
            known: Known | None = None) -> dict[int, bytes | memoryview]:
    """`need` members, taken in the order of `indices` as a sequential reader would take them (an
    absent member, all zeros, counts where it comes: a parity member not made yet is absent too),
    those fetched in flight together, the next candidate in place of one that fails. Members the
    caller has already (`known`) are not fetched again."""
    got: dict[int, bytes | memoryview] = {}
    waiting: dict[Future[bytes | memoryview | None], int] = {}
    rest = iter(indices)
    while True:
        while len(got) + len(waiting) < need and (i := next(rest, None)) is not None:
            ref = spec.members[i]
            key = ChunkKey.from_pb(ref.key)
            have = b"" if key == ABSENT else known(key) if known is not None else None
            if have is not None:
                got[i] = have
            else:
                waiting[_FETCHERS.submit(read_member, transport, namespace, ref, readers, failures)] = i
        if not waiting:
            break
        done, _ = wait(waiting, return_when=FIRST_COMPLETED)
        for future in done:
            index = waiting.pop(future)
            data = future.result()
            if data is not None:
                got[index] = data
    if len(got) < need:
        raise StripeUnavailable(f"stripe {spec.id}: {len(got)} of the {need} members needed could be read "
                                f"({'; '.join(failures[-4:]) or 'no location recorded'})")
    return dict(sorted(got.items()))  # in member order, as a sequential read took them


def encode_parity(transport: ChunkTransport, namespace: str, spec: manager_pb2.StripeSpec,
                  readers: Sequence[common_pb2.Location] = (), known: Known | None = None
                  ) -> tuple[list[Member], float]:
    """All M parity members of a new stripe from its K data members, fetched once. Returns them
    and the CPU seconds the code took."""
    failures: list[str] = []
    data = _gather(transport, namespace, spec, range(spec.k), spec.k, readers, failures, known)
    cpu = time.thread_time()
    parity = Codec(spec.k, spec.m).encode([data[i] for i in range(spec.k)], spec.size)
    return parity, time.thread_time() - cpu


def build_member(transport: ChunkTransport, namespace: str, spec: manager_pb2.StripeSpec,
                 readers: Sequence[common_pb2.Location] = (), known: Known | None = None) -> tuple[Member, float]:
    """Member `spec.index` of the stripe: new parity when its key is empty (from the K data members),
    else rebuilt from any K others (a data member cut to its length). Returns it and the CPU seconds
    the code took."""
    codec = Codec(spec.k, spec.m)
    index, failures = spec.index, list[str]()
    total = spec.k + spec.m
    if not spec.members[index].key.hash:
        data = _gather(transport, namespace, spec, range(spec.k), spec.k, readers, failures, known)
        cpu = time.thread_time()
        out = codec.encode([data[i] for i in range(spec.k)], spec.size)[index - spec.k]
        return out, time.thread_time() - cpu
    order = [i for i in range(total) if i != index]
    available = _gather(transport, namespace, spec, order, spec.k, readers, failures, known)
    cpu = time.thread_time()
    out = codec.rebuild(available, index, spec.size)
    if index < spec.k:
        out = out[:spec.members[index].key.length]
    return out, time.thread_time() - cpu
