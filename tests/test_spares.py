"""Write sessions opened ahead for a mount's next file (memstage.client.spares), without sockets."""

from __future__ import annotations

import threading

from conftest import wait_for

from memstage.client.spares import SpareSession
from memstage.errors import QuotaExceeded
from memstage.proto import manager_pb2


class Manager:
    def __init__(self) -> None:
        self.opened: list[int] = []
        self.aborted: list[int] = []
        self.refuse = False
        self.lock = threading.Lock()

    def open(self) -> manager_pb2.SessionReply:
        with self.lock:
            if self.refuse:
                raise QuotaExceeded("quota_sessions")
            self.opened.append(len(self.opened) + 1)
            return manager_pb2.SessionReply(session=self.opened[-1], lease_seconds=30)


def test_each_take_gets_the_session_opened_ahead_and_orders_the_next():
    m, now = Manager(), [0.0]
    spares = SpareSession(m.open, m.aborted.append, clock=lambda: now[0])
    assert spares.take() is None  # none ahead yet: the writer opens its own
    wait_for(lambda: spares._spare is not None, what="a session opened ahead")
    assert spares.take().session == 1
    wait_for(lambda: spares._spare is not None, what="the next one")
    now[0] += 10.0  # a third of its lease old: the writer would have to renew it at once
    assert spares.take() is None and m.aborted == [2]
    wait_for(lambda: spares._spare is not None, what="a fresh one")
    spares.close()
    assert m.aborted == [2, 3] and spares.take() is None
    assert len(m.opened) == 3  # closed: nothing more is opened


def test_a_refused_session_leaves_the_writer_to_open_its_own():
    m = Manager()
    m.refuse = True
    spares = SpareSession(m.open, m.aborted.append)
    assert spares.take() is None
    wait_for(lambda: not spares._opening, what="the refused open")
    assert spares.take() is None and m.opened == []
