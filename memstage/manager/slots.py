"""FairSlots: a counting semaphore that serves its waiters in order of arrival.

Commits wait for one of a few slots (see ManagerService.Commit). Python's Semaphore lets a thread
that just arrived take a slot freed before the longest waiter wakes up, so in a storm of commits
some wait many times longer than others: a long tail of commit latency for no gain. Here a freed
slot is handed to the first waiter directly.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType


class FairSlots:
    def __init__(self, slots: int) -> None:
        self._free = slots
        self._lock = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the release() that hands this waiter its slot

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()  # the slot passes on without being free in between
            else:
                self._free += 1

    def __enter__(self) -> FairSlots:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()

    @property
    def waiting(self) -> int:
        return len(self._waiters)
