"""Prometheus plumbing shared by every role: the /metrics server and the bandwidth buckets.

Each role builds its own CollectorRegistry (never the global one), so several roles can share a
process without duplicate registrations, and tests read values with registry.get_sample_value.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from memstage.errors import SettingError

log = logging.getLogger(__name__)

# 1 MB/s .. 100 GB/s, three steps a decade: OAB and ASB of a checkpoint land well inside.
BANDWIDTH_BUCKETS = tuple(m * 10**e for e in range(6, 11) for m in (1, 2.5, 5)) + (1e11,)


# Who may read series that name namespaces: the roles' certificate and the scrapers' (metrics.pem);
# anyone else the port lets in (a tenant's client certificate, or no certificate where
# metrics_without_client_cert is set) reads the deployment-level series only.
FULL_VIEW = frozenset({"memstage", "memstage metrics"})


class _WithoutNamespaces:
    """A registry's collect() without the metric families that carry a namespace label."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if not any("namespace" in sample.labels for sample in family.samples):
                yield family


def _common_name(cert: dict[str, Any] | None) -> str:
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def serve_metrics(registry: CollectorRegistry, port: int, host: str, certfile: str = "", keyfile: str = "",
                  client_ca: str = "", require_client_cert: bool = True) -> Any | None:
    """Serve /metrics on host:port (port 0 = off), over HTTPS when given the role's TLS certificate
    (scrapers verify it with the deployment's CA). With `client_ca`, scrapers present a certificate
    signed by it (unless require_client_cert is off); series that name namespaces go only to the
    roles' and the scrapers' certificates (FULL_VIEW), or to anyone when there is no TLS at all.
    Returns the server, to shut down at exit."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            full = not certfile
            if certfile and isinstance(self.connection, ssl.SSLSocket):
                full = _common_name(self.connection.getpeercert()) in FULL_VIEW
            body = generate_latest(registry if full else _WithoutNamespaces(registry))  # type: ignore[arg-type]
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the http.server name)
            log.debug("metrics: " + format, *args)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise SettingError(f"--metrics-port: cannot listen on {host}:{port} ({e.strerror})") from None
    server.daemon_threads = True
    if certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        if client_ca:
            context.load_verify_locations(client_ca)
            context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on %s://%s:%d/metrics%s", "https" if certfile else "http", host, port,
             " (client certificates required)" if certfile and client_ca and require_client_cert else "")
    return server
