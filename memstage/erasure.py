"""Reed-Solomon stripes over chunks: ISA-L's Cauchy Reed-Solomon (any K+M is MDS), called directly
(memstage.isal), or through pyeclib where that library cannot be loaded.

A stripe is K data members and M parity members, each `size` bytes: a data chunk shorter than
`size` counts as padded with zeros (an absent member, length 0, is all zeros). Members are stored
as plain chunks; pyeclib wants its own fragment headers, which depend only on (K, M, size), so
they are taken once per shape from an encoding of zeros and put in front of a member when it is
decoded. Any K of the K+M members give back every other one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from pyeclib.ec_iface import ECDriver

from memstage import isal
from memstage.chunks import ChunkKey
from memstage.redundancy import MAX_K, MAX_M

BACKEND = "isa_l_rs_cauchy"

Buffer = bytes | bytearray | memoryview
Member = bytes | memoryview  # a member the codec made
ABSENT = ChunkKey.hole(0)  # a data member a short stripe does not have: zeros


@functools.lru_cache(maxsize=64)
def _driver(k: int, m: int) -> ECDriver:
    return ECDriver(k=k, m=m, ec_type=BACKEND)


@functools.lru_cache(maxsize=64)
def _headers(k: int, m: int, size: int) -> tuple[bytes, ...]:
    fragments = _driver(k, m).encode(bytes(k * size))
    return tuple(bytes(f[:len(f) - size]) for f in fragments)


_pyeclib_only = False  # tests set it to compare the two


def _padded(index: int, member: Buffer, size: int) -> Buffer:
    """A member at its full size: a short data member (the file's last) copied with zeros after it."""
    if len(member) == size:
        return member
    if len(member) > size:
        raise ValueError(f"member {index} is {len(member)} bytes, over the stripe's {size}")
    out = bytearray(size)
    out[:len(member)] = member
    return out


class Codec:
    def __init__(self, k: int, m: int) -> None:
        if not (1 <= k <= MAX_K and 1 <= m <= MAX_M):
            raise ValueError(f"rs:{k}+{m}: K must be 1..{MAX_K} and M 1..{MAX_M}")
        self.k, self.m = k, m
        self._driver = _driver(k, m)

    def encode(self, data: Sequence[Buffer], size: int) -> list[Member]:
        """The M parity members of K data members (each at most `size` bytes)."""
        if len(data) != self.k:
            raise ValueError(f"a stripe has {self.k} data members, not {len(data)}")
        if not _pyeclib_only and isal.lib() is not None:
            padded = [_padded(i, d, size) for i, d in enumerate(data)]
            return [memoryview(p) for p in isal.encode(self.k, self.m, padded, size)]
        buf = bytearray(self.k * size)  # one copy: the members side by side, zero-padded
        for i, d in enumerate(data):
            if len(d) > size:
                raise ValueError(f"member {i} is {len(d)} bytes, over the stripe's {size}")
            buf[i * size:i * size + len(d)] = d
        fragments = self._driver.encode(bytes(buf))
        return [bytes(memoryview(f)[len(f) - size:]) for f in fragments[self.k:]]

    def rebuild(self, available: Mapping[int, Buffer], want: int, size: int) -> Member:
        """Member `want` (0..K+M-1) from at least K others (index -> bytes, data members unpadded)."""
        if len(available) < self.k:
            raise ValueError(f"{len(available)} members available, {self.k} needed")
        if not _pyeclib_only and isal.lib() is not None:
            used = [(i, _padded(i, d, size)) for i, d in list(available.items())[:self.k]]
            return memoryview(isal.rebuild(self.k, self.m, used, want, size))
        headers = _headers(self.k, self.m, size)
        fragments = []
        for i, d in list(available.items())[:self.k]:
            pad = size - len(d)
            fragments.append(headers[i] + bytes(d) + bytes(pad) if pad else headers[i] + bytes(d))
        out = self._driver.reconstruct(fragments, [want])[0]
        return bytes(memoryview(out)[len(out) - size:])
