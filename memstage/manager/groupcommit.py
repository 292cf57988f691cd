"""GroupCommit: commits that arrive together are recorded in one transaction and one fsync.

In a storm of commits, each recorded in a transaction of its own, the catalog's lock passed from
thread to thread a thousand times a second, and every hand-over waited for the interpreter: the
lock was held several times as long as its work took. Here the first caller to arrive leads: it
takes every commit queued (up to `max_group`), records them in one call (one transaction, in order
of arrival), makes them durable, and hands each caller its outcome; the first caller left waiting
leads the next group. No thread of its own: nothing to start or stop. A caller is answered only
after the fsync that covers its commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_GROUP = 64


class NotDurable(Exception):
    """A commit was recorded, but making it durable failed: its result is here, with the error. The
    caller must not report it committed, yet what the record changed (holds to order) stands."""

    def __init__(self, result: object, cause: BaseException) -> None:
        super().__init__(f"recorded but not made durable: {cause}")
        self.result = result
        self.cause = cause


class _Waiter(Generic[Item, Result]):
    __slots__ = ("item", "outcome", "done", "lead")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.outcome: Result | BaseException | None = None
        self.done = threading.Event()  # set with its outcome, or to make it lead
        self.lead = False


class GroupCommit(Generic[Item, Result]):
    def __init__(self, record: Callable[[Sequence[Item]], Sequence[Result | BaseException]],
                 make_durable: Callable[[], None], max_group: int = MAX_GROUP) -> None:
        """record(items) -> one outcome per item (its result, or the exception it raises);
        make_durable() is called after it, in the same thread, before anyone is answered."""
        self._record = record
        self._durable = make_durable
        self._max = max_group
        self._lock = threading.Lock()
        self._queue: list[_Waiter[Item, Result]] = []
        self._leading = False

    def submit(self, item: Item) -> Result:
        """Record `item` with whatever else is waiting; returns its result or raises its exception."""
        me: _Waiter[Item, Result] = _Waiter(item)
        with self._lock:
            self._queue.append(me)
            if not self._leading:
                self._leading = me.lead = True
        if not me.lead:
            me.done.wait()
        if me.lead:  # first to arrive, or handed the lead: this caller's commit is in the group it takes
            self._lead()
        outcome = me.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]

    def _lead(self) -> None:
        with self._lock:
            group, self._queue = self._queue[:self._max], self._queue[self._max:]
        outcomes: Sequence[Result | BaseException]
        try:
            outcomes = self._record([w.item for w in group])
            if len(outcomes) != len(group):
                raise AssertionError(f"group commit: {len(outcomes)} outcomes for {len(group)} commits")
        except BaseException as e:  # nothing of the group was recorded
            outcomes = [e] * len(group)
        else:
            try:
                self._durable()
            except BaseException as e:  # recorded, but none of it is known to be durable
                outcomes = [o if isinstance(o, BaseException) else NotDurable(o, e) for o in outcomes]
        with self._lock:
            if self._queue:  # those who came meanwhile: the first of them leads their group
                nxt = self._queue[0]
                nxt.lead = True
                nxt.done.set()
            else:
                self._leading = False
        for waiter, outcome in zip(group, outcomes, strict=True):
            waiter.outcome = outcome
            if not waiter.lead:
                waiter.done.set()
