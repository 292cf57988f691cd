"""BeatDesk: what the heartbeat process knows, and the beats it passes on. Pure: no I/O, no clock.

The manager answers heartbeats in a process of its own, so that a storm of commits in the manager's
interpreter never delays one. That process knows only what the manager tells it: which incarnation
of each benefactor is registered (and not declared dead), whether orders or drain tasks wait for it,
and the heartbeat period to tell. It answers a beat of a benefactor it knows at once, and queues
the beat (with the time it arrived) for the manager, which judges liveness and placement from it.
A beat it cannot answer (an unknown benefactor or incarnation) goes to the manager's own port.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

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


@dataclass(slots=True)
class BeatDesk:
    interval: float = 0.0
    # benefactor -> [incarnation, orders waiting, drain waiting]
    _known: dict[str, list[int]] = field(default_factory=dict)
    _out: list[Beat] = field(default_factory=list)

    # -- told by the manager -------------------------------------------------------------------
    def known(self, items: list[tuple[str, int]]) -> None:
        """These incarnations are registered (a new one replaces the old: nothing waits for it yet)."""
        for bf, incarnation in items:
            self._known[bf] = [incarnation, 0, 0]

    def gone(self, ids: list[str]) -> None:
        """Declared dead, left, or removed: their beats go to the manager (which says "register")."""
        for bf in ids:
            self._known.pop(bf, None)

    def flags(self, items: list[tuple[str, int, int, bool]]) -> None:
        """(benefactor, incarnation, orders waiting, drain waiting) as the manager has them now."""
        for bf, incarnation, orders, drains in items:
            entry = self._known.get(bf)
            if entry is not None and entry[0] == incarnation:
                entry[1], entry[2] = orders, int(drains)

    # -- a heartbeat ---------------------------------------------------------------------------
    def beat(self, beat: Beat) -> Answer | None:
        """The answer to a heartbeat, or None when the manager must answer it (unknown here)."""
        entry = self._known.get(beat.benefactor)
        if entry is None or entry[0] != beat.incarnation or not self.interval:
            return None
        self._out.append(beat)
        return Answer(self.interval, entry[1], bool(entry[2]))

    def take(self) -> list[Beat]:
        """The beats answered since the last call, in order of arrival, for the manager."""
        out, self._out = self._out, []
        return out

    def __len__(self) -> int:
        return len(self._known)
