"""Protobuf messages to and from the manager's domain values: chunk keys, attributes, stats, maps."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence, Set

from memstage import receipts
from memstage.chunks import HASH_BYTES, HOLE_HASH, MAX_CHUNK_SIZE, MAX_FILE_SIZE, ChunkKey
from memstage.errors import InvalidArgument
from memstage.manager.catalog import Catalog
from memstage.manager.chunkindex import IndexKey
from memstage.manager.nodes import Attrs, Node
from memstage.manager.registry import Placement, Stats
from memstage.manager.state import State
from memstage.manager.stripes import Stripe
from memstage.proto import common_pb2, manager_pb2

NO_KEY = b"\0" * receipts.KEY_BYTES  # stands in for a benefactor not registered (its location fails anyway)

# What a benefactor reports holding: (namespace, key), the hold's generation, its open sessions.
Held = list[tuple[IndexKey, int, list[int]]]


def striping_map(placements: Sequence[Placement]) -> manager_pb2.StripingMap:
    return manager_pb2.StripingMap(
        benefactors=[common_pb2.Location(benefactor_id=p.id, address=p.address) for p in placements])


def stats(pb: manager_pb2.BenefactorStats) -> Stats:
    return Stats(pb.memory_capacity, pb.memory_used, pb.drain_backlog, pb.chunk_count, pb.drain_error,
                 pb.drained_bytes)


def attrs(pb: manager_pb2.FileAttrs) -> Attrs:
    def given(field: str) -> int | None:
        return getattr(pb, field) if pb.HasField(field) else None

    return Attrs(given("mode"), given("ino"), given("uid"), given("gid"), given("atime_ns"), given("mtime_ns"),
                 access=pb.access)


def key(pb: common_pb2.ChunkKey) -> ChunkKey:
    h, n = pb.hash, pb.length
    if len(h) == HASH_BYTES and 0 < n <= MAX_CHUNK_SIZE and h != HOLE_HASH:
        return ChunkKey(h, n)  # the common case, checked first: a commit has a thousand of them
    return key_of(h, n)


def key_of(h: bytes, n: int) -> ChunkKey:
    k = ChunkKey(h, n)
    if k.is_hole and 0 < k.length <= MAX_FILE_SIZE:
        return k  # a run of zeros, stored nowhere
    if len(k.hash) != HASH_BYTES or not 0 < k.length <= MAX_CHUNK_SIZE:
        raise InvalidArgument(f"chunk key {k}: needs a {HASH_BYTES}-byte hash and a length of 1..{MAX_CHUNK_SIZE}")
    return k


def held(groups: Sequence[manager_pb2.HeldChunks]) -> Held:
    return [((g.namespace, key(c.key)), c.gen, list(c.sessions)) for g in groups for c in g.chunks]


def with_node(info: manager_pb2.FileInfo, node: Node) -> manager_pb2.FileInfo:
    # Names without a row of their own (directories that exist by their files) get a number
    # from their path, in a range rows never reach.
    if info.path == "/":
        info.ino = 1
    else:
        info.ino = node.ino or (1 << 62) | (zlib.crc32(info.path.encode()) << 20)
    info.mode, info.uid, info.gid = node.st_mode, node.uid, node.gid
    info.atime_ns, info.mtime_ns, info.ctime_ns = node.atime_ns, node.mtime_ns, node.ctime_ns
    return info


def stripe_spec(catalog: Catalog, stripe: Stripe, index: int, addresses: Mapping[str, str], alive: Set[str]
                ) -> manager_pb2.StripeSpec:
    members = []
    for k, (holders, drained) in zip(stripe.members, catalog.stripe_members(stripe), strict=True):
        live = sorted(bf for bf in holders if bf in alive)
        members.append(manager_pb2.ChunkRef(key=k.to_pb(), drained=drained, locations=[
            common_pb2.Location(benefactor_id=bf, address=addresses[bf]) for bf in live if bf in addresses]))
    return manager_pb2.StripeSpec(id=stripe.id, k=stripe.k, m=stripe.m, size=stripe.size, members=members,
                                  index=index)


class Addresses(Mapping[str, str]):
    """Benefactor addresses looked up when a map needs them (not copied from a registry of 100k):
    the registry's, else the last one registered (a restarted manager has not heard from all yet).
    Iterating it gives the live ones."""

    def __init__(self, state: State) -> None:
        self._state = state

    def __getitem__(self, bf: str) -> str:
        rec = self._state.registry.get(bf)
        if rec is not None:
            return rec.address
        return self._state.known_addresses[bf]

    def __iter__(self) -> Iterator[str]:
        return iter(self._state.registry.live_ids())

    def __len__(self) -> int:
        return len(self._state.registry.live_ids())
