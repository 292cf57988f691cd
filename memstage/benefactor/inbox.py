"""Inbox: which of the manager's orders a benefactor carries out, and when it asks for more. Pure:
no I/O, no threads, no clock.

It keeps the epoch of the manager process whose orders it carries out and the number of the last
one carried out (acknowledged with the next fetch, or in a wake's reply). Orders come two ways:
fetched (the manager's answer, always of its current process: a new epoch starts the numbering
again) and pushed with a wake (carried out only in this epoch, or when none is known yet, and only
where they follow on from the last carried out). What it decides: which orders of a reply to carry
out (plan, then applied for each), whether to fetch now (after a push, or when told orders wait).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_PUSHED = 256  # orders the manager pushes with a wake at most (as many as one fetch gives)


@dataclass(slots=True)
class Inbox:
    epoch: int = 0  # of the manager process whose orders were carried out (0: none yet)
    acked: int = 0  # the number of the last one carried out
    max_pushed: int = MAX_PUSHED

    def plan(self, epoch: int, seqs: Sequence[int], pushed: bool) -> list[int]:
        """The positions in a reply (its orders numbered `seqs`, in `epoch`) of the orders to carry
        out, in sequence; call applied for each as it is done. Skipped: those done already (fetched
        again after a lost acknowledgement, or pushed and fetched), pushed ones of another manager
        process (a wake from one that has since stopped must not turn the numbering back), and
        pushed ones after a gap (one before them missing here: fetched in sequence)."""
        if epoch != self.epoch:
            if pushed and self.epoch:
                return []
            self.epoch, self.acked = epoch, 0  # a restarted manager numbers its orders from 1 again
        out = []
        expected = self.acked
        for at, seq in enumerate(seqs):
            if seq <= expected:
                continue
            if pushed and seq != expected + 1:
                break
            out.append(at)
            expected = seq
        return out

    def applied(self, seq: int) -> None:
        """The order numbered `seq` (of the current epoch) was carried out."""
        self.acked = seq

    def ack(self) -> tuple[int, int]:
        """(epoch, last carried out): the acknowledgement of a fetch or a wake's reply."""
        return self.epoch, self.acked

    def fetch_after_push(self, seqs: Sequence[int], busy: bool) -> bool:
        """After a push: whether to fetch now, for what was not carried out (an order before these
        missing, or another manager process's), what may follow a full batch, or to report the
        result of work still under way (busy)."""
        return (bool(seqs) and self.acked < seqs[-1]) or len(seqs) >= self.max_pushed or busy

    def fetch_when_told(self, epoch: int, last: int) -> bool:
        """Told that orders wait, the last numbered `last` by manager process `epoch` (0: not
        said): fetch, unless that order was carried out here already (its acknowledgement is on its
        way; should it be lost, the idle loop's next look acknowledges it)."""
        return not (bool(last) and epoch == self.epoch and last <= self.acked)
