"""Deployment: the Helm chart rendered by the real Helm engine and validated against Kubernetes'
schemas, and the Slurm recipe run end to end with stand-ins for srun and scontrol."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import MiB, free_port, random_bytes

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "memstage"
KUBE = "1.30.0"

chart = pytest.importorskip("helm_python.chart")
kubernetes_validate = pytest.importorskip("kubernetes_validate")


def render(values: dict[str, Any], chart_dir: Path = CHART) -> dict[tuple[str, str], dict[str, Any]]:
    out = chart.Chart.load(str(chart_dir)).render(values, name="ckpt", namespace="hpc")
    docs = {}
    for path, text in out.items():
        if path.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    if doc["apiVersion"] not in ("monitoring.coreos.com/v1", "cert-manager.io/v1"):  # not Kubernetes'
                        kubernetes_validate.validate(doc, KUBE, strict=True)  # raises on any schema violation
                    docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


def env(doc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(doc)["env"]}


def test_chart_lints_clean():
    report = chart.lint(str(CHART), strict=True, kube_version=f"v{KUBE}")
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report


def test_default_values():
    docs = render({})
    manager = docs[("StatefulSet", "ckpt-memstage-manager")]
    benefactor = docs[("DaemonSet", "ckpt-memstage-benefactor")]
    assert manager["spec"]["replicas"] == 1
    assert manager["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert {"readinessProbe", "livenessProbe"} <= set(container(manager)) and set(container(benefactor))
    limits = container(benefactor)["resources"]["limits"]
    assert limits["memory"] == f"{4 * 1024 + 512}Mi" and "cpu" not in limits  # donated 4Gi + headroom
    assert container(benefactor)["resources"]["requests"]["cpu"] == "100m"
    e = env(benefactor)
    assert e["MEMSTAGE_MEMORY"] == "4Gi" and e["MEMSTAGE_MANAGER"] == "ckpt-memstage-manager:7070"
    assert e["MEMSTAGE_PFS"] == "/pfs" and e["MEMSTAGE_ORPHAN_GRACE"] == "600s"
    assert env(manager)["MEMSTAGE_PERSIST_EVERY"] == "1" and env(manager)["MEMSTAGE_KEEP_VERSIONS"] == "2"
    volume = benefactor["spec"]["template"]["spec"]["volumes"][0]
    assert volume["hostPath"]["path"] == "/scratch/memstage"
    assert ("ConfigMap", "ckpt-memstage-dashboard") in docs
    # Authenticated by default: one cluster secret, mounted read-only by the manager and every benefactor.
    import base64

    key = base64.b64decode(docs[("Secret", "ckpt-memstage-cluster")]["data"]["cluster.key"]).decode().strip()
    assert len(key) == 64 and int(key, 16) >= 0
    for doc in (manager, benefactor):
        assert env(doc)["MEMSTAGE_CLUSTER_SECRET"] == "/etc/memstage/cluster.key"
        volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
        assert volumes["cluster-secret"]["secret"]["secretName"] == "ckpt-memstage-cluster"
        assert volumes["tls"]["secret"]["secretName"] == "ckpt-memstage-tls"
        assert env(doc)["MEMSTAGE_TLS_CERT"] == "/etc/memstage-tls/tls.crt" and env(doc)["MEMSTAGE_TLS_SERVER_NAME"]
    tls = docs[("Secret", "ckpt-memstage-tls")]["data"]
    assert {"ca.crt", "tls.crt", "tls.key"} <= set(tls) and b"BEGIN CERTIFICATE" in base64.b64decode(tls["ca.crt"])
    # Clients get a Secret of their own: a certificate that does not name "memstage" (a client
    # serving with it fails every peer's check of that name) and the scrapers' certificate.
    from cryptography import x509

    def names(pem: str) -> tuple[str, list[str]]:
        cert = x509.load_pem_x509_certificate(base64.b64decode(pem))
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        return str(cn), cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)

    client = docs[("Secret", "ckpt-memstage-client-tls")]["data"]
    assert names(tls["tls.crt"]) == ("memstage", ["memstage"])
    assert names(client["client.crt"])[0] == "memstage client" and "memstage" not in names(client["client.crt"])[1]
    assert names(client["metrics.crt"])[0] == "memstage metrics"
    assert client["ca.crt"] == tls["ca.crt"] and "tls.key" not in client
    # A stop drains first: Kubernetes waits longer than the drain may take, one benefactor at a time.
    assert e["MEMSTAGE_STOP_TIMEOUT"] == "600s"
    assert benefactor["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 660
    assert docs[("PodDisruptionBudget", "ckpt-memstage-benefactor")]["spec"]["maxUnavailable"] == 1
    for doc in (manager, benefactor):  # hardened containers
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container(doc)["securityContext"] == {"allowPrivilegeEscalation": False,
                                                     "readOnlyRootFilesystem": True,
                                                     "capabilities": {"drop": ["ALL"]}}
    headless = docs[("Service", "ckpt-memstage-manager-headless")]
    assert headless["spec"]["clusterIP"] == "None" and manager["spec"]["serviceName"] == headless["metadata"]["name"]
    ident = [e for e in container(benefactor)["env"] if e["name"] == "MEMSTAGE_ID"][0]
    assert ident["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"  # stable across restarts
    # Heartbeats have a port of their own, on the manager's service (benefactors are told it).
    assert env(manager)["MEMSTAGE_HEARTBEAT_LISTEN"] == "0.0.0.0:7072"
    assert {"name": "heartbeats", "containerPort": 7072} in container(manager)["ports"]
    service = docs[("Service", "ckpt-memstage-manager")]
    assert {"name": "heartbeats", "port": 7072, "targetPort": "heartbeats"} in service["spec"]["ports"]
    # So has the control port: clients dial it on the host of the manager's address, the service.
    assert env(manager)["MEMSTAGE_CONTROL_LISTEN"] == "0.0.0.0:7073"
    assert {"name": "control", "containerPort": 7073} in container(manager)["ports"]
    assert {"name": "control", "port": 7073, "targetPort": "control"} in service["spec"]["ports"]


def test_statefulset_benefactors_on_a_pvc_with_settings():
    docs = render({"benefactor": {"kind": "StatefulSet", "replicas": 6, "memory": "16Gi", "memoryHeadroom": "1Gi",
                                  "settings": {"drain_bandwidth": "500MiB", "heartbeat_interval": "10s"}},
                   "manager": {"settings": {"persist_every": 5, "keep_versions": 1, "metrics_port": 0}},
                   "pfs": {"type": "pvc", "claimName": "lustre-scratch"},
                   "metrics": {"dashboard": False, "scrapeAnnotations": False}})
    benefactor = docs[("StatefulSet", "ckpt-memstage-benefactor")]
    assert benefactor["spec"]["replicas"] == 6
    assert container(benefactor)["resources"]["limits"]["memory"] == f"{17 * 1024}Mi"
    assert env(benefactor)["MEMSTAGE_DRAIN_BANDWIDTH"] == "500MiB"
    volume = benefactor["spec"]["template"]["spec"]["volumes"][0]
    assert volume["persistentVolumeClaim"]["claimName"] == "lustre-scratch"
    manager = docs[("StatefulSet", "ckpt-memstage-manager")]
    assert env(manager)["MEMSTAGE_PERSIST_EVERY"] == "5"
    assert not any(k.startswith("prometheus.io/") for k in manager["spec"]["template"]["metadata"]["annotations"])
    assert ("ConfigMap", "ckpt-memstage-dashboard") not in docs


def test_oversubscribed_nodes_nfs_and_failure_domains():
    docs = render({"benefactor": {"memory": "1Ti", "cpu": {"request": "50m", "limit": "500m"},
                                  "priorityClassName": "spare-cores", "nodeSelector": {"memstage/spare": "true"},
                                  "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
                                  "topologyLabels": {"rack": "r17"}},
                   "pfs": {"type": "nfs", "nfs": {"server": "pfs.example", "path": "/export/scratch"}}})
    spec = docs[("DaemonSet", "ckpt-memstage-benefactor")]["spec"]["template"]
    resources = spec["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"memory": f"{1024 * 1024 + 512}Mi", "cpu": "500m"}
    assert resources["requests"]["cpu"] == "50m"
    assert spec["spec"]["priorityClassName"] == "spare-cores"
    assert spec["spec"]["tolerations"][0]["key"] == "batch"
    assert spec["metadata"]["labels"]["memstage.io/rack"] == "r17"
    env = {e["name"]: e for e in spec["spec"]["containers"][0]["env"]}
    assert env["MEMSTAGE_DOMAIN"]["value"] == "r17/$(NODE_NAME)"  # copies avoid sharing a rack, then a node
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert spec["spec"]["volumes"][0]["nfs"] == {"server": "pfs.example", "path": "/export/scratch"}


@pytest.mark.parametrize("values, message", [
    ({"benefactor": {"memory": "4GB"}}, "memory"),
    ({"pfs": {"type": "s3"}}, "type"),
    ({"pfs": {"type": "pvc"}}, "pfs.claimName is required"),
    ({"manager": {"settings": {"persist_every": "x"}}}, "persist_every"),
    ({"manager": {"settings": {"persist_evry": 2}}}, "persist_evry"),
    ({"benefactor": {"settings": {"stop_timeout": "soon"}}}, "stop_timeout"),
])
def test_bad_values_are_refused_with_the_key_named(values, message):
    with pytest.raises(Exception) as info:
        chart.Chart.load(str(CHART)).render(values, name="ckpt", namespace="hpc")
    assert message in str(info.value)


@pytest.mark.parametrize("ending", ["success", "failure", "time limit"])
def test_slurm_recipe_end_to_end(tmp_path, ending):
    """The batch script's own commands, outside Slurm: stand-ins launch its steps on this machine.
    However the application ends, its checkpoint is drained before the job does."""
    import signal
    import time

    app = tmp_path / "app.py"
    data_file = tmp_path / "expected.bin"
    data_file.write_bytes(random_bytes(6 * MiB))
    marker = tmp_path / "checkpointed"
    then = {"success": "", "failure": "sys.exit(3)\n", "time limit": "time.sleep(600)\n"}[ending]
    app.write_text(
        "import sys, time\nfrom memstage.client import Client, PermissionDenied\n"  # settings from the job script
        f"Client(namespace='job').pipe('/step10/rank0.bin', open({str(data_file)!r}, 'rb').read())\n"
        "try:\n    Client(namespace='other').pipe('/x', b'x')\nexcept PermissionDenied:\n    pass\n"
        "else:\n    sys.exit('the application could write another namespace')\n"  # was: the admin token
        f"open({str(marker)!r}, 'w').close()\n" + then)
    job = _start_recipe(tmp_path, app, "4242", SLURM_JOB_NAME="job")
    try:
        if ending == "time limit":  # Slurm's --signal=B:USR1 before the limit, to the batch shell
            deadline = time.monotonic() + 60
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            job.send_signal(signal.SIGUSR1)
        stdout, stderr = job.communicate(timeout=150)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # the job's manager and benefactors too (its process group)
            job.communicate()
    expected = {"success": 0, "failure": 3, "time limit": 128 + signal.SIGTERM}[ending]
    assert job.returncode == expected, stdout + stderr
    assert "nothing left to drain" in stdout, stdout + stderr
    assert not (tmp_path / "secrets").exists()  # the job's secret and token leave with it
    out = tmp_path / "restored.bin"
    restored = subprocess.run([sys.executable, "-m", "memstage", "restore", "--pfs", str(tmp_path / "pfs"),
                               "--namespace", "job", "/step10/rank0.bin", "--out", str(out)],
                              capture_output=True, text=True, timeout=60)
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == data_file.read_bytes()
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).count(str(tmp_path))]
    assert leftovers == [], [_cmdline(p) for p in leftovers]  # the script stopped every step it started


def _start_recipe(tmp_path: Path, app: Path, job_id: str, **env: str) -> subprocess.Popen[str]:
    """The batch script, run by bash with stand-ins for Slurm's commands, on this machine."""
    fake = ROOT / "tests" / "fake_slurm"
    env_vars = {
        **os.environ,
        "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": job_id, "SLURM_SUBMIT_DIR": str(tmp_path),
        "MEMSTAGE_HOST": "127.0.0.1", "MEMSTAGE_BIND": "127.0.0.1", "MEMSTAGE_PORT": str(free_port()),
        "MEMSTAGE_MEMORY": "32MiB", "MEMSTAGE_PFS": str(tmp_path / "pfs"),
        "MEMSTAGE": f"{sys.executable} -m memstage", "MEMSTAGE_SECRETS": str(tmp_path / "secrets"),
        "TMPDIR": str(tmp_path),  # the recipe's state goes under it: each job starts with a new one
        **env,
    }
    return subprocess.Popen(["bash", str(ROOT / "examples" / "slurm" / "memstage-job.sbatch"), sys.executable,
                             str(app)], env=env_vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_a_slurm_job_chain_restarts_from_the_previous_jobs_checkpoint(tmp_path):
    """Two jobs of one chain (one namespace, one PFS): the second job's application reads the
    checkpoint the first one wrote, at the path it wrote it, through its own new deployment."""
    data = random_bytes(3 * MiB)
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    (tmp_path / "data.bin").write_bytes(data)
    first.write_text("from memstage.client import Client\n"  # MEMSTAGE_NAMESPACE comes from the job script
                     f"Client().pipe('/ckpt/step_10/rank0.bin', open({str(tmp_path / 'data.bin')!r}, 'rb').read())\n")
    # The restart finds the checkpoint in memory already: the job script prefetched it.
    second.write_text("from memstage.client import Client\n"
                      "c = Client()\n"
                      "assert c.versions('/ckpt/step_10/rank0.bin')[-1]['in_memory']\n"
                      f"assert c.cat('/ckpt/step_10/rank0.bin') == open({str(tmp_path / 'data.bin')!r}, "
                      "'rb').read()\n")
    for app, job_id in ((first, "501"), (second, "502")):
        # No namespace given: jobs of one name share one (the default), as a chain resubmitted does.
        job = _start_recipe(tmp_path, app, job_id, SLURM_JOB_NAME="train run/42")
        try:
            stdout, stderr = job.communicate(timeout=150)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.communicate()
        assert job.returncode == 0, stdout + stderr
    assert "prefetched the latest checkpoint below /: 1 files, 3.0 MiB of 3.0 MiB in memory" in stdout, stdout
    assert (tmp_path / "pfs" / "train_run_42" / "ckpt" / "step_10").is_dir()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_the_schema_names_every_setting_a_role_takes_from_the_chart():
    import dataclasses
    import json

    from memstage.settings import BenefactorSettings, ManagerSettings

    schema = json.loads((CHART / "values.schema.json").read_text())["definitions"]
    tls = {"tls_cert", "tls_key", "tls_ca", "tls_server_name"}
    set_by_chart = {"manager": {"listen", "heartbeat_listen", "control_listen", "state", "cluster_secret", "policies",
                                *tls},
                    "benefactor": {"manager", "listen", "advertise", "data_listen", "memory", "pfs", "id", "domain",
                                   "cluster_secret", *tls}}
    for role, cls in (("manager", ManagerSettings), ("benefactor", BenefactorSettings)):
        expected = {f.name for f in dataclasses.fields(cls)} - set_by_chart[role]
        assert set(schema[f"{role}Settings"]["properties"]) == expected, role


def test_the_prometheus_operator_scrapes_with_the_scrapers_certificate():
    """Pod annotations present no certificate (the deployment's series only); with the Prometheus
    Operator, a ServiceMonitor and a PodMonitor scrape with metrics.crt, which sees every series."""
    assert not any(kind in ("ServiceMonitor", "PodMonitor") for kind, _ in render({}))
    docs = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    manager = docs[("ServiceMonitor", "ckpt-memstage-manager")]["spec"]["endpoints"][0]
    benefactor = docs[("PodMonitor", "ckpt-memstage-benefactor")]["spec"]["podMetricsEndpoints"][0]
    for endpoint in (manager, benefactor):
        assert endpoint["scheme"] == "https" and endpoint["tlsConfig"]["serverName"] == "memstage"
        assert endpoint["tlsConfig"]["cert"]["secret"] == {"name": "ckpt-memstage-client-tls", "key": "metrics.crt"}
        assert endpoint["tlsConfig"]["keySecret"] == {"name": "ckpt-memstage-client-tls", "key": "metrics.key"}


def test_namespace_policies_from_values_reach_the_manager():
    docs = render({"manager": {"policies": {"run42": {"quota_memory": "8Gi", "quota_sessions": 16}}}})
    value = env(docs[("StatefulSet", "ckpt-memstage-manager")])["MEMSTAGE_POLICIES"]
    from memstage.manager.policyfile import parse_policies

    assert parse_policies(value) == {"run42": {"quota_memory": 8 << 30, "quota_sessions": 16}}
    assert "MEMSTAGE_POLICIES" not in env(render({})[("StatefulSet", "ckpt-memstage-manager")])


def test_with_cert_manager_each_side_gets_certificates_of_its_own_use():
    docs = render({"tls": {"certManager": {"enabled": True}}, "metrics": {"serviceMonitor": {"enabled": True}}})
    assert ("Secret", "ckpt-memstage-tls") not in docs  # cert-manager issues them instead
    usages = {name: doc["spec"]["usages"] for (kind, name), doc in docs.items() if kind == "Certificate"
              and not doc["spec"].get("isCA")}
    assert usages == {"ckpt-memstage-tls": ["server auth", "client auth"],
                      "ckpt-memstage-client-tls": ["client auth"], "ckpt-memstage-metrics-tls": ["client auth"]}
    assert docs[("Certificate", "ckpt-memstage-tls")]["spec"]["dnsNames"] == ["memstage"]
    endpoint = docs[("ServiceMonitor", "ckpt-memstage-manager")]["spec"]["endpoints"][0]
    assert endpoint["tlsConfig"]["cert"]["secret"] == {"name": "ckpt-memstage-metrics-tls", "key": "tls.crt"}
    manager = docs[("StatefulSet", "ckpt-memstage-manager")]
    volumes = {v["name"]: v for v in manager["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "ckpt-memstage-tls"  # the roles' Certificate's Secret
