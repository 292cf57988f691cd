"""The flag `up`, the manager and the benefactor stop on: set from a signal handler while the main
thread waits on it. With threading.Event, a signal landing while the main thread held the Event's
lock (inside its own wait) made the handler wait for that lock forever: `memstage up` once ignored
SIGTERM for good that way. Socket-free: a child process waits in a loop while signals rain on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

CHILD = """
import signal, sys, time
from memstage.signalflag import SignalFlag
flag = SignalFlag()
signal.signal(signal.SIGUSR1, lambda *_: flag.set())
print("ready", flush=True)
end = time.monotonic() + 1.0
while time.monotonic() < end:  # the main thread spends its time waiting on the flag, as `up` does
    flag.wait(0.0001)
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the parent goes on signalling until this exits
print("set" if flag.is_set() else "never set", flush=True)
"""


def test_a_flag_set_by_signals_at_any_moment_never_hangs_its_waiter():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        sent = 0
        while child.poll() is None and time.monotonic() < deadline:
            os.kill(child.pid, signal.SIGUSR1)
            sent += 1
            time.sleep(0.0002)
        out, err = child.communicate(timeout=5)
        assert child.returncode == 0, err[-2000:]  # with threading.Event: hung, or died in the handler
        assert out.strip() == "set" and sent > 100
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
