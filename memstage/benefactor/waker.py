"""Waker: when a benefactor's polling loop (orders, drain tasks) asks the manager again.

An idle benefactor must not poll: ten thousand of them polling five times a second would be
fifty thousand calls a second at the manager. So a loop that found nothing waits until it is
woken (the manager's Wake call or heartbeat reply says work is waiting, or a local event makes work
likely, such as a hold order for the drain loop), and otherwise backs off to a ceiling (twice the
heartbeat period, a safety net for a lost wake and reply).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from memstage.clock import SYSTEM_CLOCK, Clock


class Waker:
    def __init__(self, fast: float, ceiling: Callable[[], float], clock: Clock = SYSTEM_CLOCK) -> None:
        self.fast = fast
        self.clock = clock
        self._ceiling = ceiling
        self._wait = fast
        self._event = threading.Event()

    def wake(self) -> None:
        """Look again now."""
        self._event.set()

    def worked(self) -> None:
        """The last look found work: the next one comes at once, and backing off starts over."""
        self._wait = self.fast

    def pause(self, seconds: float) -> None:
        """Wait up to `seconds` after a failed look (the manager unreachable, or not knowing this
        benefactor yet), or less if woken: a wake means the manager answers again."""
        self.clock.wait(self._event, seconds)
        self._event.clear()

    def idle(self) -> float:
        """Wait before the next look (the loop found nothing). Returns the time waited at most."""
        wait = self._wait
        woken = self.clock.wait(self._event, wait)
        self._event.clear()
        self._wait = self.fast if woken else min(max(self._wait * 2, self.fast), max(self.fast, self._ceiling()))
        return wait
