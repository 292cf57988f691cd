"""BeatDesk, socket-free: what the heartbeat process answers from what the manager told it."""

from __future__ import annotations

from conftest import ServicerContext
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from memstage.manager.beatdesk import Answer, Beat, BeatDesk
from memstage.manager.wakes import Wake
from memstage.receipts import sign_orders

STATS = (100, 10, 0, 1, "", 0)
KEY = b"k" * 32


def _beat(bf: str, incarnation: int, arrived: float = 1.0) -> Beat:
    return Beat(bf, incarnation, arrived, STATS, ())


def test_a_known_incarnation_is_answered_and_its_beat_passed_on_in_order_of_arrival():
    desk = BeatDesk(interval=30.0)
    desk.known([("a", 7, "h:1", KEY), ("b", 8, "h:2", KEY)])
    desk.flags([("a", 7, 3, True, True, b"", 12)])  # three orders wait, the last numbered 12
    assert desk.beat(_beat("a", 7, 1.0)) == Answer(30.0, 3, True, 12)
    assert desk.beat(_beat("b", 8, 2.0)) == Answer(30.0, 0, False, 0)
    assert [b.benefactor for b in desk.take()] == ["a", "b"]
    assert desk.take() == []


def test_what_the_desk_cannot_answer_goes_to_the_manager():
    desk = BeatDesk(interval=30.0)
    desk.known([("a", 7, "h:1", KEY)])
    assert desk.beat(_beat("a", 6)) is None  # an older (or newer) process of the same id
    assert desk.beat(_beat("z", 1)) is None  # never told
    desk.gone(["a"])
    assert desk.beat(_beat("a", 7)) is None  # declared dead or left: the manager says "register"
    assert desk.take() == []  # nothing it did not answer is passed on


def test_no_answer_before_the_manager_told_a_period():
    desk = BeatDesk()
    desk.known([("a", 7, "h:1", KEY)])
    assert desk.beat(_beat("a", 7)) is None


def test_flags_of_another_incarnation_are_ignored_and_a_new_registration_clears_them():
    desk = BeatDesk(interval=30.0)
    desk.known([("a", 7, "h:1", KEY)])
    desk.flags([("a", 6, 5, True, True, b"", 5)])  # computed for the process before
    assert desk.beat(_beat("a", 7)) == Answer(30.0, 0, False, 0)
    desk.flags([("a", 7, 5, True, True, b"", 5)])
    desk.known([("a", 9, "h:9", KEY)])  # it restarted: the new process has no work waiting yet
    assert desk.beat(_beat("a", 9)) == Answer(30.0, 0, False, 0)


def test_work_queued_for_a_known_benefactor_names_it_to_be_woken_at_its_address():
    desk = BeatDesk(interval=30.0)
    desk.known([("a", 7, "h:1", KEY), ("b", 8, "h:2", KEY)])
    assert desk.flags([("a", 7, 2, False, True, b"orders", 2), ("b", 8, 0, True, True, b"", 0),
                       ("z", 1, 4, True, True, b"", 4)]) == [  # z: not known here
        Wake("a", 7, "h:1", True, False, b"orders", sign_orders(KEY, b"orders"), 2), Wake("b", 8, "h:2", False, True)]
    assert desk.flags([("a", 7, 0, False, False, b"", 0)]) == []  # it took its orders: nothing to wake it for
    assert desk.flags([("a", 7, 1, False, False, b"", 2)]) == []  # took some, not given more: it is asking already
    assert desk.beat(_beat("a", 7)) == Answer(30.0, 1, False, 2)  # (its heartbeat reply still says so)
    assert desk.flags([("b", 7, 3, True, True, b"", 3)]) == []  # computed for another process


IDS = st.sampled_from(["a", "b", "c"])
INCS = st.integers(1, 3)


class DeskModel(RuleBasedStateMachine):
    """Random sequences of what the manager tells against a dict of the same facts."""

    def __init__(self) -> None:
        super().__init__()
        self.desk = BeatDesk()
        self.interval = 0.0
        self.model: dict[str, tuple[int, int, bool, int]] = {}  # id -> (incarnation, orders, drains, last)
        self.answered: list[str] = []

    @rule(items=st.lists(st.tuples(IDS, INCS), max_size=3))
    def known(self, items):
        self.desk.known([(bf, inc, f"{bf}:{inc}", KEY) for bf, inc in items])
        for bf, inc in items:
            self.model[bf] = (inc, 0, False, 0)

    @rule(ids=st.lists(IDS, max_size=2))
    def gone(self, ids):
        self.desk.gone(ids)
        for bf in ids:
            self.model.pop(bf, None)

    @rule(items=st.lists(st.tuples(IDS, INCS, st.integers(0, 5), st.booleans(), st.booleans(),
                                   st.sampled_from([b"", b"orders"]), st.integers(0, 9)), max_size=3))
    def flags(self, items):
        wakes = self.desk.flags(items)
        expected = []
        for bf, inc, orders, drains, new, batch, last in items:
            if bf in self.model and self.model[bf][0] == inc:
                self.model[bf] = (inc, orders, drains, last)
                if new and (orders or drains):
                    mac = sign_orders(KEY, batch) if batch else b""
                    expected.append(Wake(bf, inc, f"{bf}:{inc}", orders > 0, drains, batch, mac, last))
        assert wakes == expected

    @rule(seconds=st.sampled_from([0.0, 30.0, 100.0]))
    def period(self, seconds):
        self.desk.interval = self.interval = seconds

    @rule(bf=IDS, inc=INCS)
    def beat(self, bf, inc):
        got = self.desk.beat(_beat(bf, inc))
        entry = self.model.get(bf)
        if entry is None or entry[0] != inc or not self.interval:
            assert got is None
        else:
            assert got == Answer(self.interval, entry[1], entry[2], entry[3])
            self.answered.append(bf)

    @rule()
    def take(self):
        assert [b.benefactor for b in self.desk.take()] == self.answered
        self.answered = []

    @invariant()
    def same_size(self):
        assert len(self.desk) == len(self.model)


