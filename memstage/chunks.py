"""The chunk model: identity by (XXH3-128, length), and the sizes the data path is built around."""

from __future__ import annotations

import functools
import struct
from operator import itemgetter
from typing import NamedTuple

import xxhash

from memstage.proto import common_pb2

HASH_BYTES = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024
# Frames carry at most this much of a chunk: bigger chunks span several frames of one Put stream.
MAX_FRAME_DATA = 4 * 1024 * 1024
# gRPC message limit on every channel and server: one frame plus its header, with room to spare.
MAX_MESSAGE_BYTES = MAX_FRAME_DATA + 64 * 1024
# A hole (bytes never written, read as zeros) is a map entry with this hash and any length: it is
# stored nowhere, so a sparse file costs one entry per hole, whatever its size.
HOLE_HASH = bytes(HASH_BYTES)
# A chunk key packed as commits, version maps, stripes and the location log carry it: hash, length.
PACKED_KEY = struct.Struct(">16sQ")
# A held chunk in an order's hold_packed: hash, length, generation of the hold.
HELD_PACKED = struct.Struct(">16sQQ")
# The first and second field of a ChunkKey (its hash and length) or of a pair, as C calls: a
# commit maps them over a thousand chunks without a Python call per chunk.
first, second = itemgetter(0), itemgetter(1)
# Largest file size (as Linux's MAX_LFS_FILESIZE): truncate or write beyond it is EFBIG.
MAX_FILE_SIZE = (1 << 63) - 1


class ChunkKey(NamedTuple):
    """A tuple: the manager keys millions of index entries by it, so hashing and comparing stay in C."""

    hash: bytes
    length: int

    @classmethod
    def of(cls, data: bytes | memoryview) -> ChunkKey:
        return cls(xxhash.xxh3_128_digest(data), len(data))

    @classmethod
    def hole(cls, length: int) -> ChunkKey:
        return cls(HOLE_HASH, length)

    @property
    def is_hole(self) -> bool:
        return self.hash == HOLE_HASH

    @classmethod
    def from_pb(cls, pb: common_pb2.ChunkKey) -> ChunkKey:
        return cls(bytes(pb.hash), pb.length)

    def to_pb(self) -> common_pb2.ChunkKey:
        return common_pb2.ChunkKey(hash=self.hash, length=self.length)

    def matches(self, data: bytes | memoryview) -> bool:
        if self.is_hole:
            return len(data) == self.length and not any(data)
        return len(data) == self.length and xxhash.xxh3_128_digest(data) == self.hash

    def matches_parts(self, parts: list[memoryview]) -> bool:
        """matches() for bytes held in several pieces (arena runs), hashed where they lie."""
        if len(parts) == 1:
            return self.matches(parts[0])
        h = xxhash.xxh3_128()
        for part in parts:
            h.update(part)
        return sum(len(p) for p in parts) == self.length and h.digest() == self.hash

    def hex(self) -> str:
        return f"{self.hash.hex()}-{self.length}"

    def __str__(self) -> str:
        return self.hex()


# ChunkKey(h, n) from a pair (h, n) without a Python call: a commit makes a thousand at once.
key_of_pair = functools.partial(tuple.__new__, ChunkKey)
