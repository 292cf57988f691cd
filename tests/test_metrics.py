"""Metrics: values in the registries, a real Prometheus scraping a real deployment, the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import MiB, free_port, random_bytes, wait_for

from memstage.benefactor.server import create_server as create_benefactor
from memstage.client import Client, NotFound
from memstage.manager.server import create_server as create_manager
from memstage.settings import BenefactorSettings, ManagerSettings

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def in_process(tmp_path):
    """A manager and two benefactors in this one process, each with its own registry."""
    manager = create_manager(ManagerSettings(listen="127.0.0.1:0", state=str(tmp_path / "state"),
                                             heartbeat_interval=0.3, metrics_port=free_port()))
    manager.start()
    secrets = tmp_path / "state" / "secrets"  # secure, as a manager is by default
    benefactors = [create_benefactor(BenefactorSettings(manager=manager.address, memory=32 * MiB,
                                                        pfs=str(tmp_path / "pfs"), heartbeat_interval=0.3,
                                                        metrics_port=free_port(),
                                                        cluster_secret=str(secrets / "cluster.key")))
                   for _ in range(2)]
    for b in benefactors:
        b.start()
    client = Client(manager=manager.address, namespace="metrics-test", full_wait="1s",
                    token=(secrets / "admin.token").read_text().strip())
    wait_for(lambda: manager.registry.get_sample_value("memstage_benefactors_alive") == 2, what="2 benefactors")
    yield manager, benefactors, client
    client.connections.close()
    for b in benefactors:
        b.stop()
    manager.stop()


def test_commit_feeds_histograms_and_counters(in_process):
    manager, benefactors, client = in_process
    data = random_bytes(4 * MiB)
    client.pipe("/a", data)
    client.pipe("/b", data)  # deduplicated: nothing sent
    value = manager.registry.get_sample_value
    ns = {"namespace": "metrics-test"}
    assert value("memstage_oab_bytes_per_second_count", ns) == 2
    assert value("memstage_asb_bytes_per_second_count", ns) == 2
    assert value("memstage_oab_bytes_per_second_sum", ns) > 0
    assert value("memstage_client_bytes_written_total", ns) == 8 * MiB
    assert value("memstage_client_bytes_sent_total", ns) == 4 * MiB
    assert value("memstage_client_bytes_deduplicated_total", ns) == 4 * MiB
    assert value("memstage_commits_total", ns) == 2
    received = sum(b.registry.get_sample_value("memstage_benefactor_received_bytes_total") for b in benefactors)
    assert received == 4 * MiB
    for b in benefactors:
        assert b.registry.get_sample_value("memstage_memory_capacity_bytes") == 32 * MiB
    wait_for(lambda: sum(value("memstage_drained_bytes_total", {"benefactor": b.id}) or 0 for b in benefactors)
             == 4 * MiB, what="the drain to show in the manager's metrics")
    # /a and /b share their chunks: 4 MiB of chunk files on the PFS.
    wait_for(lambda: value("memstage_namespace_pfs_bytes", ns) == 4 * MiB, what="the PFS bytes of the namespace")
    labels = {"method": "Lookup", "code": "NOT_FOUND"}
    before = value("memstage_rpc_errors_total", labels) or 0  # a new file's open-time dedup lookup counts too
    with pytest.raises(NotFound):
        client.cat("/missing")
    assert value("memstage_rpc_errors_total", labels) == before + 1


def test_every_role_serves_metrics_over_http(in_process):
    manager, benefactors, client = in_process
    client.pipe("/x", b"x" * 1000)
    for role in [manager, *benefactors]:
        port = role.settings.metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "memstage_memory_used_bytes" in text


def test_dashboard_queries_only_metrics_that_exist(in_process):
    manager, _, client = in_process
    client.pipe("/d", random_bytes(MiB))
    exported = {m.name for m in manager.registry.collect()}
    dashboard = json.loads((ROOT / "helm" / "memstage" / "dashboards" / "memstage.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count|total)$", "", name) for e in exprs for name in re.findall(r"memstage_\w+", e)}
    assert used and used <= exported, used - exported


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus package is not installed")
def test_real_prometheus_scrapes_a_real_deployment(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=0)
    cluster.manager.stop()  # restart the manager with /metrics on
    metrics_port = free_port()
    cluster.manager = None
    from memstage.procs import spawn

    cluster.manager = spawn("manager", ["--insecure", "--listen", "127.0.0.1:0", "--state", cluster.state,
                                        "--heartbeat-interval", "0.5s", "--metrics-port", str(metrics_port),
                                        "--log-level", "warning"])
    cluster.manager_address = cluster.manager.address
    benefactor_metrics = free_port()
    cluster.add_benefactor(64 * MiB, "--metrics-port", str(benefactor_metrics))
    web = free_port()
    # Both roles are scraped, as the shipped scrape config does: the dashboard must count each once.
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
        f"  - job_name: memstage\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}', "
        f"'127.0.0.1:{benefactor_metrics}']\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def query(expr: str) -> list[dict[str, object]]:
            url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                body = json.loads(urllib.request.urlopen(url, timeout=5).read())
            except OSError:
                return []
            return body["data"]["result"] if body.get("status") == "success" else []

        c = cluster.client()
        expr = "histogram_quantile(0.5, sum by (le) (rate(memstage_oab_bytes_per_second_bucket[1m])))"
        deadline = time.monotonic() + 60
        result: list[dict[str, object]] = []
        step = 0
        while not result and time.monotonic() < deadline:
            c.pipe(f"/ck{step}", random_bytes(2 * MiB))  # checkpoints keep coming while Prometheus scrapes
            step += 1
            time.sleep(0.5)
            result = query(expr)
        assert result, "Prometheus never answered the OAB quantile"
        assert float(result[0]["value"][1]) > 0  # type: ignore[index]
        # The shipped dashboard's own queries give the totals `memstage status` gives.
        dashboard = json.loads((Path(__file__).resolve().parent.parent / "helm" / "memstage" / "dashboards" /
                                "memstage.json").read_text())
        # Its variables as Grafana fills them in: the deployment's scrape job and its manager.
        variables = {"$__rate_interval": "1m", "$job": "memstage", "$instance": f"127.0.0.1:{metrics_port}"}
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        for name, value in variables.items():
            exprs = [e.replace(name, value) for e in exprs]
        capacity_expr = next(e for e in exprs if "memstage_memory_capacity_bytes" in e)
        used_expr = next(e for e in exprs if "memstage_memory_used_bytes" in e)

        def agrees() -> bool:
            status = cluster.status()
            capacity, used = query(capacity_expr), query(used_expr)
            return bool(capacity and used) and (
                float(capacity[0]["value"][1]) == sum(b["memory_capacity"] for b in status["benefactors"])  # type: ignore[index]
                and float(used[0]["value"][1]) == sum(b["memory_used"] for b in status["benefactors"]))  # type: ignore[index]

        wait_for(agrees, timeout=30, what="the dashboard's memory totals to equal memstage status")
        assert float(query(capacity_expr)[0]["value"][1]) == 64 * MiB  # type: ignore[index]  # once, not twice
    finally:
        prom.terminate()
        prom.wait(timeout=30)


def test_per_benefactor_series_are_bounded_and_the_rest_summed():
    """At 100k benefactors one series each would be 600k series: beyond metrics_benefactors they are
    summed into benefactor="(others)", keeping those that need looking at (stuck, backlog) named."""
    from prometheus_client import CollectorRegistry, generate_latest

    from memstage.manager.metrics import OTHERS, ManagerMetrics
    from memstage.proto import manager_pb2

    reply = manager_pb2.StatusReply(benefactors=[
        manager_pb2.BenefactorStatus(id=f"b{i}", alive=True, drain_backlog_bytes=i, oldest_undrained_age_seconds=i,
                                     stats=manager_pb2.BenefactorStats(memory_capacity=100, memory_used=i,
                                                                       drain_error="PFS full" if i == 3 else ""))
        for i in range(10)])
    registry = CollectorRegistry()
    ManagerMetrics(registry, lambda: reply, per_benefactor=3)
    text = generate_latest(registry).decode()
    used = {line.split('benefactor="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("memstage_memory_used_bytes{")}
    assert set(used) == {"b3", "b9", "b8", OTHERS}  # the stuck one, then the largest backlogs
    assert sum(used.values()) == sum(range(10))
    ages = [line for line in text.splitlines() if line.startswith("memstage_drain_oldest_undrained_seconds{")]
    assert f'benefactor="{OTHERS}"}} 7.0' in "\n".join(ages)  # the oldest of the others
