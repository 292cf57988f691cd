"""Sessions: the manager's open write sessions and their leases. Pure: no I/O, no clock.

A writer opens a session before it stores anything; what it stores belongs to the session until
its commit turns it into references. A session ends by commit, by abort, or when its lease runs
out (the writer died or lost the manager): its chunks are then freed. The manager tells the
benefactors a session touched (those in its striping maps, and any its commit names); a benefactor
that holds chunks of a session the manager does not know as open is told at its next heartbeat.
Callers pass `now` (monotonic seconds).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Session:
    id: int
    namespace: str
    path: str
    expires: float
    benefactors: set[str] = field(default_factory=set)  # where it may have stored chunks
    committing: bool = False  # its commit is under way: it neither expires nor gets new maps
    queued: bool = False  # its commit waits for its turn: it does not expire meanwhile
    reserved: dict[str, int] = field(default_factory=dict)  # room its maps reserved, per benefactor


class SessionTable:
    def __init__(self, lease: float, on_end: Callable[[Session], None] | None = None) -> None:
        self.lease = lease
        self._open: dict[int, Session] = {}
        self._on_end = on_end  # called with every session that ends (its reservations go back)

    def __len__(self) -> int:
        return len(self._open)

    def open(self, namespace: str, path: str, now: float) -> Session:
        sid = secrets.randbits(63)
        while sid == 0 or sid in self._open:
            sid = secrets.randbits(63)
        session = self._open[sid] = Session(sid, namespace, path, now + self.lease)
        return session

    def of(self, namespace: str) -> list[Session]:
        """The namespace's open sessions."""
        return [s for s in self._open.values() if s.namespace == namespace]

    def get(self, sid: int) -> Session | None:
        return self._open.get(sid)

    def renew(self, sid: int, now: float) -> bool:
        session = self._open.get(sid)
        if session is None:
            return False
        session.expires = now + self.lease
        return True

    def end(self, sid: int) -> Session | None:
        """Close a session (commit or abort); None if it was not open."""
        session = self._open.pop(sid, None)
        if session is not None and self._on_end is not None:
            self._on_end(session)
        return session

    def expired(self, now: float) -> list[Session]:
        """Sessions whose lease ran out; they are closed."""
        gone = [s for s in self._open.values() if s.expires < now and not s.committing and not s.queued]
        for s in gone:
            del self._open[s.id]
            if self._on_end is not None:
                self._on_end(s)
        return gone

    def is_open(self, sid: int) -> bool:
        return sid in self._open
