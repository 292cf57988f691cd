"""Order delivery, manager to benefactor, without sockets: the manager's Delivery and the
benefactor's Inbox, alone and together under random sequences of events (model-based) in which
wakes, heartbeat hints, fetches and their replies are lost, late or out of order, and the manager
or the benefactor restarts."""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memstage.benefactor.inbox import Inbox
from memstage.manager.delivery import Delivery, Hint, Notice
from memstage.manager.wakes import Wake, merge, wake_of

BF = "bf"


class Order(NamedTuple):
    epoch: int
    seq: int
    uid: int  # which push made it


def _numbered(seq: int) -> int:
    return seq


# -- the manager's side ----------------------------------------------------------------------------
def test_orders_are_numbered_per_benefactor_and_stay_until_acknowledged_in_this_epoch():
    d: Delivery[int] = Delivery(epoch=7, batch=2)
    for _ in range(3):
        d.queue(BF, _numbered)
    d.queue("other", _numbered)
    assert d.batch(BF) == [1, 2] and d.hint(BF) == Hint(3, 7, 3)
    assert d.fetch(BF, 7, 0) == [1, 2], "a lost reply: the same again"
    assert not d.ack(BF, 6, 2), "acknowledged to another manager process: void"
    assert d.fetch(BF, 7, 2) == [3] and d.acked(BF) == 2
    assert d.fetch(BF, 7, 3) == [] and d.hint(BF) == Hint(0, 7, 0)
    assert d.batch("other") == [1]


def test_a_new_incarnation_starts_with_an_empty_queue_numbered_from_one():
    d: Delivery[int] = Delivery(epoch=1)
    d.queue(BF, _numbered)
    d.queue(BF, _numbered)
    d.reset(BF)
    assert d.waiting(BF) == 0 and d.batch(BF) == []
    assert d.queue(BF, _numbered) == 1


def test_notices_name_the_benefactors_that_changed_and_bring_the_batch_to_those_given_orders():
    d: Delivery[int] = Delivery(epoch=1)
    d.queue(BF, _numbered)
    assert d.notices() == [], "not followed yet"
    d.follow()
    d.queue(BF, _numbered)
    assert d.notices() == [Notice(BF, 2, 2, [1, 2])]
    assert d.notices() == [], "told once"
    d.ack(BF, 1, 1)
    assert d.notices() == [Notice(BF, 1, 2, None)], "it took some: no wake, the count changed"
    d.ack(BF, 1, 2)
    assert d.notices() == [Notice(BF, 0, 0, None)]
    d.queue(BF, _numbered)
    assert d.notices([BF]) == [Notice(BF, 1, 3, [3])], "a snapshot brings every batch"


def test_a_wake_is_for_the_incarnation_flagged_and_a_newer_one_keeps_what_the_older_told():
    flag = (BF, 5, 1, False, True, b"batch", 4)
    wake = wake_of(flag, 5, "host:1", b"k" * 32)
    assert wake is not None and wake.orders and wake.orders_last == 4 and wake.orders_mac
    assert wake_of(flag, 6, "host:1", b"k" * 32) is None, "another process at that id"
    assert wake_of((BF, 5, 1, False, False, b"", 4), 5, "host:1", b"k") is None, "not given work since told"
    drain = Wake(BF, 5, "host:1", False, True)
    merged = merge(wake, drain)
    assert (merged.orders, merged.drain, merged.orders_reply) == (True, True, b"batch")
    assert merge(wake, drain._replace(incarnation=6)) == drain._replace(incarnation=6)


# -- the benefactor's side -------------------------------------------------------------------------
def test_fetched_orders_are_carried_out_once_and_a_new_manager_process_numbers_them_again():
    inbox = Inbox()
    assert inbox.plan(9, [1, 2, 3], pushed=False) == [0, 1, 2]
    for seq in (1, 2):
        inbox.applied(seq)
    assert inbox.ack() == (9, 2)
    assert inbox.plan(9, [1, 2, 3, 4], pushed=False) == [2, 3], "fetched again after a lost acknowledgement"
    assert inbox.plan(4, [1], pushed=False) == [0] and inbox.ack() == (4, 0)


def test_pushed_orders_follow_on_or_wait_for_a_fetch():
    inbox = Inbox(max_pushed=3)
    assert inbox.plan(9, [2, 3], pushed=True) == [], "the first is missing here"
    assert inbox.fetch_after_push([2, 3], busy=False)
    assert inbox.plan(9, [1, 2], pushed=True) == [0, 1]
    inbox.applied(1)
    inbox.applied(2)
    assert not inbox.fetch_after_push([1, 2], busy=False)
    assert inbox.fetch_after_push([1, 2], busy=True), "a copy under way reports by fetching"
    assert inbox.plan(9, [1, 2, 3], pushed=True) == [2]
    inbox.applied(3)
    assert inbox.fetch_after_push([1, 2, 3], busy=False), "a full batch: more may follow"
    assert inbox.plan(8, [1], pushed=True) == [] and inbox.ack() == (9, 3), "a stopped manager process's"


