"""Delivery: how the manager's orders reach each benefactor, as one state machine. Pure: no I/O,
no threads, no clock, no protobuf (an order is whatever the caller builds around its number).

Per benefactor it keeps the orders pending, numbered from 1 in the manager process's epoch, the
number of the last one given and of the last one acknowledged. Events come in: an order pushed, an
acknowledgement (in a wake's reply or with a fetch), a new incarnation registered (its queue starts
empty: the old process's chunks are gone with it). What to send comes out: the orders a wake pushes
(batch), the hint a heartbeat reply gives (hint), the answer to a fetch (fetch), and which
benefactors to tell about (notices, when followed).

An order stays pending until acknowledged in this epoch, so a lost wake or reply costs a repeat,
never an order; an acknowledgement naming another epoch (a manager process before this one) is void.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

MAX_BATCH = 256  # orders per fetch, and per wake

O = TypeVar("O")  # noqa: E741 (an order, as the caller builds it)


class Hint(NamedTuple):
    """What a heartbeat reply says of the orders waiting: how many, numbered in which epoch, the
    number of the last (0: none waits)."""

    waiting: int
    epoch: int
    last: int


class Notice(NamedTuple, Generic[O]):
    """A benefactor whose orders waiting changed since it was last told of: the count, the last
    number, and, when it was given orders since, the batch a wake pushes to it (else None)."""

    benefactor: str
    waiting: int
    last: int
    batch: list[O] | None


@dataclass(slots=True)
class _Queue(Generic[O]):
    next_seq: int = 1
    acked: int = 0  # the last number acknowledged in this epoch
    pending: list[tuple[int, O]] = field(default_factory=list)


class Delivery(Generic[O]):
    def __init__(self, epoch: int = 0, batch: int = MAX_BATCH) -> None:
        self.epoch = epoch  # the manager process's: its numbering, and the acknowledgements that count
        self.max_batch = batch
        self._queues: dict[str, _Queue[O]] = {}
        # Benefactors whose orders waiting changed, once followed (see follow): whoever answers
        # heartbeats is told. And those given new orders (a subset): they are woken.
        self.changed: set[str] | None = None
        self.pushed: set[str] = set()

    def follow(self) -> None:
        """From now on, changes are kept for notices."""
        if self.changed is None:
            self.changed = set()

    # -- events ------------------------------------------------------------------------------------
    def queue(self, benefactor: str, build: Callable[[int], O]) -> O:
        """A new order for the benefactor, built around the number it is given."""
        q = self._queues.setdefault(benefactor, _Queue())
        order = build(q.next_seq)
        q.pending.append((q.next_seq, order))
        q.next_seq += 1
        if self.changed is not None:
            self.changed.add(benefactor)
            self.pushed.add(benefactor)
        return order

    def ack(self, benefactor: str, epoch: int, acked: int) -> bool:
        """The benefactor carried out the orders up to `acked`, numbered in `epoch`: they go (void
        unless this epoch). Returns whether any went."""
        q = self._queues.get(benefactor)
        if q is None or not acked or epoch != self.epoch:
            return False
        q.acked = max(q.acked, acked)
        before = len(q.pending)
        q.pending = [(seq, o) for seq, o in q.pending if seq > acked]
        if len(q.pending) == before:
            return False
        if self.changed is not None:
            self.changed.add(benefactor)
        return True

    def reset(self, benefactor: str) -> None:
        """A new incarnation (or none any more): numbering starts again from 1, nothing old is sent."""
        if self._queues.pop(benefactor, None) is not None and self.changed is not None:
            self.changed.add(benefactor)

    # -- what to send ------------------------------------------------------------------------------
    def batch(self, benefactor: str) -> list[O]:
        """The next orders pending (at most max_batch), as a wake pushes them; still pending."""
        q = self._queues.get(benefactor)
        return [o for _, o in q.pending[:self.max_batch]] if q is not None else []

    def fetch(self, benefactor: str, epoch: int, acked: int) -> list[O]:
        """The answer to a fetch acknowledging `acked` in `epoch`: those go, the next are sent."""
        self.ack(benefactor, epoch, acked)
        return self.batch(benefactor)

    def hint(self, benefactor: str) -> Hint:
        return Hint(self.waiting(benefactor), self.epoch, self.last(benefactor))

    def waiting(self, benefactor: str) -> int:
        """Orders pending for the benefactor (sent or not, until acknowledged)."""
        q = self._queues.get(benefactor)
        return len(q.pending) if q is not None else 0

    def last(self, benefactor: str) -> int:
        """The number of the last order pending for the benefactor (0: none)."""
        q = self._queues.get(benefactor)
        return q.pending[-1][0] if q is not None and q.pending else 0

    def acked(self, benefactor: str) -> int:
        """The last number the benefactor acknowledged in this epoch (0: none)."""
        q = self._queues.get(benefactor)
        return q.acked if q is not None else 0

    def take_changes(self) -> tuple[set[str], set[str]]:
        """Benefactors whose orders waiting changed since the last call, and those given orders (a
        subset: they are woken)."""
        changed, pushed = self.changed or set(), self.pushed
        if self.changed is not None:
            self.changed = set()
        self.pushed = set()
        return changed, pushed

    def notice(self, benefactor: str, with_batch: bool) -> Notice[O]:
        waiting = self.waiting(benefactor)
        batch = self.batch(benefactor) if waiting and with_batch else None
        return Notice(benefactor, waiting, self.last(benefactor), batch)

    def notices(self, benefactors: Iterable[str] | None = None) -> list[Notice[O]]:
        """Notices of the benefactors that changed since the last call (the changes are taken), or,
        given benefactors, of those (each with its batch, as a restarted heartbeat process needs)."""
        if benefactors is not None:
            return [self.notice(bf, True) for bf in benefactors]
        changed, pushed = self.take_changes()
        return [self.notice(bf, bf in pushed) for bf in changed]
