"""The Helm chart's operator settings (service account, probes, network policy, secrets kept or
given, the benefactors' governing Service, the PFS directory, the dashboard's variables), each
rendered by the real Helm engine and validated against Kubernetes' schemas; and the health check
the chart's probes run, against real servers."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest
from test_deploy import CHART, KUBE, chart, container, render

pytestmark = pytest.mark.timeout(120)


def pod(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def roles(docs: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    kind = "DaemonSet" if ("DaemonSet", "ckpt-memstage-benefactor") in docs else "StatefulSet"
    return [docs[("StatefulSet", "ckpt-memstage-manager")], docs[(kind, "ckpt-memstage-benefactor")]]


def lints(values: dict[str, Any]) -> None:
    report = chart.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE}")
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report


# -- the health check the probes run ------------------------------------------------------------


def health(address: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memstage", "health", *flags, "--timeout", "5s", address],
                          capture_output=True, text=True, timeout=60)


def test_the_probes_health_check_asks_real_servers_over_their_tls(local_cluster):
    """What the chart's probes run: `memstage health` with the roles' certificate and no token, on
    a deployment that requires both. Plaintext (what Kubernetes' own grpc probe speaks) is refused."""
    cluster = local_cluster(benefactors=1, secure=True, tls=True)
    for address in (cluster.manager_address, cluster.benefactors[0].address):
        asked = health(address, *cluster.tls_flags)
        assert asked.returncode == 0 and asked.stdout.strip() == "SERVING", asked.stderr
        plain = health(address)
        assert plain.returncode == 1 and "cannot be asked" in plain.stderr
    # A stopped role is not reported serving.
    address = cluster.benefactors[0].address
    cluster.benefactors[0].stop(timeout=10)
    assert health(address, *cluster.tls_flags).returncode == 1
