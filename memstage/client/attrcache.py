"""What a mount caches of the namespace: attributes by path, names known absent, and which directories
it has listed whole. No sockets, no threads: the mount feeds it and asks it (see memstage.client.watch
for the lease that keeps it right, and memstage.manager.watchers for the manager's side).

The cache answers only while the lease holds: until half a lease after the last ping the manager
answered (the manager answers a ping behind every change it sent before it, so a mount that
missed a change cannot renew its lease without applying it first). A change made here or
reported by the manager drops the path, everything below it and its parent's listing, and moves
the epoch on: an answer fetched from the manager before a change is not kept after it.

It also remembers, whether or not the lease holds, which paths the kernel was given attributes
for, by inode number: a change to a file must reach the kernel's copy under each of its names
(the kernel keeps one per name here).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from memstage.client.filestat import FileStat

ABSENT = None  # get(): the name does not exist


@dataclass(frozen=True)
class Miss:
    """get(): not known here; fetch it and put() it with this epoch."""

    epoch: int


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class AttrCache:
    def __init__(self, max_entries: int = 200_000) -> None:
        self.epoch = 0
        self._valid_until = float("-inf")
        self._pings: dict[int, float] = {}
        self._entries: dict[str, FileStat | None] = {}
        self._listed: dict[str, set[str]] = {}  # directory -> names in it, when listed whole
        self._max = max_entries
        self._kernel: dict[int, set[str]] = {}  # inode number -> paths whose attributes the kernel got
        self._kernel_ino: dict[str, int] = {}
        self._kids: dict[str, set[str]] = {}  # directory -> paths below it known to any map above

    def _index(self, path: str) -> None:
        while path != "/":
            parent = parent_of(path)
            kids = self._kids.setdefault(parent, set())
            if path in kids:
                return
            kids.add(path)
            path = parent

    def _tree(self, path: str) -> list[str]:
        """`path` and every path below it that any map knows (the index is pruned on the way)."""
        out, todo = [], [path]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(self._kids.pop(p, ()))
        if path != "/":
            self._kids.get(parent_of(path), set()).discard(path)
        return out

    # -- the lease ---------------------------------------------------------------------------------
    def ping_sent(self, ping: int, now: float) -> None:
        self._pings[ping] = now
        for old in [p for p in self._pings if p < ping - 64]:
            del self._pings[old]

    def pong(self, ping: int, lease: float) -> None:
        sent = self._pings.pop(ping, None)
        if sent is not None:
            self._valid_until = max(self._valid_until, sent + lease / 2)

    def valid(self, now: float) -> bool:
        return now < self._valid_until

    def lost(self) -> list[str]:
        """The watch ended (or the manager forgot this mount): nothing cached may be trusted.
        Returns every name the kernel was given attributes for (they must go too)."""
        self._valid_until = float("-inf")
        self._pings.clear()
        self.clear()
        told = sorted(self._kernel_ino)
        self._kernel.clear()
        self._kernel_ino.clear()
        self._kids.clear()
        return told

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()
        self._listed.clear()

    # -- entries -----------------------------------------------------------------------------------
    def get(self, path: str, now: float) -> FileStat | None | Miss:
        if not self.valid(now):
            return Miss(self.epoch)
        if path in self._entries:
            return self._entries[path]
        names = self._listed.get(parent_of(path))
        if names is not None and path != "/" and path.rsplit("/", 1)[1] not in names:
            return ABSENT
        return Miss(self.epoch)

    def put(self, path: str, info: FileStat | None, epoch: int, now: float) -> bool:
        """Keep what the manager said of `path` (None: absent) if nothing changed since `epoch`."""
        if epoch != self.epoch or not self.valid(now):
            return False
        if len(self._entries) >= self._max:
            self.clear()  # crude, and rare: a mount that looked at more names than this starts over
            return False
        self._entries[path] = info
        self._index(path)
        names = self._listed.get(parent_of(path))
        if names is not None and path != "/":
            name = path.rsplit("/", 1)[1]
            if info is None:
                names.discard(name)
            else:
                names.add(name)
        return True

    def put_listing(self, directory: str, entries: Iterable[tuple[str, FileStat]], epoch: int, now: float) -> bool:
        """A whole listing of `directory`: (path, attributes) of every name in it."""
        if epoch != self.epoch or not self.valid(now):
            return False
        entries = list(entries)
        if len(self._entries) + len(entries) >= self._max:
            self.clear()
            return False
        names = set()
        for path, info in entries:
            self._entries[path] = info
            self._index(path)
            names.add(path.rsplit("/", 1)[1])
        self._listed[directory] = names
        return True

    def changed_here(self, paths: list[str], gone: Iterable[str] = ()) -> list[str]:
        """This mount changed `paths` and knows what became of them: each exists now, except
        `gone`. Listings of their parents stay right (see changed())."""
        gone = set(gone)
        told = self.changed(paths, listings=False)
        for path in paths:
            names = self._listed.get(parent_of(path))
            if names is None or path == "/":
                continue
            if path in gone:
                names.discard(path.rsplit("/", 1)[1])
                self._entries[path] = ABSENT
                self._index(path)
            else:
                names.add(path.rsplit("/", 1)[1])
        return told

    def changed(self, paths: Iterable[str], listings: bool = True) -> list[str]:
        """Paths changed (here or elsewhere): each, what is below it, and (with `listings`) its
        parent's listing are dropped. Returns the names the kernel holds attributes under that
        must be told: those paths and what is below them, their parents, and every other name
        of the same files."""
        self.epoch += 1
        tell: set[str] = set()
        for path in paths:
            for p in self._tree(path):
                self._entries.pop(p, None)
                self._listed.pop(p, None)
                ino = self._kernel_ino.get(p)
                if ino is not None:
                    tell.add(p)
                    tell |= self._kernel.get(ino, set())
            if listings:
                self._listed.pop(parent_of(path), None)
            self._entries.pop(parent_of(path), None)
            tell.add(parent_of(path))
        for path in tell:
            self._entries.pop(path, None)  # another name of a changed file
            self.forget_kernel(path)  # the kernel asks again, and is told again
        return sorted(tell)

    # -- what the kernel was told ------------------------------------------------------------------
    def told_kernel(self, path: str, ino: int) -> None:
        old = self._kernel_ino.get(path)
        if old == ino:
            return
        if old is not None:
            self._kernel.get(old, set()).discard(path)
        self._kernel_ino[path] = ino
        self._kernel.setdefault(ino, set()).add(path)
        self._index(path)

    def other_names(self, path: str, ino: int | None = None) -> list[str]:
        """Names (besides `path`) the kernel holds attributes of the file `path` names under."""
        ino = ino if ino is not None else self._kernel_ino.get(path)
        if ino is None:
            return []
        return sorted(p for p in self._kernel.get(ino, set()) if p != path)

    def forget_kernel(self, path: str) -> None:
        ino = self._kernel_ino.pop(path, None)
        if ino is not None:
            names = self._kernel.get(ino)
            if names is not None:
                names.discard(path)
                if not names:
                    del self._kernel[ino]
