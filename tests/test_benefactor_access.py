"""The benefactor's authenticator, socket-free: who passes, what a Put's caller may write, and
revocation reaching a stream already under way."""

from __future__ import annotations

import time

import pytest

from memstage import auth
from memstage.benefactor.access import BenefactorAccess, Caller
from memstage.errors import InvalidPath, PermissionDenied, Unauthenticated
from memstage.proto import benefactor_pb2

SECRET = bytes(range(32))


def grant(namespace: str, mode: str, token_id: str = "t1", now: float | None = None) -> tuple[tuple[str, str], ...]:
    return ((auth.GRANT_HEADER, auth.sign_grant(SECRET, namespace, mode, token_id, now=now)),)


def proof(who: str) -> tuple[tuple[str, str], ...]:
    return ((auth.CLUSTER_HEADER, auth.role_proof(SECRET, who)),)


def test_holders_of_the_secret_pass_and_clients_need_a_grant_for_the_namespace():
    refused: list[str] = []
    access = BenefactorAccess(SECRET, "bf-1", refused.append)
    get = benefactor_pb2.GetRequest(namespace="ns")
    assert access("Get", proof(auth.benefactor_role("bf-2")), get).holder == "b/bf-2"
    assert access("Get", grant("ns", "r"), get).grant
    with pytest.raises(Unauthenticated):
        access("Get", (), get)
    with pytest.raises(PermissionDenied, match="benefactor bf-1"):
        access("Get", grant("other", "rw"), get)
    with pytest.raises(InvalidPath):
        access("ReadDrained", grant("ns", "r"), benefactor_pb2.ReadDrainedRequest(drained="ns/../victim/x"))
    assert refused == ["unauthenticated", "permission_denied", "invalid_path"]


def test_wake_is_for_the_manager_alone():
    access = BenefactorAccess(SECRET, "bf-1")
    wake = benefactor_pb2.WakeRequest(benefactor_id="bf-1")
    assert access("Wake", proof(auth.MANAGER), wake).holder == auth.MANAGER
    for creds in ((), proof(auth.benefactor_role("bf-1")), grant("ns", "rw")):
        with pytest.raises(Unauthenticated):
            access("Wake", creds, wake)


def test_a_put_stream_is_judged_per_namespace_as_of_its_start_and_ends_with_its_tokens_revocation():
    access = BenefactorAccess(SECRET, "bf-1")
    started = time.time()
    caller = access("Put", grant("ns", "rw"), None)
    assert isinstance(caller, Caller) and caller.since is not None and caller.since >= started
    assert caller.require("ns", write=True) is not None
    with pytest.raises(PermissionDenied):
        caller.require("other", write=True)
    # Judged as of the stream's start: a grant that expired since still covers a stream begun before.
    old = grant("ns", "rw", now=started - auth.GRANT_SECONDS - 5)[0][1]  # expired 5 s ago
    assert Caller(grant=old, since=started - 10, judge=caller.judge).require("ns", write=True) is not None
    with pytest.raises(PermissionDenied, match="expired"):
        Caller(grant=old, since=started, judge=caller.judge).require("ns", write=True)
    access.revoke(["t1"])
    with pytest.raises(PermissionDenied, match="revoked"):
        caller.require("ns", write=True)
    # A read grant does not write; a peer's proof needs no grant.
    with pytest.raises(PermissionDenied):
        access("Put", grant("ns", "r"), None).require("ns", write=True)
    assert access("Put", proof(auth.benefactor_role("bf-2")), None).require("ns", write=True) is None
