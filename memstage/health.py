"""The standard gRPC health service (grpc.health.v1.Health) on a role's gRPC server, and the check
that `memstage health` (the Helm chart's probes) makes with it.

The service answers Check only: SERVING from the moment the role's server has started until it
stops. It needs no token (it tells nothing but that), so the roles' boundary lets it through; on a
TLS port it still needs a certificate of the deployment, which is why Kubernetes' own `grpc:`
probe (plaintext) cannot ask it there and the chart runs `memstage health` in the pod instead.
Watch is refused: an open stream holds a server thread for as long as its caller likes, and a
caller that needs no token must not be able to hold many.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from memstage.rpc import channel
from memstage.tls import Tls


class CheckOnlyHealth(health.HealthServicer):  # type: ignore[misc]
    """grpc's own servicer, Watch left out (see the module's doc)."""

    def Watch(self, request: Any, context: grpc.ServicerContext, send_response_callback: Any = None) -> Any:  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "memstage answers Check only")


def add_health(server: grpc.Server) -> CheckOnlyHealth:
    """The health service on `server`, NOT_SERVING until the role says it serves (`serving`)."""
    servicer = CheckOnlyHealth()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def serving(servicer: CheckOnlyHealth) -> None:
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)


def check(address: str, tls: Tls | None, timeout: float) -> str:
    """The status a role at HOST:PORT reports (SERVING, NOT_SERVING, ...); grpc.RpcError if it
    cannot be asked (down, or TLS settings it refuses)."""
    with channel(address, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
