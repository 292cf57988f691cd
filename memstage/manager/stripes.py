"""Reed-Solomon stripes at the manager (rs:K+M): which chunks form a stripe, where its parity goes,
and which lost members to rebuild. Pure: no I/O, no clock of its own.

Stripes are made after the commit, off the writer's path, from chunks a version needs in memory
that no stripe protects yet: K of them (on distinct benefactors, in distinct failure domains when
there are enough) and M parity members that benefactors compute from them and keep. An unchanged
chunk of a later version is deduplicated and stays protected by the stripe it was first put in.
A stripe pins all its members in memory (each counts as one in-memory reference) for as long as
one of its data members is needed in memory and not on the PFS; then it is dropped and its
parity freed. Members are immutable (content-addressed) and a version commits atomically, so a
stripe never sees a partial update: the update-order problem of erasure-coded writers cannot arise.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from memstage.chunks import PACKED_KEY, ChunkKey
from memstage.erasure import ABSENT
from memstage.manager.chunkindex import IndexKey

__all__ = ["ABSENT", "Copies", "NewStripe", "Spread", "Stripe", "StripeIndex", "StripeWork", "beyond", "group",
           "recoverable", "spread", "targets"]


@dataclass(frozen=True, slots=True)
class Stripe:
    id: int
    namespace: str
    k: int
    m: int
    size: int  # bytes of every member once zero-padded
    members: tuple[ChunkKey, ...]  # k data then m parity

    def real(self) -> Iterator[tuple[int, IndexKey]]:
        """(index, chunk) of the members that exist (absent ones are zeros)."""
        for i, key in enumerate(self.members):
            if key != ABSENT:
                yield i, (self.namespace, key)

    def data(self) -> Iterator[tuple[int, IndexKey]]:
        return ((i, ik) for i, ik in self.real() if i < self.k)

    def pack(self) -> bytes:
        return b"".join(PACKED_KEY.pack(k.hash, k.length) for k in self.members)

    @staticmethod
    def unpack_members(blob: bytes) -> tuple[ChunkKey, ...]:
        return tuple(ChunkKey(h, n) for h, n in PACKED_KEY.iter_unpack(blob))


class StripeIndex:
    """Stripes by id, and the stripes each chunk is a member of."""

    def __init__(self) -> None:
        self._stripes: dict[int, Stripe] = {}
        self._of: dict[IndexKey, set[int]] = {}

    def __len__(self) -> int:
        return len(self._stripes)

    def __iter__(self) -> Iterator[Stripe]:
        return iter(list(self._stripes.values()))

    def get(self, stripe_id: int) -> Stripe | None:
        return self._stripes.get(stripe_id)

    def add(self, stripe: Stripe) -> None:
        self._stripes[stripe.id] = stripe
        for _, ik in stripe.real():
            self._of.setdefault(ik, set()).add(stripe.id)

    def remove(self, stripe_id: int) -> Stripe | None:
        stripe = self._stripes.pop(stripe_id, None)
        if stripe is not None:
            for _, ik in stripe.real():
                ids = self._of.get(ik)
                if ids is not None:
                    ids.discard(stripe_id)
                    if not ids:
                        del self._of[ik]
        return stripe

    def of(self, ik: IndexKey) -> list[Stripe]:
        return [self._stripes[i] for i in sorted(self._of.get(ik, ()))]

    def pins(self, ik: IndexKey) -> int:
        """In-memory references the stripes hold on this chunk (one per stripe it is a member of)."""
        return len(self._of.get(ik, ()))


class Spread(NamedTuple):
    """How whole a stripe is: its members readable, and those to rebuild."""

    readable: int
    rebuild: list[int]


class Copies(NamedTuple):
    """Where a stripe member can be read from, as the catalog knows it."""

    absent: bool  # a zero member: stored nowhere, always readable
    drained: bool  # its chunk file is on the PFS
    holders: Collection[str]  # benefactors holding it, live or not


def spread(k: int, members: Sequence[Copies], alive: Collection[str]) -> Spread:
    """How whole a stripe of K data members is. A member is readable if absent, from the PFS (a
    data member: parity is never drained) or from a live holder; it is to rebuild when it is not
    readable, or when its live holders each hold another member already (one loss would cost the
    stripe two)."""
    readable, rebuild, used = 0, list[int](), set[str]()
    for i, member in enumerate(members):
        if member.absent or (i < k and member.drained):
            readable += 1
            continue
        live = {bf for bf in member.holders if bf in alive}
        if not live:
            rebuild.append(i)
            continue
        readable += 1
        if live - used:
            used.add(min(live - used))
        else:
            rebuild.append(i)
    return Spread(readable, rebuild)


def recoverable(stripe: Stripe, readable: int) -> bool:
    """A stripe with this many members readable can still rebuild any of the others."""
    return readable >= stripe.k


def beyond(stripe: Stripe, key: ChunkKey, readable: int) -> str:
    """Why a member of a stripe with `readable` members left cannot be rebuilt (a lost reason's tail)."""
    return (f"; chunk {key} cannot be rebuilt: its stripe (rs:{stripe.k}+{stripe.m}) has {readable} "
            f"of its {stripe.k + stripe.m} members left, {stripe.k} are needed")


@dataclass(slots=True)
class NewStripe:
    """A stripe being encoded: its data members are chosen, its parity is being computed."""
    namespace: str
    k: int
    m: int
    size: int
    data: tuple[ChunkKey, ...]
    deadline: float
    targets: dict[int, tuple[str, int]] = field(default_factory=dict)  # parity index -> (benefactor, gen)
    done: dict[int, tuple[ChunkKey, str, int]] = field(default_factory=dict)  # index -> (key, benefactor, gen)
    failed: bool = False


def group(candidates: Sequence[tuple[IndexKey, Sequence[str]]], k: int, domains: dict[str, str],
          short_ok: bool) -> list[list[IndexKey]]:
    """Data members for new stripes, K chunks at a time, each from a failure domain (of its first
    holder) no other member of its stripe is in while there are enough domains: the domains with
    the most chunks left go first, so the last stripes are not left with one domain only. A last
    stripe with fewer than K members is formed only if `short_ok` (its chunks waited a round)."""
    by_domain: dict[str, list[IndexKey]] = {}
    for ik, holders in candidates:
        d = domains.get(holders[0], holders[0]) if holders else ""
        by_domain.setdefault(d, []).append(ik)
    left = len(candidates)
    out: list[list[IndexKey]] = []
    while left and (left >= k or short_ok):
        order = sorted((d for d in by_domain if by_domain[d]), key=lambda d: -len(by_domain[d]))  # stable
        members = [by_domain[d].pop(0) for d in order[:k]]
        while len(members) < k and any(by_domain.values()):  # not enough domains: share one
            members.append(by_domain[max(by_domain, key=lambda d: len(by_domain[d]))].pop(0))
        left -= len(members)
        out.append(members)
    return out


def targets(count: int, size: int, room: dict[str, int], taken: set[str], used_domains: set[str],
            domains: dict[str, str]) -> tuple[list[str], int]:
    """`count` benefactors for new members of a stripe: not holding a member already, with room,
    in a domain no member is in first, then most free memory. Returns them (fewer if there are not
    enough) and how many of them share a domain with another member. Updates room."""
    out, shared = [], 0
    used = set(used_domains)
    for _ in range(count):
        fits = [bf for bf, n in room.items() if bf not in taken and n >= size]
        if not fits:
            break
        bf = min(fits, key=lambda b: (domains.get(b, b) in used, -room[b], b))
        if domains.get(bf, bf) in used:
            shared += 1
        out.append(bf)
        taken.add(bf)
        used.add(domains.get(bf, bf))
        room[bf] -= size
    return out, shared


@dataclass(slots=True)
class StripeWork:
    """Stripes being encoded and members being rebuilt, until their benefactors report or the
    order times out (then the work is planned again)."""
    timeout: float = 30.0
    max_in_flight: int = 64  # members being computed at once, so ingest keeps its share
    new: dict[int, NewStripe] = field(default_factory=dict)
    rebuilding: dict[tuple[int, int], tuple[str, int, float]] = field(default_factory=dict)  # -> (bf, gen, deadline)
    waited: set[IndexKey] = field(default_factory=set)  # chunks left out of a short stripe last round
    encoded: int = 0  # parity members computed
    rebuilt: int = 0
    failed: int = 0
    shared_domains: int = 0
    bytes_made: int = 0
    cpu_seconds: float = 0.0
    unprotected: int = 0  # at the last round: chunks in no stripe yet, and members missing
    missing: int = 0

    @property
    def in_flight(self) -> int:
        return sum(len(s.targets) - len(s.done) for s in self.new.values()) + len(self.rebuilding)

    def pending_data(self) -> set[IndexKey]:
        return {(s.namespace, k) for s in self.new.values() for k in s.data}

    def expire(self, now: float) -> list[NewStripe]:
        """Forget work not reported in time; returns the abandoned new stripes (their computed parity
        is to be freed)."""
        gone = [sid for sid, s in self.new.items() if s.deadline <= now or s.failed]
        for key in [key for key, (_, _, d) in self.rebuilding.items() if d <= now]:
            del self.rebuilding[key]
        return [self.new.pop(sid) for sid in gone]

    def parity_done(self, stripe_id: int, index: int, key: ChunkKey, bf: str, gen: int, ok: bool
                    ) -> NewStripe | None:
        """A parity member was computed (or not). Returns the stripe once all its parity is in, else
        None; a failure marks it failed (abandoned at the next expire)."""
        s = self.new.get(stripe_id)
        if s is None or s.targets.get(index) != (bf, gen):
            return None
        if not ok:
            s.failed = True
            self.failed += 1
            return None
        s.done[index] = (key, bf, gen)
        self.encoded += 1
        self.bytes_made += s.size
        if len(s.done) < len(s.targets):
            return None
        return s  # the caller records it, then removes it from the work (finished())

    def finished(self, stripe_id: int) -> None:
        self.new.pop(stripe_id, None)

    def rebuild_done(self, stripe_id: int, index: int, bf: str, ok: bool, nbytes: int = 0) -> bool:
        """A rebuilt member was reported; True if it was this work's."""
        got = self.rebuilding.get((stripe_id, index))
        if got is None or got[0] != bf:
            return False
        del self.rebuilding[(stripe_id, index)]
        if ok:
            self.rebuilt += 1
            self.bytes_made += nbytes
        else:
            self.failed += 1
        return True
