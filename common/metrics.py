"""Prometheus plumbing shared by every role: the /metrics server and the bandwidth buckets.

Each role builds its own CollectorRegistry (never the global one), so several roles can share a
process without duplicate registrations, and tests read values with registry.get_sample_value.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from memstage.errors import SettingError

log = logging.getLogger(__name__)

# 1 MB/s .. 100 GB/s, three steps a decade: OAB and ASB of a checkpoint land well inside.
BANDWIDTH_BUCKETS = tuple(m * 10**e for e in range(6, 11) for m in (1, 2.5, 5)) + (1e11,)


def serve_metrics(registry: CollectorRegistry, port: int, host: str, certfile: str = "", keyfile: str = "",
                  client_ca: str = "") -> Any | None:
    """Serve /metrics on host:port (port 0 = off), over HTTPS when given the role's TLS certificate
    (scrapers verify it with the deployment's CA), and with `client_ca` only to scrapers presenting
    a certificate signed by it (the metrics name namespaces). Returns the server, to shut down at exit."""
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry, certfile=certfile or None,
                                            keyfile=keyfile or None, client_cafile=client_ca or None,
                                            client_auth_required=bool(certfile and client_ca))
    except OSError as e:
        raise SettingError(f"--metrics-port: cannot listen on {host}:{port} ({e.strerror})") from None
    log.info("metrics on %s://%s:%d/metrics%s", "https" if certfile else "http", host, port,
             " (client certificates required)" if certfile and client_ca else "")
    return server
