"""A role's server boundary, as one gRPC server interceptor: it authenticates every call, counts
calls and errors, and turns domain errors into status codes. Servicers below it raise
`MemstageError`s and read the authenticated caller with `current_caller()`; they never abort.

A role gives an `Authenticator`: (method name, metadata, request) -> caller, raising
`Unauthenticated` or `PermissionDenied`. For calls whose requests stream in, the request is None
(the credential is judged when the stream starts; what depends on the first message is checked
by the servicer, with the caller).

The standard health service (memstage.health) passes untouched: it tells only whether the role
serves, and probes ask it without a token, every few seconds (not counted as calls).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from memstage.errors import MemstageError, PermissionDenied, Unauthenticated, to_rpc_detail

log = logging.getLogger(__name__)

HEALTH_SERVICE = "/grpc.health.v1.Health/"

Metadata = tuple[tuple[str, Any], ...]
Authenticator = Callable[[str, Metadata, Any], Any]

_caller: contextvars.ContextVar[Any] = contextvars.ContextVar("memstage_caller", default=None)


def current_caller() -> Any:
    """The caller the boundary authenticated for the call this thread serves (None outside a call)."""
    return _caller.get()


class Counter(Protocol):
    def labels(self, *values: str) -> Any: ...


@dataclass(frozen=True)
class CallMetrics:
    """Counters labelled (method) and (method, code); either may be absent."""

    calls: Counter | None = None
    errors: Counter | None = None


class Boundary(grpc.ServerInterceptor):  # type: ignore[misc]
    """One role's boundary (see the module's doc). `role` names the process in messages;
    `authenticate` None lets every call through with caller None (an insecure deployment)."""

    def __init__(self, role: str, authenticate: Authenticator | None, metrics: CallMetrics | None = None) -> None:
        self.role = role
        self._authenticate = authenticate
        self._metrics = metrics or CallMetrics()
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (its handler, that handler wrapped)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_SERVICE):
            return handler
        # A method's handler is the same object at every call: wrap it once (metadata calls are
        # the manager's hot path).
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(details.method.rsplit("/", 1)[-1], handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, name: str, handler: Any) -> Any:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.unary(name, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(name, handler.unary_stream, True), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self.unary(name, handler.stream_unary, streamed=True), handler.request_deserializer,
                handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(name, handler.stream_stream, False), handler.request_deserializer,
            handler.response_serializer)

    def _enter(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        if self._metrics.calls is not None:
            self._metrics.calls.labels(name).inc()
        caller = None
        if self._authenticate is not None:
            caller = self._authenticate(name, tuple(context.invocation_metadata() or ()), request)
        _caller.set(caller)

    def unary(self, name: str, behaviour: Callable[[Any, Any], Any], streamed: bool = False
              ) -> Callable[[Any, grpc.ServicerContext], Any]:
        """`behaviour` behind the boundary: what serves a unary call, whether it came by gRPC or by
        another port whose context aborts as gRPC's does (the manager's control port)."""

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                self._enter(name, None if streamed else request, context)
                return behaviour(request, context)
            except Exception as e:  # noqa: BLE001 - the one place errors become status codes
                self._abort(name, e, context)

        return call

    def _streaming(self, name: str, behaviour: Callable[[Any, Any], Iterator[Any]], unary_request: bool
                   ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                self._enter(name, request if unary_request else None, context)
                yield from behaviour(request, context)
            except Exception as e:  # noqa: BLE001
                self._abort(name, e, context)

        return call

    def _abort(self, name: str, error: Exception, context: grpc.ServicerContext) -> None:
        if context.code() is not None:  # type: ignore[attr-defined]  # aborted below us: the status is set
            raise error
        if isinstance(error, MemstageError):
            code, detail = error.code, to_rpc_detail(error)
            if isinstance(error, Unauthenticated | PermissionDenied):
                log.warning("%s refused %s from %s: %s", self.role, name, context.peer(), error)
        else:
            code, detail = grpc.StatusCode.INTERNAL, f"{name}: internal error (see the {self.role}'s log)"
            log.error("%s failed", name, exc_info=error)
        if self._metrics.errors is not None:
            self._metrics.errors.labels(name, code.name).inc()
        context.abort(code, detail)
