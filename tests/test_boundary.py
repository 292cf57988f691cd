"""The server boundary every role uses: authentication, error mapping and call metrics in one
interceptor, exercised through a real loopback server with each kind of call."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter

from memstage.boundary import Boundary, CallMetrics, current_caller
from memstage.errors import NotFound, PermissionDenied, Unauthenticated, from_rpc_error

TOKEN = "sesame"


def authenticate(method: str, metadata: Any, request: Any) -> str:
    given = dict(metadata).get("token")
    if given is None:
        raise Unauthenticated(f"{method}: no credential")
    if given != TOKEN:
        raise PermissionDenied(f"{method}: wrong credential")
    return f"caller of {method}"


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"missing":
        raise NotFound("no such thing")
    if request == b"bug":
        raise RuntimeError("a bug")
    return str(current_caller()).encode()


def stream_out(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"first"
    raise NotFound("gone while streaming")


def stream_in(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    return b"+".join(requests) + b" by " + str(current_caller()).encode()


def raw_abort(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "aborted below the boundary")
    return b""


HANDLERS = {
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
    "Out": grpc.unary_stream_rpc_method_handler(stream_out),
    "In": grpc.stream_unary_rpc_method_handler(stream_in),
    "Raw": grpc.unary_unary_rpc_method_handler(raw_abort),
}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[grpc.Channel, CollectorRegistry]]:
    registry = CollectorRegistry()
    metrics = CallMetrics(Counter("t_calls", "", ["method"], registry=registry),
                          Counter("t_errors", "", ["method", "code"], registry=registry))
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[Boundary("tester", authenticate, metrics)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", HANDLERS),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield ch, registry
    ch.close()
    server.stop(None)


def call(ch: grpc.Channel, method: str, request: Any, token: str | None = TOKEN) -> Any:
    md = () if token is None else (("token", token),)
    if method == "Out":
        return list(ch.unary_stream(f"/t.T/{method}")(request, metadata=md, timeout=10))
    if method == "In":
        return ch.stream_unary(f"/t.T/{method}")(iter(request), metadata=md, timeout=10)
    return ch.unary_unary(f"/t.T/{method}")(request, metadata=md, timeout=10)


@pytest.mark.parametrize("method,request_", [("Echo", b"x"), ("Out", b"x"), ("In", [b"a", b"b"])])
@pytest.mark.parametrize("token,code", [(None, grpc.StatusCode.UNAUTHENTICATED),
                                        ("wrong", grpc.StatusCode.PERMISSION_DENIED)])
def test_every_kind_of_call_is_authenticated(served: Any, method: str, request_: Any, token: str | None,
                                             code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as e:
        call(served[0], method, request_, token)
    assert e.value.code() == code


def test_the_caller_reaches_the_servicer(served: Any) -> None:
    assert call(served[0], "Echo", b"x") == b"caller of Echo"
    assert call(served[0], "In", [b"a", b"b"]) == b"a+b by caller of In"


def test_domain_errors_become_their_status_and_bugs_internal(served: Any) -> None:
    ch, registry = served
    with pytest.raises(grpc.RpcError) as e:
        call(ch, "Echo", b"missing")
    assert isinstance(from_rpc_error(e.value, "echo"), NotFound)
    with pytest.raises(grpc.RpcError) as e:
        call(ch, "Echo", b"bug")
    assert e.value.code() == grpc.StatusCode.INTERNAL and "tester's log" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        call(ch, "Out", b"x")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        call(ch, "Raw", b"x")
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert registry.get_sample_value("t_errors_total", {"method": "Echo", "code": "INTERNAL"}) == 1
    assert registry.get_sample_value("t_errors_total", {"method": "Raw", "code": "FAILED_PRECONDITION"}) is None
    assert registry.get_sample_value("t_calls_total", {"method": "Echo"}) >= 4