TestDeskModel = DeskModel.TestCase
TestDeskModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)



def test_the_manager_tells_the_heartbeat_process_where_work_waits_and_applies_its_beats(tmp_path):
    """The manager's side, socket-free: flags of work waiting change with orders queued and
    acknowledged and with drain tasks; beats applied carry stats, arrival and sessions."""
    import time

    from prometheus_client import CollectorRegistry

    from memstage.manager.catalog import Catalog
    from memstage.manager.service import ManagerService
    from memstage.proto import manager_pb2
    from memstage.settings import ManagerSettings

    svc = ManagerService(ManagerSettings(state=str(tmp_path)), Catalog(str(tmp_path)), CollectorRegistry())
    ctx = ServicerContext()
    svc.Register(manager_pb2.RegisterRequest(benefactor_id="b0", address="127.0.0.1:1", incarnation=7,
                                             receipt_key=b"k" * 32,
                                             stats=manager_pb2.BenefactorStats(memory_capacity=1 << 30)), ctx)
    assert svc.orders.changed is None  # nothing to tell without a heartbeat process
    svc.attach_beats(None)  # type: ignore[arg-type]  # (what the link is does not matter here)
    svc.orders.push("b0", "ns", session=5, end_session=True)
    [(*flags, batch, last)] = svc.beat_flags()
    assert flags == ["b0", 7, 1, False, True]  # given work: it is woken, and the wake brings the order
    assert last == 1  # and the heartbeat process tells which order is the last waiting
    reply = svc.Heartbeat(manager_pb2.HeartbeatRequest(benefactor_id="b0", incarnation=7), ctx)
    assert (reply.orders_waiting, reply.orders_last, reply.orders_epoch) == (1, 1, svc.epoch)  # so does the manager
    pushed = manager_pb2.OrdersReply.FromString(batch)
    assert pushed.epoch == svc.epoch and [(o.seq, o.session, o.end_session) for o in pushed.orders] == [(1, 5, True)]
    assert svc.beat_flags() == []  # told once
    got = svc.Orders(manager_pb2.OrdersRequest(benefactor_id="b0", incarnation=7), ctx)
    assert svc.beat_flags() == []  # fetched is not done: still waiting until acknowledged
    svc.Orders(manager_pb2.OrdersRequest(benefactor_id="b0", incarnation=7, epoch=got.epoch,
                                         acked=got.orders[-1].seq), ctx)
    assert svc.beat_flags() == [("b0", 7, 0, False, False, b"", 0)]

    arrived = time.monotonic()
    svc.beats_arrived([("b0", 7, arrived, (1 << 30, 4096, 0, 1, "", 0), ()),
                       ("b0", 6, arrived, (1 << 30, 999, 0, 1, "", 0), ())])  # an old incarnation: ignored
    rec = svc.registry.get("b0")
    assert rec is not None and rec.stats.memory_used == 4096 and rec.last_seen == arrived
    svc.beats_arrived([("b0", 7, arrived, (1 << 30, 4096, 0, 1, "", 0), (999,))])  # a session that is not open
    [(*flags, batch, last)] = svc.beat_flags()
    assert flags == ["b0", 7, 1, False, True] and batch  # its end is ordered
    svc.acks_arrived([("b0", 7, svc.epoch + 1, 2)])  # acknowledged to a manager process before: void
    assert svc.orders.waiting("b0") == 1
    svc.acks_arrived([("b0", 7, svc.epoch, 2)])  # carried out when the wake brought it
    assert svc.orders.waiting("b0") == 0 and svc.beat_flags() == [("b0", 7, 0, False, False, b"", 0)]
    svc.orders.push("b0", "ns", session=6, end_session=True)
    interval, known, flags = svc.beat_snapshot()
    assert interval == svc.registry.interval() and known == [("b0", 7, "127.0.0.1:1", b"k" * 32)]
    [(*flags, batch, last)] = flags
    assert flags == ["b0", 7, 1, False, True] and batch  # a restarted heartbeat process wakes it
    # Woken for drain tasks while orders pushed earlier still wait: the wake names the last of them
    # (carried out already, they are not fetched again).
    [wake] = svc.wakes_for([("b0", 7, 1, True, True, b"", last)])
    assert (wake.orders, wake.drain, wake.orders_reply, wake.orders_last) == (True, True, b"", last)
