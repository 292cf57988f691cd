"""The manual clock tests time with: waits end when it is advanced past them, or when their
event is set, and never because real time passed."""

from __future__ import annotations

import threading

import pytest
from conftest import wait_for

from memstage.benefactor.waker import Waker
from memstage.clock import SYSTEM_CLOCK, ManualClock

pytestmark = pytest.mark.timeout(60)


def _waiting(clock: ManualClock, event: threading.Event, timeout: float) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(clock.wait(event, timeout)), daemon=True)
    t.start()
    wait_for(lambda: clock._waiting, what="the waiter to wait")
    return t, result


def test_a_wait_ends_when_the_clock_passes_its_deadline_and_not_before():
    clock = ManualClock()
    t, result = _waiting(clock, threading.Event(), 5.0)
    clock.advance(4.9)
    clock.settle()
    assert t.is_alive() and not result, "ended before its deadline"
    clock.advance(0.1)
    t.join(timeout=10)
    assert result == [False]
    assert clock.now() == pytest.approx(1005.0)


def test_a_set_event_ends_the_wait_without_time_passing():
    clock = ManualClock()
    event = threading.Event()
    t, result = _waiting(clock, event, 60.0)
    event.set()
    t.join(timeout=10)
    assert result == [True]
    assert clock.now() == 1000.0


def test_settle_waits_for_the_woken_thread_to_wait_again():
    clock = ManualClock()
    stop, rounds = threading.Event(), []
    go_on = threading.Event()

    def loop() -> None:
        while not clock.wait(stop, 1.0):
            go_on.wait(10)  # its work after the wait (held back below)
            rounds.append(clock.now())

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    wait_for(lambda: clock._waiting, what="the loop to wait")
    clock.advance(1.0)
    threading.Timer(0.2, go_on.set).start()
    clock.settle()
    assert rounds == [1001.0]
    stop.set()
    t.join(timeout=10)


def test_an_idle_waker_backs_off_to_its_ceiling_on_a_manual_clock():
    clock = ManualClock()
    waker = Waker(0.2, lambda: 4.0, clock)
    waits: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            waits.append(waker.idle())

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        wait_for(lambda: clock._waiting, what="the loop to wait")
        for _ in range(150):  # 15 s: 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 4 + 4 = 14.2
            clock.advance(0.1)
            clock.settle()
        assert waits[:7] == [0.2, 0.4, 0.8, 1.6, 3.2, 4.0, 4.0]
        looks = len(waits)
        waker.wake()  # a wake ends the wait at once, and the next starts over
        wait_for(lambda: len(waits) > looks, what="the woken loop to look")
        clock.settle()
        clock.advance(0.2)
        clock.settle()
        assert waits[looks + 1:] == [0.2]
    finally:
        stop.set()
        waker.wake()
        t.join(timeout=10)


def test_the_system_clock_waits_in_real_time():
    event = threading.Event()
    event.set()
    assert SYSTEM_CLOCK.wait(event, 5.0)
    assert not SYSTEM_CLOCK.wait(threading.Event(), 0.01)
