"""Group commit: commits that wait together are recorded together, each caller gets its own outcome
only after the group was made durable, and a refused or failed commit fails no one else. No sockets."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import ServicerContext, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from memstage.chunks import ChunkKey
from memstage.errors import DataLost, FsError
from memstage.manager.catalog import Catalog, NewVersion
from memstage.manager.groupcommit import GroupCommit, NotDurable


class Refused(Exception):
    pass


@settings(max_examples=40, deadline=None)
@given(callers=st.integers(1, 12), max_group=st.integers(1, 5), refused=st.sets(st.integers(0, 11)),
       failing_groups=st.sets(st.integers(0, 6)), undurable_groups=st.sets(st.integers(0, 6)))
def test_every_caller_gets_its_own_outcome_after_its_group_is_durable(callers, max_group, refused, failing_groups,
                                                                       undurable_groups):
    lock = threading.Lock()
    recorded: list[list[int]] = []  # the groups, as recorded
    durable: set[int] = set()  # the groups made durable

    def record(items):  # type: ignore[no-untyped-def]
        time.sleep(0.002)  # others arrive meanwhile
        with lock:
            group = len(recorded)
            recorded.append(list(items))
        if group in failing_groups:
            raise OSError(f"disk full in group {group}")
        return [Refused(i) if i in refused else ("ok", i) for i in items]

    def make_durable() -> None:  # called right after the group it covers was recorded
        if len(recorded) - 1 in undurable_groups:
            raise OSError(f"fsync failed for group {len(recorded) - 1}")
        durable.add(len(recorded) - 1)

    gc = GroupCommit(record, make_durable, max_group=max_group)
    outcomes: dict[int, object] = {}

    def caller(i: int) -> None:
        try:
            got = gc.submit(i)
            # Answered only after the fsync of its own group (the group that recorded it).
            group = next(g for g, items in enumerate(recorded) if i in items)
            assert group in durable
            outcomes[i] = got
        except (Refused, OSError, NotDurable) as e:
            outcomes[i] = e

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a caller was never answered"
    flat = [i for group in recorded for i in group]
    assert sorted(flat) == list(range(callers)), "each commit recorded exactly once"
    assert all(1 <= len(g) <= max_group for g in recorded)
    group_of = {i: g for g, items in enumerate(recorded) for i in items}
    for i in range(callers):
        if group_of[i] in failing_groups:
            assert isinstance(outcomes[i], OSError) and f"group {group_of[i]}" in str(outcomes[i])
        elif i in refused:
            assert isinstance(outcomes[i], Refused) and outcomes[i].args == (i,)
        elif group_of[i] in undurable_groups:  # recorded, not durable: told so, with what was recorded
            assert isinstance(outcomes[i], NotDurable) and outcomes[i].result == ("ok", i)
            assert f"group {group_of[i]}" in str(outcomes[i].cause)
        else:
            assert outcomes[i] == ("ok", i)
    # The order of groups is checked apart (test_groups_form_in_order_of_arrival): here a caller
    # noted as arrived may still be preempted before it queues.


def test_groups_form_in_order_of_arrival() -> None:
    """While a group is being recorded, those who arrive queue; the next groups take them in order
    of arrival, at most max_group each."""
    release = threading.Event()
    recorded: list[list[int]] = []

    def record(items):  # type: ignore[no-untyped-def]
        recorded.append(list(items))
        if items[0] == 0:
            release.wait(30)  # the first group holds the lead while the others queue
        return [("ok", i) for i in items]

    gc = GroupCommit(record, lambda: None, max_group=3)
    threads = [threading.Thread(target=gc.submit, args=(i,)) for i in range(8)]
    for i, t in enumerate(threads):
        t.start()
        # Each caller queues before the next starts: the arrival order is the start order.
        wait_for(lambda i=i: bool(recorded) and (i == 0 or i in [w.item for w in gc._queue]),
                 what=f"caller {i} to queue")
    release.set()
    for t in threads:
        t.join(timeout=30)
    assert recorded == [[0], [1, 2, 3], [4, 5, 6], [7]]


def _keys(n: int) -> list[ChunkKey]:
    return [ChunkKey(os.urandom(16), 10) for _ in range(n)]


def _version(path: str, keys: list[ChunkKey], bf: str, alive: set[str]) -> NewVersion:
    return NewVersion("ns", path, 10 * len(keys), [(k, [bf]) for k in keys], alive)


def test_a_group_in_one_transaction_refuses_only_the_commit_that_cannot_be_read(tmp_path):
    cat = Catalog(str(tmp_path))
    alive = {"b1"}
    a, b, c = _keys(2), _keys(2), _keys(2)
    before = cat._committed
    outcomes = cat.commit_group([_version("/a", a, "b1", alive), _version("/b", b, "gone", alive),
                                 _version("/a", c, "b1", alive)])
    assert cat._committed == before + 1, "one transaction for the group"
    assert outcomes[0][0] == 1 and outcomes[2][0] == 2  # type: ignore[index]
    assert isinstance(outcomes[1], DataLost)
    assert cat.version_count("ns", "/b") == 0
    assert [cat.locations(("ns", k)) != {} for k in a + b + c] == [True, True, False, False, True, True]
    cat.close()
    cat = Catalog(str(tmp_path))  # recorded durably as it said
    assert cat.version("ns", "/a").version == 2
    assert cat.version_count("ns", "/b") == 0
    cat.close()


def test_an_error_while_recording_one_commit_of_a_group_fails_that_one_only(tmp_path, monkeypatch):
    cat = Catalog(str(tmp_path))
    alive = {"b1"}
    real = cat.put_node

    def put_node(ns, path, node):  # type: ignore[no-untyped-def]
        if path == "/bad":
            raise FsError(28, "/bad: no space left")  # the transaction fails after changes were made
        return real(ns, path, node)

    monkeypatch.setattr(cat, "put_node", put_node)
    a, bad, c = _keys(3), _keys(3), _keys(3)
    outcomes = cat.commit_group([_version("/a", a, "b1", alive), _version("/bad", bad, "b1", alive),
                                 _version("/c", c, "b1", alive)])
    assert isinstance(outcomes[1], FsError)
    assert [o[0] for o in (outcomes[0], outcomes[2])] == [1, 1]  # type: ignore[index]
    assert cat.version_count("ns", "/bad") == 0 and not any(cat.locations(("ns", k)) for k in bad)
    assert all(cat.locations(("ns", k)) for k in a + c)
    cat.close()


@pytest.mark.parametrize("n", [1, 3])
def test_commit_is_a_group_of_one(tmp_path, n):
    cat = Catalog(str(tmp_path))
    for i in range(n):
        version, holds = cat.commit("ns", "/f", 20, [(k, ["b1"]) for k in _keys(2)], {"b1"})
        assert version == i + 1 and set(holds) == {"b1"}
    with pytest.raises(DataLost):
        cat.commit("ns", "/f", 20, [(k, ["gone"]) for k in _keys(2)], {"b1"})
    cat.close()


def test_a_commit_recorded_but_not_made_durable_is_refused_and_keeps_its_holds(tmp_path, monkeypatch):
    """An fsync that fails: the writer is told the commit failed (it was not made durable), and the
    holds of what was recorded are still ordered, so the version's chunks are not freed under it."""
    from prometheus_client import CollectorRegistry

    from memstage import commitpack, receipts
    from memstage.manager.service import ManagerService
    from memstage.proto import manager_pb2
    from memstage.settings import ManagerSettings

    catalog = Catalog(str(tmp_path))
    svc = ManagerService(ManagerSettings(state=str(tmp_path)), catalog, CollectorRegistry())
    ctx = ServicerContext()
    key = os.urandom(32)
    svc.Register(manager_pb2.RegisterRequest(benefactor_id="b0", address="127.0.0.1:1", incarnation=1, receipt_key=key,
                                             stats=manager_pb2.BenefactorStats(memory_capacity=1 << 30)), ctx)
    session = svc.OpenSession(manager_pb2.OpenSessionRequest(namespace="ns", path="/f"), ctx).session
    chunks = _keys(3)
    packed = commitpack.pack([(k, [("b0", receipts.make(key, session, "ns", k))]) for k in chunks])

    def failing_sync() -> None:
        raise OSError(5, "fsync: input/output error")

    monkeypatch.setattr(svc.commits.group_commit, "_durable", failing_sync)  # the group's fsync
    with pytest.raises(OSError, match="input/output error"):  # INTERNAL, across the boundary
        svc.Commit(manager_pb2.CommitRequest(namespace="ns", path="/f", size=30, session=session, packed=packed), ctx)
    held = [o for o in svc.orders.take("b0", 0) if o.hold_hashes or o.hold_packed or o.hold]
    assert held and held[0].hold_hashes == b"".join(k.hash for k in chunks), "the recorded chunks are held"
    catalog.close()
