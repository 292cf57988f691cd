"""BeatLink: the manager's end of its heartbeat process (see beatproc).

Starts the process, tells it what it must know (incarnations registered at their addresses or
gone, the period, and flags of work waiting: it wakes the benefactors they name), hands the beats
it answered (and the orders acknowledged in replies to its wakes) to the manager, and starts it
again on the same port if it dies (meanwhile benefactors beat to the manager's own port). Callers
never block on the process: what they tell it is queued and sent by the link's thread, which also
applies the beats.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from memstage.errors import SettingError
from memstage.manager.wakes import Ack, Flags
from memstage.procs import start_helper
from memstage.tls import Tls

log = logging.getLogger(__name__)

TICK = 0.05  # flags and registrations reach the process this often
READY_TIMEOUT = 30.0
RESTART_PAUSE = 1.0

# What the manager supplies: beats to apply, then (after them) flags of work waiting changed since
# the last call, and on a (re)start everything the process must know.
OnBeats = Callable[[list[tuple[Any, ...]]], None]
FlagsSource = Callable[[], list[Flags]]
# Orders benefactors acknowledged in their replies to wakes, with the wakes sent and failed.
OnAcks = Callable[[list[Ack], int, int], None]
Snapshot = Callable[[], tuple[float, list[tuple[str, int, str, bytes]], list[Flags]]]


class BeatLink:
    def __init__(self, listen: str, tls: Tls, secret: str, log_level: str, on_beats: OnBeats, flags: FlagsSource,
                 snapshot: Snapshot, on_acks: OnAcks = lambda acks, sent, failed: None, epoch: int = 0) -> None:
        self._listen = listen
        # epoch: the manager process's, by which heartbeat replies name the orders waiting.
        self._config = {"listen": listen, "tls": tls, "secret": secret, "log_level": log_level.upper(),
                        "epoch": epoch}
        self._on_beats = on_beats
        self._on_acks = on_acks
        self._flags = flags
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Any]] = []
        self._interval = 0.0
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self.port = 0  # 0 until the process listens (and while it is down)
        self.last_pass = time.monotonic()  # when the link's thread last went round (a stalled one defers deaths)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle ---------------------------------------------------------------------------------
    def launch(self) -> None:
        """Start the process (it comes up while the manager opens its state; see wait_ready)."""
        self._proc, self._conn = start_helper("memstage.manager.beatproc")
        self._conn.send(self._config)

    def wait_ready(self) -> None:
        """Wait for the process to listen; SettingError if it cannot (the port is taken, ...)."""
        assert self._conn is not None
        try:
            if not self._conn.poll(READY_TIMEOUT):
                raise SettingError(f"--heartbeat-listen: the heartbeat process did not start within "
                                   f"{READY_TIMEOUT:.0f}s")
            kind, body = self._conn.recv()
        except (EOFError, OSError):
            raise SettingError("--heartbeat-listen: the heartbeat process exited as it started (see its log "
                               "above)") from None
        if kind != "ready":
            self._reap()
            raise SettingError(body)
        self.port = body
        log.info("heartbeat process (pid %s) answering on port %d", self.pid, body)
        if self._listen.rpartition(":")[2] == "0":
            self._listen = f"{self._listen.rpartition(':')[0]}:{body}"  # a restart takes the same port
            self._config["listen"] = self._listen
        self._resend()

    def start(self) -> None:
        """Run the link; if wait_ready was not called, the process is waited for on the link's thread
        (its port is told to benefactors once it listens; until then they beat to the manager's)."""
        self._thread = threading.Thread(target=self._run, name="heartbeat-link", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._reap()

    def _reap(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the process exits when its end reads EOF
            self._conn = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self.port = 0

    # -- what the process must know (never blocks the caller) ---------------------------------------
    def known(self, benefactor: str, incarnation: int, address: str, key: bytes) -> None:
        with self._lock:
            self._pending.append(("known", [(benefactor, incarnation, address, key)]))

    def gone(self, benefactors: list[str]) -> None:
        if benefactors:
            with self._lock:
                self._pending.append(("gone", benefactors))

    def interval(self, seconds: float) -> None:
        if seconds != self._interval:
            with self._lock:
                self._interval = seconds
                self._pending.append(("interval", seconds))

    def _resend(self) -> None:
        """Everything the process must know, after a (re)start. What is queued before the snapshot is
        in it; what is queued after goes after it."""
        with self._lock:
            self._pending.clear()
        interval, known, flags = self._snapshot()
        with self._lock:
            self._interval = interval
            self._pending[:0] = [("interval", interval), ("known", known), ("flags", flags)]

    # -- the link's thread ------------------------------------------------------------------------
    def _run(self) -> None:
        if not self.port:  # started without waiting (see start): it comes up while the manager serves
            try:
                self.wait_ready()
            except SettingError as e:
                self._reap()
                log.error("the heartbeat process did not start (%s); benefactors beat to the manager's port", e)
                self._relaunch()
        next_tick = 0.0
        while not self._stop.is_set():
            self.last_pass = time.monotonic()
            conn = self._conn
            try:
                if conn is None:
                    raise EOFError
                if conn.poll(TICK):
                    kind, body = conn.recv()
                    if kind == "beats":
                        self._on_beats(body)
                    elif kind == "acks":
                        self._on_acks(*body)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK
                    self._send(conn)
            except (EOFError, OSError):
                if self._stop.is_set():
                    break
                self._restart()
            except Exception:  # a bug must not end the link: beats would go unapplied
                log.exception("heartbeat link failed")

    def _send(self, conn: Connection) -> None:
        flags = self._flags()
        with self._lock:
            pending, self._pending = self._pending, []
        merged: list[tuple[str, Any]] = []
        for kind, body in pending:  # one message for a run of one kind (100,000 registrations at a start)
            if merged and merged[-1][0] == kind and kind != "interval":
                merged[-1][1].extend(body)
            else:
                merged.append((kind, list(body) if kind != "interval" else body))
        for message in merged:
            conn.send(message)
        if flags:
            conn.send(("flags", flags))

    def _restart(self) -> None:
        code = self._proc.poll() if self._proc is not None else None
        self._reap()
        log.error("the heartbeat process exited (%s); benefactors beat to the manager's port until it is back",
                  f"code {code}" if code is not None else "its link broke")
        self._relaunch()

    def _relaunch(self) -> None:
        while not self._stop.wait(RESTART_PAUSE):
            self.last_pass = time.monotonic()  # nothing waits to be applied: its beats went with it
            try:
                self.launch()
                self.wait_ready()
            except SettingError as e:
                self._reap()
                log.error("the heartbeat process could not start again: %s; retrying", e)
                continue
            log.warning("heartbeat process running again on port %d", self.port)
            return

