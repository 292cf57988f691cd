"""BeatDesk: what the heartbeat process knows, and the beats it passes on. Pure: no I/O, no clock.

The manager answers heartbeats in a process of its own, so that a storm of commits in the manager's
interpreter never delays one. That process knows only what the manager tells it: which incarnation
of each benefactor is registered (and not declared dead) at which address, whether orders or drain
tasks wait for it, and the heartbeat period to tell. It answers a beat of a benefactor it knows at
once, and queues the beat (with the time it arrived) for the manager, which judges liveness and
placement from it. A beat it cannot answer (an unknown benefactor or incarnation) goes to the
manager's own port. When the manager says work waits for a benefactor, the desk names it to be
woken (see wakes), so that it need not ask until its next heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from memstage.manager.wakes import Flags, Wake, wake_of

# Stats as they travel to the manager: capacity, used, backlog, chunk count, drain error, drained bytes.
StatsTuple = tuple[int, int, int, int, str, int]


class Beat(NamedTuple):
    benefactor: str
    incarnation: int
    arrived: float  # monotonic seconds (one clock for every process of the host)
    stats: StatsTuple
    sessions: tuple[int, ...]


class Answer(NamedTuple):
    interval: float
    orders_waiting: int
    drain_waiting: bool
    orders_last: int  # the sequence number of the last order waiting


@dataclass(slots=True)
class _Entry:
    incarnation: int
    address: str
    key: bytes  # its receipt key: orders pushed to it carry a MAC under it
    orders: int = 0  # waiting
    last: int = 0  # the sequence number of the last of them
    drain: bool = False  # tasks waiting


@dataclass(slots=True)
class BeatDesk:
    interval: float = 0.0
    _known: dict[str, _Entry] = field(default_factory=dict)
    _out: list[Beat] = field(default_factory=list)

    # -- told by the manager -------------------------------------------------------------------
    def known(self, items: list[tuple[str, int, str, bytes]]) -> None:
        """These incarnations are registered at these addresses with these keys (a new one replaces
        the old: nothing waits for it yet)."""
        for bf, incarnation, address, key in items:
            self._known[bf] = _Entry(incarnation, address, key)

    def gone(self, ids: list[str]) -> None:
        """Declared dead, left, or removed: their beats go to the manager (which says "register")."""
        for bf in ids:
            self._known.pop(bf, None)

    def flags(self, items: list[Flags]) -> list[Wake]:
        """Flags (see wakes.Flags) as the manager has them now, for benefactors whose flags changed.
        Returns the wakes to send: to each known one given work that still waits (not to one whose
        flags changed because it took some: it is asking already), with the orders it was given."""
        wakes = []
        for flag in items:
            bf, incarnation, orders, drains, _, _, last = flag
            entry = self._known.get(bf)
            if entry is not None and entry.incarnation == incarnation:
                entry.orders, entry.drain, entry.last = orders, drains, last
                wake = wake_of(flag, entry.incarnation, entry.address, entry.key)
                if wake is not None:
                    wakes.append(wake)
        return wakes

    # -- a heartbeat ---------------------------------------------------------------------------
    def beat(self, beat: Beat) -> Answer | None:
        """The answer to a heartbeat, or None when the manager must answer it (unknown here)."""
        entry = self._known.get(beat.benefactor)
        if entry is None or entry.incarnation != beat.incarnation or not self.interval:
            return None
        self._out.append(beat)
        return Answer(self.interval, entry.orders, entry.drain, entry.last)

    def take(self) -> list[Beat]:
        """The beats answered since the last call, in order of arrival, for the manager."""
        out, self._out = self._out, []
        return out

    def __len__(self) -> int:
        return len(self._known)
