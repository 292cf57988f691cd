"""Starting memstage roles as child processes and stopping them by PID.

Used by `memstage up`, the benchmark and the tests. A role prints one line on stdout when it
serves ("memstage <role> <id> ready on HOST:PORT"); everything else it says goes to stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO

from memstage.errors import MemstageError

_READY = re.compile(r"^memstage (\w+) (\S+) ready on (\S+)$")


def children(pid: int) -> list[int]:
    """The PIDs of the processes a process started (Linux: from /proc), e.g. a manager's heartbeat
    process."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def start_helper(module: str) -> tuple[subprocess.Popen[bytes], Connection]:
    """A helper process (`python -m module FD`) and the manager's end of the socket pair it is
    given as FD: the helper exits when it reads EOF there, so it never outlives its parent."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", module, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                            stdin=subprocess.DEVNULL)
    theirs.close()
    return proc, Connection(ours.detach())


def ready_line(role: str, ident: str, address: str) -> str:
    return f"memstage {role} {ident} ready on {address}"


@dataclass
class RoleProcess:
    role: str
    id: str
    address: str
    proc: subprocess.Popen[str]
    terminated: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the fault tests' way of losing a process."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM without waiting, once (a second one means "stop now" to a role)."""
        if self.alive() and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.alive():
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn(role: str, args: list[str], *, env: dict[str, str] | None = None, stderr: IO[str] | int | None = None,
          timeout: float = 30.0) -> RoleProcess:
    """Start `memstage <role> ARGS` and wait for its ready line."""
    cmd = [sys.executable, "-m", "memstage", role, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    # The role prints its ready line, or exits (EOF) with its error on stderr; a hang hits the deadline.
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if readable else ""
    m = _READY.match(line)
    if not m:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        why = f"exit code {proc.returncode}" if line or readable else f"no ready line within {timeout:g}s"
        raise MemstageError(f"memstage {role} did not start ({why}; see its messages above)")
    proc.stdout.close()
    return RoleProcess(role, m.group(2), m.group(3), proc)