def test_told_that_orders_wait_it_fetches_unless_it_carried_them_out():
    inbox = Inbox(epoch=9, acked=4)
    assert not inbox.fetch_when_told(9, 4)
    assert inbox.fetch_when_told(9, 5)
    assert inbox.fetch_when_told(8, 2), "another manager process's numbering"
    assert inbox.fetch_when_told(9, 0), "the last was not said"


# -- both, against a reference model -----------------------------------------------------------------
BATCH = 3  # small, so that batches fill


class OrderDelivery(RuleBasedStateMachine):
    """The manager pushes orders to one benefactor; they travel in wakes (which arrive late, out of
    order or never, and whose replies carrying the acknowledgement may be lost), are hinted at in
    heartbeat replies (maybe stale, maybe lost), and are fetched (the request or the reply lost).
    The manager restarts (a new epoch: its queue starts empty, acknowledgements of the old one are
    void) and the benefactor comes back as a new incarnation (its queue starts empty).

    The reference model: the orders pushed to the live incarnation in the live epoch, in order.
    Carried out must be, per incarnation and epoch, orders 1, 2, 3... each once, those the manager
    of that epoch pushed; of the live ones a prefix of the model, all of it once messages stop being
    lost. An order of a stopped manager process (a late wake) is never carried out by a benefactor
    that has heard from the live one."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 1
        self.manager: Delivery[Order] = Delivery(self.epoch, BATCH)
        self.manager.follow()
        self.incarnation = 1
        self.inbox = Inbox(max_pushed=BATCH)
        self.uid = 0
        self.pushed: dict[int, tuple[int, int, int]] = {}  # uid: (incarnation, epoch, seq)
        self.live: list[int] = []  # uids pushed to the live incarnation in the live epoch
        self.done: list[tuple[int, Order]] = []  # (incarnation, order), as carried out
        self.heard_live = False  # the inbox took the live epoch
        self.look = False  # the benefactor's loop was told to fetch
        self.wakes: list[tuple[int, list[Order]]] = []  # (incarnation, batch), in flight
        self.replies: list[tuple[int, int, int]] = []  # wake replies: (incarnation, epoch, acked)
        self.hints: list[tuple[int, Hint]] = []  # heartbeat replies: (incarnation, hint)
        # The loop's one fetch under way: its request (incarnation, epoch, acked), then its reply
        # (incarnation, epoch, orders); wakes arrive meanwhile (on another thread).
        self.request: tuple[int, int, int] | None = None
        self.reply: tuple[int, int, list[Order]] | None = None

    # -- the manager ---------------------------------------------------------------------------
    @rule(n=st.integers(1, 4))
    def push(self, n: int) -> None:
        for _ in range(n):
            self.uid += 1
            uid = self.uid
            order = self.manager.queue(BF, lambda seq, uid=uid: Order(self.epoch, seq, uid))
            self.pushed[uid] = (self.incarnation, self.epoch, order.seq)
            self.live.append(uid)

    @rule()
    def send_wakes(self) -> None:
        for notice in self.manager.notices():
            assert (notice.waiting, notice.last) == (self.manager.waiting(BF), self.manager.last(BF))
            if notice.batch is not None:
                self.wakes.append((self.incarnation, notice.batch))

    @rule()
    def send_hint(self) -> None:
        self.hints.append((self.incarnation, self.manager.hint(BF)))

    @rule()
    def manager_restarts(self) -> None:
        self.epoch += 1
        self.manager = Delivery(self.epoch, BATCH)
        self.manager.follow()
        self.live, self.heard_live = [], False

    @rule()
    def benefactor_restarts(self) -> None:
        self.incarnation += 1
        self.inbox, self.look = Inbox(max_pushed=BATCH), False
        self.reply = None  # the old process is gone (its request may still reach the manager)
        self.manager.reset(BF)  # it registers as a new process
        self.live, self.heard_live = [], False

    # -- the network ---------------------------------------------------------------------------
    @precondition(lambda self: self.wakes)
    @rule(data=st.data(), reply_lost=st.booleans())
    def a_wake_arrives(self, data: st.DataObject, reply_lost: bool) -> None:
        incarnation, batch = self.wakes.pop(data.draw(st.integers(0, len(self.wakes) - 1)))
        if incarnation != self.incarnation:
            return  # another process had the id: ignored
        self._carry_out(batch[0].epoch, batch, pushed=True)
        self.look |= self.inbox.fetch_after_push([o.seq for o in batch], busy=False)
        if not reply_lost:
            self.replies.append((incarnation, *self.inbox.ack()))

    @precondition(lambda self: self.wakes)
    @rule(data=st.data())
    def a_wake_is_lost(self, data: st.DataObject) -> None:
        self.wakes.pop(data.draw(st.integers(0, len(self.wakes) - 1)))

    @precondition(lambda self: self.replies)
    @rule(data=st.data(), lost=st.booleans())
    def a_wake_reply_arrives(self, data: st.DataObject, lost: bool) -> None:
        incarnation, epoch, acked = self.replies.pop(data.draw(st.integers(0, len(self.replies) - 1)))
        if not lost and incarnation == self.incarnation:
            self.manager.ack(BF, epoch, acked)

    @precondition(lambda self: self.hints)
    @rule(data=st.data(), lost=st.booleans())
    def a_heartbeat_reply_arrives(self, data: st.DataObject, lost: bool) -> None:
        incarnation, hint = self.hints.pop(data.draw(st.integers(0, len(self.hints) - 1)))
        if not lost and incarnation == self.incarnation and hint.waiting:
            self.look |= self.inbox.fetch_when_told(hint.epoch, hint.last)

    @precondition(lambda self: self.reply is None)
    @rule()
    def fetch(self) -> None:
        """The loop asks (a request still on its way when its call timed out may yet arrive)."""
        self.request = (self.incarnation, *self.inbox.ack())

    @precondition(lambda self: self.request is not None)
    @rule(lost=st.booleans())
    def a_fetch_arrives(self, lost: bool) -> None:
        assert self.request is not None
        incarnation, epoch, acked = self.request
        self.request = None
        if not lost and incarnation == self.incarnation:  # else: not registered as this process
            self.reply = (incarnation, self.epoch, self.manager.fetch(BF, epoch, acked))

    @precondition(lambda self: self.reply is not None)
    @rule(lost=st.booleans())
    def a_fetch_reply_arrives(self, lost: bool) -> None:
        assert self.reply is not None
        incarnation, epoch, orders = self.reply
        self.reply = None
        if not lost and incarnation == self.incarnation:
            self._carry_out(epoch, orders, pushed=False)
            self.look = bool(orders)  # a look that found orders looks again at once

    def _fetched(self) -> None:
        self.fetch()
        self.a_fetch_arrives(lost=False)
        if self.reply is not None:
            self.a_fetch_reply_arrives(lost=False)

    def _carry_out(self, epoch: int, orders: list[Order], pushed: bool) -> None:
        for at in self.inbox.plan(epoch, [o.seq for o in orders], pushed):
            order = orders[at]
            assert order.epoch == epoch
            assert order.epoch == self.epoch or not self.heard_live, "a stopped manager process's order"
            self.done.append((self.incarnation, order))
            self.inbox.applied(order.seq)
        self.heard_live = self.heard_live or self.inbox.epoch == self.epoch

    # -- messages stop being lost --------------------------------------------------------------------
    @rule()
    def settle(self) -> None:
        """Every message on its way arrives, a heartbeat reply tells what waits, and the loop looks
        while told to: every live order is carried out. Its idle look (the safety net for a lost
        acknowledgement) then empties the manager's queue."""
        if self.request is not None:
            self.a_fetch_arrives(lost=False)
        if self.reply is not None:
            self.a_fetch_reply_arrives(lost=False)
        while self.wakes or self.replies:
            if self.wakes:
                incarnation, batch = self.wakes.pop(0)
                if incarnation == self.incarnation:
                    self._carry_out(batch[0].epoch, batch, pushed=True)
                    self.look |= self.inbox.fetch_after_push([o.seq for o in batch], busy=False)
                    self.replies.append((incarnation, *self.inbox.ack()))
            if self.replies:
                incarnation, epoch, acked = self.replies.pop(0)
                if incarnation == self.incarnation:
                    self.manager.ack(BF, epoch, acked)
        self.hints.clear()
        hint = self.manager.hint(BF)
        if hint.waiting:
            self.look |= self.inbox.fetch_when_told(hint.epoch, hint.last)
        for _ in range(len(self.live) + 2):
            if not self.look:
                break
            self._fetched()
        assert self._live_done() == self.live, "an order was lost"
        self._fetched()  # the idle loop's look
        self._fetched()
        assert self.manager.waiting(BF) == 0

    def _live_done(self) -> list[int]:
        return [o.uid for inc, o in self.done if inc == self.incarnation and o.epoch == self.epoch]

    @invariant()
    def once_each_in_sequence(self) -> None:
        uids = [o.uid for _, o in self.done]
        assert len(uids) == len(set(uids)), "an order was carried out twice"
        runs: dict[tuple[int, int], list[int]] = {}
        for inc, o in self.done:
            assert self.pushed[o.uid] == (inc, o.epoch, o.seq), "an order pushed to another process"
            runs.setdefault((inc, o.epoch), []).append(o.seq)
        for seqs in runs.values():
            assert seqs == list(range(1, len(seqs) + 1)), "out of sequence"
        done = self._live_done()
        assert done == self.live[:len(done)]


TestOrderDelivery = OrderDelivery.TestCase
TestOrderDelivery.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
