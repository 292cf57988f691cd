"""Receipt checks of large commits in helper processes.

A commit of a 1 GiB file carries a thousand receipts, and checking them (one keyed hash each) is
the largest single part of the commit's work in the manager's interpreter: in a storm of commits,
one core's worth of Python does everything else too. Checked in a helper process, they take the
manager's interpreter only the time to send them, and run on another core while commits go on.

The helpers (`python -m memstage.manager.verifier FD`) are started when first needed, each
serving one check at a time over a socket pair, and exit when the manager closes its end (or
dies). A helper that is gone costs nothing but its speed: the caller is told to check in process
(`None`), and a new one is started for a later commit.
"""

from __future__ import annotations

import hmac
import logging
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from memstage import receipts
from memstage.chunks import PACKED_KEY
from memstage.procs import start_helper

log = logging.getLogger(__name__)

MIN_RECEIPTS = 128  # fewer are checked in the manager (sending them would cost about as much)
RETRY_AFTER = 30.0  # seconds before starting helpers again after one could not be started


def default_workers() -> int:
    """One helper per core beyond the manager's own, up to four; none on a single core."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def receipts_valid(session: int, namespace: str, keys: bytes, where: bytes, table: list[bytes],
                   given: bytes) -> bool:
    """Whether `given` holds, for each packed key j (one location each), the receipt of that chunk
    under table[where[j]] (receipts.expected_packed)."""
    n = len(keys) // PACKED_KEY.size
    if len(where) != 4 * n or len(given) != 16 * n or not all(table):
        return False
    owners = struct.unpack(f">{n}I", where)
    if owners and max(owners) >= len(table):
        return False
    return hmac.compare_digest(receipts.expected_packed(session, namespace, keys, owners, table), given)


class _Helper:
    def __init__(self) -> None:
        self.proc, self.conn = start_helper("memstage.manager.verifier")

    def close(self) -> None:
        self.conn.close()  # the helper exits when it reads EOF
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ReceiptCheckers:
    """Up to `workers` helpers, each checking one commit's receipts at a time."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._idle: queue.SimpleQueue[_Helper] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started: list[_Helper] = []
        self._closed = False
        self._failed_at = -RETRY_AFTER

    def check(self, session: int, namespace: str, keys: bytes, where: bytes, table: list[bytes],
              given: bytes) -> bool | None:
        """receipts_valid, worked out by a helper; None when none can (check in process)."""
        if len(keys) < MIN_RECEIPTS * PACKED_KEY.size:
            return None
        helper = self._take()
        if helper is None:
            return None
        try:
            helper.conn.send((session, namespace, keys, where, table, given))
            valid = bool(helper.conn.recv())
        except (EOFError, OSError) as e:
            log.warning("receipt checker (pid %d) is gone (%s): checking in the manager until another starts",
                        helper.proc.pid, e)
            self._drop(helper)
            return None
        self._idle.put(helper)
        return valid

    def _take(self) -> _Helper | None:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                return None
            if len(self._started) < self._workers and time.monotonic() - self._failed_at >= RETRY_AFTER:
                try:
                    helper = _Helper()
                except OSError as e:
                    self._failed_at = time.monotonic()
                    log.warning("could not start a receipt checker (%s): receipts are checked in the manager", e)
                    return None
                self._started.append(helper)
                return helper
            if not self._started:
                return None
        try:
            return self._idle.get(timeout=1.0)  # all busy: one is free within a check's time
        except queue.Empty:
            return None  # (or the busy ones died meanwhile)

    def _drop(self, helper: _Helper) -> None:
        with self._lock:
            if helper in self._started:
                self._started.remove(helper)
        helper.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            started, self._started = self._started, []
        for helper in started:
            helper.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the manager, which closes this helper
    conn = Connection(int(argv[0]))
    try:
        while True:
            conn.send(receipts_valid(*conn.recv()))
    except (EOFError, OSError):
        return 0  # the manager closed its end, or died


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
