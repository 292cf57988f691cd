"""A flag a signal handler sets and the main thread waits on.

Python runs a signal handler in the main thread between two bytecodes, possibly while that thread
holds a lock: threading.Event's own, inside Event.wait(). A handler that then calls Event.set()
waits for that lock forever, and Ctrl-C or SIGTERM hangs the process instead of stopping it. So
the flag is a plain attribute, set without a lock, and waiting polls it.
"""

from __future__ import annotations

import time

_POLL_S = 0.05  # how soon a wait sees the flag set


class SignalFlag:
    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True  # one store: safe in a handler, whatever the main thread holds

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Whether the flag is set, waiting up to `timeout` seconds for it."""
        end = time.monotonic() + timeout
        while not self._set:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_POLL_S, left))
        return True
