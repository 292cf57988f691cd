"""The mount's cache of attributes and names, and the manager's watchers, without sockets: model
checks of random event sequences (hypothesis) against the truth they must never contradict."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from memstage.client.attrcache import ABSENT, AttrCache, Miss
from memstage.client.filestat import FileStat
from memstage.manager.watchers import Watchers

DIRS = ("/d1", "/d2", "/d1/s")
PATHS = ("/d1/a", "/d1/b", "/d2/a", "/d1/s/x", "/d1/s/y")
LEASE = 2.0


def info(path: str, size: int) -> FileStat:
    return FileStat(path=path, size=size, ino=hash(path) & 0xFFFF)


def test_a_hit_needs_the_lease_and_a_change_drops_path_below_and_parent_listing():
    c = AttrCache()
    miss = c.get("/d1/a", 0.0)
    assert isinstance(miss, Miss) and not c.put("/d1/a", info("/d1/a", 1), miss.epoch, 0.0)  # no lease yet
    c.ping_sent(1, 0.0)
    c.pong(1, LEASE)
    assert c.valid(0.9) and not c.valid(1.0)  # half a lease from the ping
    assert c.put("/d1/a", info("/d1/a", 1), c.epoch, 0.5)
    assert c.get("/d1/a", 0.5) == info("/d1/a", 1)
    assert isinstance(c.get("/d1/a", 1.0), Miss)  # the lease ran out
    c.ping_sent(2, 1.0)
    c.pong(2, LEASE)
    assert c.put_listing("/d1", [("/d1/a", info("/d1/a", 1))], c.epoch, 1.1)
    assert c.get("/d1/zzz", 1.1) is ABSENT  # listed whole: a name not in it does not exist
    c.changed(["/d1/zzz"])  # created elsewhere
    assert isinstance(c.get("/d1/zzz", 1.1), Miss) and isinstance(c.get("/d1/other", 1.1), Miss)
    assert c.get("/d1/a", 1.1) == info("/d1/a", 1)  # a sibling stays


def test_an_answer_fetched_before_a_change_is_not_kept_after_it():
    c = AttrCache()
    c.ping_sent(1, 0.0)
    c.pong(1, LEASE)
    miss = c.get("/f", 0.1)
    assert isinstance(miss, Miss)
    c.changed(["/f"])
    assert not c.put("/f", info("/f", 1), miss.epoch, 0.1)
    assert isinstance(c.get("/f", 0.1), Miss)


def test_changes_made_here_keep_listings_right():
    c = AttrCache()
    c.ping_sent(1, 0.0)
    c.pong(1, LEASE)
    assert c.put_listing("/d", [("/d/a", info("/d/a", 1))], c.epoch, 0.1)
    c.changed_here(["/d/new"])  # created here: the listing knows it, its attributes are asked for
    assert isinstance(c.get("/d/new", 0.1), Miss) and c.get("/d/other", 0.1) is ABSENT
    c.changed_here(["/d/a", "/d/b"], gone=["/d/a"])  # renamed here
    assert c.get("/d/a", 0.1) is ABSENT and isinstance(c.get("/d/b", 0.1), Miss)
    c.changed(["/d/x"])  # changed elsewhere: the listing is not known any more
    assert isinstance(c.get("/d/other", 0.1), Miss)


def test_the_kernel_is_told_of_every_name_of_a_changed_file():
    c = AttrCache()
    c.told_kernel("/a", 7)
    c.told_kernel("/d/b", 7)  # a hard link
    c.told_kernel("/c", 8)
    assert c.other_names("/a") == ["/d/b"]
    told = c.changed(["/a"])
    assert "/a" in told and "/d/b" in told and "/" in told and "/c" not in told
    assert c.other_names("/a") == []  # told once: the kernel asks again and is told again
    c.told_kernel("/d/sub/x", 9)
    assert "/d/sub/x" in c.changed(["/d"])  # below a renamed directory


class CacheModel(RuleBasedStateMachine):
    """The truth (what the manager holds) changes; every change reaches the cache as the watch
    delivers it; fetches overlap changes. The cache may miss, never contradict the truth."""

    @initialize()
    def start(self) -> None:
        self.cache = AttrCache()
        self.truth: dict[str, int | None] = {p: None for p in PATHS}
        self.now = 0.0
        self.pings = 0
        self.fetches: list[tuple[str, int | None, int]] = []
        self.listings: list[tuple[str, dict[str, int | None], int]] = []

    def _value(self, path: str) -> FileStat | None:
        size = self.truth[path]
        return None if size is None else info(path, size)

    @rule(dt=st.floats(0, 1.5))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def renew(self) -> None:
        self.pings += 1
        self.cache.ping_sent(self.pings, self.now)
        self.cache.pong(self.pings, LEASE)

    @rule()
    def lose(self) -> None:
        self.cache.lost()

    @rule(path=st.sampled_from(PATHS))
    def fetch(self, path: str) -> None:
        got = self.cache.get(path, self.now)
        if isinstance(got, Miss):
            self.fetches.append((path, self.truth[path], got.epoch))

    @precondition(lambda self: self.fetches)
    @rule(i=st.integers(0, 100))
    def fetched(self, i: int) -> None:
        path, size, epoch = self.fetches.pop(i % len(self.fetches))
        self.cache.put(path, None if size is None else info(path, size), epoch, self.now)

    @rule(d=st.sampled_from(DIRS))
    def list_dir(self, d: str) -> None:
        with_epoch = self.cache.epoch
        self.listings.append((d, {p: s for p, s in self.truth.items() if p.rsplit("/", 1)[0] == d}, with_epoch))

    @precondition(lambda self: self.listings)
    @rule(i=st.integers(0, 100))
    def listed(self, i: int) -> None:
        d, snapshot, epoch = self.listings.pop(i % len(self.listings))
        self.cache.put_listing(d, [(p, info(p, s)) for p, s in snapshot.items() if s is not None], epoch, self.now)

    @rule(path=st.sampled_from(PATHS), size=st.none() | st.integers(0, 3))
    def change(self, path: str, size: int | None) -> None:
        self.truth[path] = size
        self.cache.changed([path])

    @rule(path=st.sampled_from(PATHS), size=st.none() | st.integers(0, 3))
    def change_here(self, path: str, size: int | None) -> None:
        self.truth[path] = size
        self.cache.changed_here([path], gone=[path] if size is None else [])

    @rule(d=st.sampled_from(DIRS))
    def remove_tree(self, d: str) -> None:
        for p in PATHS:
            if p.startswith(d + "/"):
                self.truth[p] = None
        self.cache.changed([d])

    @invariant()
    def never_contradicts(self) -> None:
        if not hasattr(self, "cache"):
            return
        for path in PATHS:
            got = self.cache.get(path, self.now)
            if not isinstance(got, Miss):
                assert got == self._value(path), (path, got, self.truth[path])


TestCacheModel = CacheModel.TestCase
TestCacheModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class LeaseModel(RuleBasedStateMachine):
    """One mount and the manager, in-order streams both ways, with delays and a mount that may stop
    for a while: when the manager stops waiting for a change, the mount has applied it, or
    neither it nor its kernel (which keeps what it is told for half a lease) can still use what
    it cached before it."""

    @initialize()
    def start(self) -> None:
        self.now = 0.0
        self.table = Watchers(LEASE)
        self.w = self.table.watch("m", "ns", self.now)
        self.cache = AttrCache()
        self.to_manager: list[tuple[int, int]] = []  # (seq acked, ping), in order
        self.pings = 0
        self.applied = 0
        self.waiting: list[tuple[int, list, float]] = []  # (seq, told, deadline)

    @rule(dt=st.floats(0, 1.2))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def ping(self) -> None:
        self.pings += 1
        self.cache.ping_sent(self.pings, self.now)
        self.to_manager.append((self.applied, self.pings))

    @precondition(lambda self: self.to_manager)
    @rule()
    def deliver(self) -> None:
        seq, ping = self.to_manager.pop(0)
        self.table.ack("m", seq, ping, self.now)

    @precondition(lambda self: self.w.events)
    @rule()
    def mount_reads(self) -> None:
        event = self.w.events.popleft()
        if event.paths:
            self.cache.changed(list(event.paths))
        if event.seq:
            self.applied = max(self.applied, event.seq)
            self.to_manager.append((self.applied, 0))
        if event.pong:
            self.cache.pong(event.pong, event.lease)

    @rule()
    def change_elsewhere(self) -> None:
        seq, told = self.table.changed("", "ns", ["/f"])
        self.waiting.append((seq, told, self.now + LEASE))

    @invariant()
    def done_means_seen_or_expired(self) -> None:
        if not hasattr(self, "table"):
            return
        for seq, told, deadline in list(self.waiting):
            if self.table.owing(seq, told, self.now) and self.now < deadline:
                continue  # the change still waits
            self.waiting.remove((seq, told, deadline))
            if self.applied < seq:  # not applied: the cache and the kernel's copies have run out
                valid_until = self.cache._valid_until
                assert valid_until + LEASE / 2 <= self.now + 1e-9, (seq, valid_until, self.now)

    @invariant()
    def no_renewal_past_an_unapplied_change(self) -> None:
        if not hasattr(self, "table"):
            return
        # A pong is queued behind every event sent before its ping reached the manager.
        seen_pong = False
        for event in self.w.events:
            if event.pong:
                seen_pong = True
            elif seen_pong:
                assert event.seq > 0


TestLeaseModel = LeaseModel.TestCase
TestLeaseModel.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)


def test_a_watcher_that_ended_or_stopped_pinging_owes_nothing():
    t = Watchers(LEASE)
    w = t.watch("m", "ns", 0.0)
    other = t.watch("o", "other-namespace", 0.0)
    seq, told = t.changed("", "ns", ["/x"])
    assert told == [w] and other.events == type(other.events)()
    assert t.owing(seq, told, 1.0) == [w]
    assert t.owing(seq, told, LEASE) == []  # its last ping is a lease old
    seq, told = t.changed("m", "ns", ["/x"])
    assert told == []  # the mount that made the change is not told of it
    seq, told = t.changed("", "ns", ["/x"])
    again = t.watch("m", "ns", 0.0)  # the mount watches again: the old stream ends
    assert w.ended and t.owing(seq, told, 0.1) == []
    assert not t.ack("nobody", 1, 1, 0.0) and t.ack("m", seq, 0, 0.0) and again.acked == seq
