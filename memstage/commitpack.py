"""The packed form of a commit's chunk references (PackedChunks): a few byte strings instead of a
message per chunk, which cost the manager more than the rest of a commit of a large file."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from memstage.chunks import PACKED_KEY, ChunkKey
from memstage.errors import InvalidArgument
from memstage.proto import manager_pb2

RECEIPT_BYTES = 16


def pack(refs: Sequence[tuple[ChunkKey, Sequence[tuple[str, bytes]]]]) -> manager_pb2.PackedChunks:
    """Chunks in file order, each with its locations: (benefactor id, receipt)."""
    names: dict[str, int] = {}
    where: list[int] = []
    receipts: list[bytes] = []
    for _, locs in refs:
        for bf, receipt in locs:
            i = names.get(bf)
            if i is None:
                i = names[bf] = len(names)
            where.append(i)
            receipts.append(receipt)
    return manager_pb2.PackedChunks(
        keys=b"".join([PACKED_KEY.pack(k.hash, k.length) for k, _ in refs]),
        counts=bytes([len(locs) for _, locs in refs]), benefactors=list(names),
        locations=struct.pack(f">{len(where)}I", *where), receipts=b"".join(receipts))


@dataclass(frozen=True, slots=True)
class Unpacked:
    keys: list[tuple[bytes, int]]  # per chunk: hash, length (not yet checked as chunk keys)
    counts: bytes  # per chunk: how many of the locations below are its own
    benefactors: list[str]  # per location: its benefactor
    receipts: bytes  # per location: 16 bytes


def unpack(p: manager_pb2.PackedChunks) -> Unpacked:
    """The references, with their sizes checked against each other (InvalidArgument if they differ)."""
    if len(p.keys) % PACKED_KEY.size:
        raise InvalidArgument(f"packed chunks: keys take {len(p.keys)} bytes, not a multiple of {PACKED_KEY.size}")
    n = len(p.keys) // PACKED_KEY.size
    if len(p.counts) != n:
        raise InvalidArgument(f"packed chunks: {len(p.counts)} location counts for {n} chunks")
    located = sum(p.counts)
    if len(p.locations) != 4 * located or len(p.receipts) != RECEIPT_BYTES * located:
        raise InvalidArgument(f"packed chunks: {located} locations counted, but {len(p.locations)} bytes of "
                              f"locations and {len(p.receipts)} bytes of receipts")
    names = list(p.benefactors)
    where = struct.unpack(f">{located}I", p.locations)
    if where and max(where) >= len(names):
        raise InvalidArgument(f"packed chunks: a location names benefactor {max(where)} of {len(names)}")
    return Unpacked(list(PACKED_KEY.iter_unpack(p.keys)), p.counts, list(map(names.__getitem__, where)), p.receipts)
