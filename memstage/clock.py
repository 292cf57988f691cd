"""Clock: where the roles read time and wait for it to pass.

Leases, TTLs, sweeps, heartbeats and idle back-offs are timing rules. They read time through a
Clock passed in: the SystemClock in a deployment, a ManualClock in tests, which move time on with
`advance` instead of sleeping (a lease of thirty seconds runs out at once, and an idle loop's
calls are counted per second of clock time however loaded the machine is).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

# A ManualClock's waiter looks at its event this often (real seconds): an Event cannot say when
# it is set, and advance() wakes those whose deadline passed at once anyway.
EVENT_LOOK_S = 0.01


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Wait until `event` is set (True) or `timeout` seconds of this clock passed (False)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """Time that passes only when told (advance). No real time is waited for: a waiter returns
    when its event is set or when an advance takes the clock past its deadline.

    `settle()` waits (in real time) until every waiter due (its deadline passed, or its event
    set) has returned and waits again: after advance(); settle(), what the advance caused is done."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._cond = threading.Condition()
        self._waiting: dict[int, tuple[float, threading.Event]] = {}  # thread id -> its deadline and event
        self._busy: set[int] = set()  # threads that returned from wait() and have not waited again

    def now(self) -> float:
        with self._cond:
            return self._now

    def wait(self, event: threading.Event, timeout: float) -> bool:
        me = threading.get_ident()
        with self._cond:
            deadline = self._now + max(0.0, timeout)
            self._busy.discard(me)
            self._waiting[me] = (deadline, event)
            try:
                while not event.is_set() and self._now < deadline:
                    self._cond.wait(EVENT_LOOK_S)
                return event.is_set()
            finally:
                del self._waiting[me]
                self._busy.add(me)
                self._cond.notify_all()

    def advance(self, seconds: float) -> None:
        """Move time on; waiters whose deadline it passes return."""
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def settle(self, timeout: float = 30.0) -> None:
        """Wait (real time) until no waiter is due and no thread that returned from wait() is
        still at work, ended threads aside. AssertionError after `timeout` real seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                alive = {t.ident for t in threading.enumerate()}
                self._busy &= alive
                due = [w for w, (at, event) in self._waiting.items() if at <= self._now or event.is_set()]
                if not self._busy and not due:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [t.name for t in threading.enumerate() if t.ident in self._busy or t.ident in due]
                    raise AssertionError(f"threads still at work after {timeout}s: {names}")
                self._cond.wait(min(left, EVENT_LOOK_S))
