"""A write session opened ahead: a mount that writes many small files gets each one's session (and
first striping map) without waiting for the manager, while the next one is opened in the
background. The manager does not tie a session to a path (the commit names it), so a session
opened before the file's name is known serves any file of the namespace.

A spare is used only while it is young (a third of its lease: the writer renews it from then
on, as it renews its own); an older one is aborted and the writer opens its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from memstage.errors import MemstageError
from memstage.proto import manager_pb2

log = logging.getLogger(__name__)


class SpareSession:
    def __init__(self, open_session: Callable[[], manager_pb2.SessionReply],
                 abort: Callable[[int], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._open = open_session
        self._abort = abort
        self._clock = clock
        self._lock = threading.Lock()
        self._spare: tuple[manager_pb2.SessionReply, float] | None = None
        self._opening = False
        self._closed = False
        # One thread, kept: starting a thread per file cost more than the round trip it hides.
        self._opener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spare-session")

    def take(self) -> manager_pb2.SessionReply | None:
        """A session opened ahead (None: none ready; open one yourself). Another is opened meanwhile."""
        with self._lock:
            spare, self._spare = self._spare, None
        self._refill()
        if spare is None:
            return None
        reply, opened_at = spare
        if self._clock() - opened_at < reply.lease_seconds / 3:
            return reply
        self._abort_quietly(reply.session)
        return None

    def _refill(self) -> None:
        with self._lock:
            if self._opening or self._spare is not None or self._closed:
                return
            self._opening = True
        try:
            self._opener.submit(self._open_one)
        except RuntimeError:  # closed meanwhile
            with self._lock:
                self._opening = False

    def _open_one(self) -> None:
        reply = None
        try:
            reply = self._open()
        except MemstageError as e:  # a full deployment, a quota of sessions: the writer opens its own
            log.debug("no session opened ahead: %s", e)
        with self._lock:
            self._opening = False
            if reply is not None and not self._closed:
                self._spare, reply = (reply, self._clock()), None
        if reply is not None:  # closed meanwhile
            self._abort_quietly(reply.session)

    def _abort_quietly(self, session: int) -> None:
        try:
            self._abort(session)
        except MemstageError as e:
            log.debug("session %d opened ahead not aborted (its lease ends it): %s", session, e)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        self._opener.shutdown(wait=False)
        if spare is not None:
            self._abort_quietly(spare[0].session)
