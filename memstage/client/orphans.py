"""Files unlinked or replaced while open on a mount: when their versions leave the name.

libfuse keeps such a file usable for its openers by renaming it to a hidden name (.fuse_hiddenN,
in the same directory) and unlinking that at the last close. The mount never shows the hidden
name: the file's versions move aside at the manager (to a name of their own, `target`), so the
name is gone for everyone and the openers' chunks stay. When the file is only read on the mount,
the move waits a moment: if the hiding is the first half of a rename over the name (libfuse
renames the new file onto the name next, on the same thread), the name keeps its history (the
renamed file becomes its next version; readers keep the version they opened).

Orphans only decides. Events in (hide, due, settle, moved, drop), actions out (Move, Retarget,
Remove), time passed in: the FUSE layer makes the calls, tells what came of each Move, and wakes
it at next_due(). Not thread-safe: its caller holds one lock around every event.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass


class State(enum.Enum):
    PENDING = "pending"  # hidden; the move waits until due (a rename over the name may come first)
    MOVING = "moving"  # a Move was handed out, its outcome not told yet
    MOVED = "moved"  # the versions are at `target`
    GONE = "gone"  # nothing was moved (a new file nobody committed, or the move failed)
    KEPT = "kept"  # a rename over the name came first: the name keeps its versions


@dataclass(frozen=True)
class Move:
    """Move the versions of `name` to `target`, then tell moved(hidden, found)."""

    hidden: str
    name: str
    target: str


@dataclass(frozen=True)
class Retarget:
    """The writers still open on `hidden` commit to `path` from now on."""

    hidden: str
    path: str


@dataclass(frozen=True)
class Remove:
    """The last close of a moved file: its versions at `target` go."""

    target: str


Action = Move | Retarget | Remove


@dataclass
class _Orphan:
    name: str
    target: str
    state: State
    due: float | None = None  # when a PENDING move is made
    dropped: bool = False  # its last close came while it was moving


class Orphans:
    def __init__(self, prefix: str, delay: float = 0.2) -> None:
        self.prefix = prefix  # targets are prefix + a number, unique for this mount
        self.delay = delay
        self._seq = itertools.count(1)
        self._orphans: dict[str, _Orphan] = {}  # hidden name -> the file behind it
        self._hiding: dict[str, str] = {}  # a name whose hidden file may still move -> hidden name

    # -- queries -------------------------------------------------------------------------------
    def known(self, hidden: str) -> bool:
        return hidden in self._orphans

    def state(self, hidden: str) -> State | None:
        orphan = self._orphans.get(hidden)
        return None if orphan is None else orphan.state

    def hiding(self, name: str) -> bool:
        """`name` still holds the versions of a file hidden from it: it is not shown."""
        return name in self._hiding

    def hiding_in(self, directory: str) -> list[str]:
        """Names directly in `directory` that still hold the versions of a hidden file."""
        prefix = directory.rstrip("/") + "/"
        return [n for n in self._hiding if n.startswith(prefix) and "/" not in n[len(prefix):]]

    def settled(self, hidden: str) -> bool:
        """No move of `hidden` is waiting or under way."""
        return self.state(hidden) not in (State.PENDING, State.MOVING)

    def next_due(self) -> float | None:
        return min((o.due for o in self._orphans.values() if o.state is State.PENDING and o.due is not None),
                   default=None)

    # -- events --------------------------------------------------------------------------------
    def hide(self, name: str, hidden: str, writing: bool, now: float, closed: bool = False) -> list[Action]:
        """libfuse renamed `name`, open here, to `hidden`. A file written here moves at once: its
        writers must not commit a new version under a name that is gone. `closed`: its last close
        here came first (libfuse counted it open while the close was under way); libfuse may then
        never unlink the hidden name, so that close counts as its last."""
        orphan = _Orphan(name, f"{self.prefix}{next(self._seq)}", State.PENDING, now + self.delay, dropped=closed)
        self._orphans[hidden] = orphan
        self._hiding[name] = hidden
        return self._start(hidden) if writing else []

    def due(self, now: float) -> list[Action]:
        """Time passed: the moves whose wait is over."""
        actions: list[Action] = []
        for hidden, o in list(self._orphans.items()):
            if o.state is State.PENDING and o.due is not None and o.due <= now:
                actions += self._start(hidden)
        return actions

    def settle(self, name: str, replaced: bool = False) -> tuple[list[Action], str | None]:
        """`name` is about to be used again: a pending move of its hidden file is made now, or
        (replaced: the second half of a rename over it) called off. Returns the actions and the
        hidden name to wait for (until settled()), if any."""
        hidden = self._hiding.get(name)
        if hidden is None:
            return [], None
        orphan = self._orphans[hidden]
        if orphan.state is State.PENDING and replaced:
            orphan.state, orphan.due = State.KEPT, None
            del self._hiding[name]
            if orphan.dropped:  # closed already: nothing more comes of it
                del self._orphans[hidden]
            return [], None
        return self._start(hidden), hidden

    def moved(self, hidden: str, found: bool) -> list[Action]:
        """What came of a Move: found, the versions are at the target; not, nothing was there."""
        orphan = self._orphans[hidden]
        if orphan.state is not State.MOVING:
            raise ValueError(f"{hidden}: a move was told that was not asked ({orphan.state.value})")
        orphan.state = State.MOVED if found else State.GONE
        if self._hiding.get(orphan.name) == hidden:
            del self._hiding[orphan.name]
        actions: list[Action] = [Retarget(hidden, orphan.target if found else hidden)]
        if orphan.dropped:
            actions += self._forget(hidden)
        return actions

    def drop(self, hidden: str) -> list[Action]:
        """libfuse unlinks the hidden name at the last close: the file's versions go (once moved)."""
        orphan = self._orphans.get(hidden)
        if orphan is None or orphan.dropped:
            return []
        orphan.dropped = True
        if orphan.state is State.MOVING:
            return []  # moved() removes it
        if orphan.state is State.PENDING:
            return self._start(hidden)
        return self._forget(hidden)

    # -- inside --------------------------------------------------------------------------------
    def _start(self, hidden: str) -> list[Action]:
        orphan = self._orphans[hidden]
        if orphan.state is not State.PENDING:
            return []
        orphan.state, orphan.due = State.MOVING, None
        return [Move(hidden, orphan.name, orphan.target)]

    def _forget(self, hidden: str) -> list[Action]:
        orphan = self._orphans.pop(hidden)
        return [Remove(orphan.target)] if orphan.state is State.MOVED else []
