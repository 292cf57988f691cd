"""A checkpoint storm at the manager: many writers committing at once must neither starve liveness
(benefactors declared dead although they heartbeat) nor lose a commit that was acknowledged."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading

import pytest
from conftest import MiB, random_bytes, wait_for

pytestmark = pytest.mark.timeout(240)


def test_a_commit_storm_does_not_delay_liveness(tmp_path):
    """The manager's own load generator (a real manager process): 400 simulated benefactors
    heartbeat every second (dead after 3 s of silence) while 64 writers commit 150 files of 256
    chunks as fast as they can. Every benefactor stays alive and every commit succeeds."""
    out = subprocess.run([sys.executable, "-m", "memstage", "bench", "--manager", "--sim-benefactors", "400",
                          "--sim-heartbeat", "1", "--commits", "150", "--committers", "64", "--chunks", "256",
                          "--dir", str(tmp_path), "--json"], capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["false_deaths"] == 0 and r["heartbeats_failed"] == 0, r
    assert r["commits_done"] == 150 and r["commits_failed"] == 0, r["commit_error_examples"]
    assert r["maps_distinct_benefactors"] >= 350  # 150 maps of 4: concurrent writers spread over the pool
    assert r["wakes"] >= 100, r  # the manager woke the benefactors its commits gave orders
    assert 0 < r["storm_machine_busy"] <= 1, r  # how busy the whole machine was: the figures' bound


@pytest.mark.parametrize("sync", ["0s", "1s"])
def test_a_manager_killed_during_a_storm_keeps_every_acknowledged_commit(local_cluster, sync):
    """Commits are made durable in groups (one fsync for many), and acknowledged only after theirs
    (with --sync-interval, once written: a crash of the manager cannot lose them): whatever a
    writer was told committed is there after a SIGKILL and a restart."""
    cluster = local_cluster(benefactors=2, memory=256 * MiB, manager_args=("--sync-interval", sync))
    c = cluster.client(chunk_size="64KiB")
    acked: dict[str, tuple[int, str]] = {}  # path -> (version, sha256) of the last acknowledged commit
    stop = threading.Event()
    lock = threading.Lock()

    def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            path = f"/w{w}/f{n % 5}"
            data = random_bytes(256 * 1024)
            try:
                with c.open(path, "wb") as f:
                    f.write(data)
            except Exception:  # the manager is gone: this writer is done
                return
            with lock:
                acked[path] = (f.result.version, hashlib.sha256(data).hexdigest())
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 40, timeout=60, what="the storm to get going")
    cluster.manager.kill()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    with lock:
        expected = dict(acked)
    cluster.start_manager(cluster.manager_address)
    wait_for(lambda: len(cluster.alive_ids()) == 2, timeout=30, what="the benefactors to register again")
    c2 = cluster.client(chunk_size="64KiB")
    for path, (version, digest) in expected.items():
        versions = [v["version"] for v in c2.versions(path)]
        assert max(versions) >= version, f"{path}: version {version} was acknowledged, the manager has {versions}"
        if max(versions) == version:
            assert hashlib.sha256(c2.cat(path)).hexdigest() == digest


def test_commit_slots_are_handed_out_in_order_of_arrival():
    """Socket-free: a freed slot goes to the longest waiter, never to a thread that arrives later
    (Python's Semaphore lets late arrivals take it, which gave a storm's commits a long tail)."""
    from memstage.manager.slots import FairSlots

    slots = FairSlots(1)
    slots.acquire()
    served: list[int] = []

    def commit(i: int) -> None:
        with slots:
            served.append(i)

    threads = []
    for i in range(6):
        t = threading.Thread(target=commit, args=(i,))
        t.start()
        threads.append(t)
        wait_for(lambda n=i + 1: slots.waiting == n, timeout=5, what=f"waiter {i} in line")
    slots.release()
    for t in threads:
        t.join(timeout=5)
    assert served == list(range(6))
    with slots:  # all given back: free again, no waiter
        assert slots.waiting == 0
