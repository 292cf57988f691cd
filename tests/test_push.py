"""Work is pushed to benefactors, not polled for: an idle benefactor makes no calls beyond its
heartbeats, and a commit is still drained at once (the hold order wakes the drain loop)."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request

import pytest
from conftest import MiB, random_bytes, wait_for

from memstage.benefactor.waker import Waker

pytestmark = pytest.mark.timeout(120)


def test_an_idle_loop_backs_off_to_its_ceiling_and_a_wake_ends_the_wait():
    waker = Waker(0.01, lambda: 0.04)
    waits = [waker.idle() for _ in range(5)]
    assert waits == [0.01, 0.02, 0.04, 0.04, 0.04]
    assert waker.idle(busy=True) == 0.01  # writes open here: quick looks
    waker.worked()
    assert waker.idle() == 0.01
    waker = Waker(0.01, lambda: 30.0)
    for _ in range(4):
        waker.idle()  # backed off to 0.16 s
    threading.Timer(0.02, waker.wake).start()
    started = time.monotonic()
    waker.idle()
    assert time.monotonic() - started < 0.15, "a wake ends the wait"
    assert waker.idle() == 0.01, "woken: the next wait starts over"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_idle_benefactor_does_not_poll_and_a_commit_still_drains_at_once(local_cluster):
    port = _free_port()
    cluster = local_cluster(benefactors=1, heartbeat=2.0, manager_args=("--metrics-port", str(port)))

    def polls() -> int:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        found = re.findall(r'memstage_rpc_calls_total\{method="(?:Orders|DrainWork)"\} (\S+)', text)
        return int(sum(float(v) for v in found))

    client = cluster.client()
    client.pipe("/warm", random_bytes(MiB))  # the loops have worked once, then go idle
    wait_for(lambda: client.versions("/warm")[0]["persisted"], timeout=10, what="the first drain")
    time.sleep(5)  # backing off to the ceiling (twice the 2 s heartbeat)
    before = polls()
    time.sleep(4)
    idle_calls = polls() - before
    # Polling every 0.2 s, the two loops made about 40 calls in 4 s.
    assert idle_calls <= 6, f"an idle benefactor made {idle_calls} order and drain calls in 4 s"

    started = time.monotonic()
    client.pipe("/ckpt", random_bytes(2 * MiB))
    wait_for(lambda: client.versions("/ckpt")[0]["persisted"], timeout=10, what="the drain of /ckpt")
    took = time.monotonic() - started
    assert took < 1.9, f"drained {took:.1f}s after the write began: it waited for a heartbeat (2 s)"
