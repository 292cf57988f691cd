"""The Helm chart's operator settings (service account, probes, network policy, secrets kept or
given, the benefactors' governing Service, the PFS directory, the dashboard's variables), each
rendered by the real Helm engine and validated against Kubernetes' schemas; and the health check
the chart's probes run, against real servers."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_deploy import CHART, KUBE, chart, container, render
from test_deploy import env as env_of

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


# -- Secrets: kept, given, renewed ----------------------------------------------------------------


def certificate(pem_b64: str) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(base64.b64decode(pem_b64))


def days_left(pem_b64: str) -> float:
    import datetime

    cert = certificate(pem_b64)
    return (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400


def test_the_charts_own_secrets_are_kept_and_certificates_last_the_days_asked():
    docs = render({"tls": {"selfSigned": {"days": 90, "caDays": 1000}}})
    for name in ("ckpt-memstage-cluster", "ckpt-memstage-tls", "ckpt-memstage-client-tls"):
        assert docs[("Secret", name)]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", name
    tls = docs[("Secret", "ckpt-memstage-tls")]
    client = docs[("Secret", "ckpt-memstage-client-tls")]["data"]
    for pem in (tls["data"]["tls.crt"], client["client.crt"], client["metrics.crt"]):
        assert 89 < days_left(pem) <= 90
    assert 999 < days_left(tls["data"]["ca.crt"]) <= 1000
    expires = tls["metadata"]["annotations"]["memstage.io/tls-expires"]
    assert abs(int(expires) - certificate(tls["data"]["tls.crt"]).not_valid_after_utc.timestamp()) < 60
    for doc in roles(docs):  # a renewal changes it, which restarts the pods
        assert doc["spec"]["template"]["metadata"]["annotations"]["memstage.io/tls-expires"] == expires
    assert 364 < days_left(render({})[("Secret", "ckpt-memstage-tls")]["data"]["tls.crt"]) <= 365  # the default


def test_existing_secrets_are_mounted_and_the_chart_makes_none():
    docs = render({"clusterSecret": {"existingSecret": "site-cluster"},
                   "tls": {"existingSecret": "site-tls", "existingClientSecret": "site-client-tls"},
                   "metrics": {"serviceMonitor": {"enabled": True}}})
    assert [name for kind, name in docs if kind == "Secret"] == []
    for doc in roles(docs):
        volumes = {v["name"]: v for v in pod(doc)["volumes"]}
        assert volumes["cluster-secret"]["secret"]["secretName"] == "site-cluster"
        assert volumes["tls"]["secret"]["secretName"] == "site-tls"
        assert "memstage.io/tls-expires" not in doc["spec"]["template"]["metadata"].get("annotations", {})
    endpoint = docs[("ServiceMonitor", "ckpt-memstage-manager")]["spec"]["endpoints"][0]
    assert endpoint["tlsConfig"]["cert"]["secret"] == {"name": "site-client-tls", "key": "metrics.crt"}


@pytest.mark.parametrize("values, message", [
    ({"tls": {"existingSecret": "site-tls"}}, "tls.existingClientSecret"),
    ({"tls": {"existingSecret": "a", "existingClientSecret": "b", "certManager": {"enabled": True}}},
     "tls.existingSecret"),
    ({"tls": {"selfSigned": {"days": 30, "renewBeforeDays": 30}}}, "renewBeforeDays"),
    ({"tls": {"selfSigned": {"days": 0}}}, "days"),
    ({"clusterSecret": {"existingSecret": "Not_A_Name"}}, "existingSecret"),
])
def test_bad_secret_settings_are_refused_with_the_key_named(values, message):
    with pytest.raises(Exception) as info:
        chart.Chart.load(str(CHART)).render(values, name="ckpt", namespace="hpc")
    assert message in str(info.value)


@pytest.fixture
def chart_seeing(tmp_path):
    """A copy of the chart whose `lookup` of Secrets reads values.clusterState instead of a cluster
    (the Helm engine here has none): what an upgrade sees."""
    import shutil

    copy = tmp_path / "memstage"
    shutil.copytree(CHART, copy)
    for path in (copy / "templates").iterdir():
        text = path.read_text()
        path.write_text(text.replace('lookup "v1" "Secret" .Release.Namespace',
                                     "get (.Values.clusterState | default dict)"))
    return copy


def test_an_upgrade_keeps_the_secrets_and_renews_certificates_near_their_end(chart_seeing):
    import time

    from test_deploy import render as render_chart

    first = render_chart({}, chart_seeing)
    state = {name: doc for (kind, name), doc in first.items() if kind == "Secret"}
    again = render_chart({"clusterState": state}, chart_seeing)
    for name, doc in state.items():  # kept as they are
        assert again[("Secret", name)]["data"] == doc["data"], name
        assert again[("Secret", name)]["metadata"] == doc["metadata"], name
    expires = state["ckpt-memstage-tls"]["metadata"]["annotations"]["memstage.io/tls-expires"]
    assert roles(again)[1]["spec"]["template"]["metadata"]["annotations"]["memstage.io/tls-expires"] == expires

    # Within renewBeforeDays of their end (or from a release that did not say when): new
    # certificates from the same CA, the pods restarted; the cluster secret stays.
    for soon in (str(int(time.time()) + 10 * 86400), None):
        aged = json.loads(json.dumps(state))
        annotations = aged["ckpt-memstage-tls"]["metadata"]["annotations"]
        if soon is None:
            del annotations["memstage.io/tls-expires"]
        else:
            annotations["memstage.io/tls-expires"] = soon
        renewed = render_chart({"clusterState": aged}, chart_seeing)
        tls = renewed[("Secret", "ckpt-memstage-tls")]
        client = renewed[("Secret", "ckpt-memstage-client-tls")]["data"]
        assert tls["data"]["ca.crt"] == state["ckpt-memstage-tls"]["data"]["ca.crt"]
        assert tls["data"]["tls.crt"] != state["ckpt-memstage-tls"]["data"]["tls.crt"]
        assert client["client.crt"] != state["ckpt-memstage-client-tls"]["data"]["client.crt"]
        assert 364 < days_left(tls["data"]["tls.crt"]) <= 365
        ca = certificate(tls["data"]["ca.crt"])
        for pem in (tls["data"]["tls.crt"], client["client.crt"], client["metrics.crt"]):
            certificate(pem).verify_directly_issued_by(ca)
        new = tls["metadata"]["annotations"]["memstage.io/tls-expires"]
        assert new != soon and int(new) >= int(expires)
        for doc in roles(renewed):  # changed from what the pods had: they restart
            assert doc["spec"]["template"]["metadata"]["annotations"]["memstage.io/tls-expires"] == new
        assert renewed[("Secret", "ckpt-memstage-cluster")]["data"] == state["ckpt-memstage-cluster"]["data"]


# -- the pods: identity, placement, probes, a read-only root ----------------------------------------


def test_pods_run_under_their_service_account_without_a_token():
    docs = render({"serviceAccount": {"annotations": {"iam.example/role": "pfs-writer"}},
                   "imagePullSecrets": [{"name": "regcred"}]})
    account = docs[("ServiceAccount", "ckpt-memstage")]
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["annotations"] == {"iam.example/role": "pfs-writer"}
    for doc in roles(docs):
        assert pod(doc)["serviceAccountName"] == "ckpt-memstage"
        assert pod(doc)["automountServiceAccountToken"] is False
        assert pod(doc)["imagePullSecrets"] == [{"name": "regcred"}]
    docs = render({"serviceAccount": {"create": False, "name": "site-account"}})
    assert not any(kind == "ServiceAccount" for kind, _ in docs)
    assert {pod(doc)["serviceAccountName"] for doc in roles(docs)} == {"site-account"}
    assert all("imagePullSecrets" not in pod(doc) for doc in roles(docs))


def test_each_role_is_placed_by_its_own_affinity_node_selector_and_tolerations():
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "node-role/io", "operator": "In", "values": ["true"]}]}]}}}
    spread = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": {"app": "x"}}}}]}}
    toleration = [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]
    docs = render({"manager": {"affinity": affinity, "nodeSelector": {"disk": "ssd"}},
                   "benefactor": {"kind": "StatefulSet", "affinity": spread, "tolerations": toleration}})
    manager, benefactor = roles(docs)
    assert pod(manager)["affinity"] == affinity and pod(manager)["nodeSelector"] == {"disk": "ssd"}
    assert "tolerations" not in pod(manager)
    assert pod(benefactor)["affinity"] == spread and pod(benefactor)["tolerations"] == toleration
    assert "nodeSelector" not in pod(benefactor)
    lints({"manager": {"affinity": affinity}, "benefactor": {"affinity": spread}})


def test_probes_ask_the_health_service_over_tls_with_the_roles_certificate():
    docs = render({"benefactor": {"startSeconds": 1200}})
    for doc, port, start in zip(roles(docs), (7070, 7071), (600, 1200), strict=True):
        c = container(doc)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = c[probe]["exec"]["command"]
            assert command[:2] == ["memstage", "health"] and command[-1] == f"127.0.0.1:{port}", probe
            flags = dict(zip(command[2:-1:2], command[3:-1:2], strict=True))
            assert flags == {"--tls-ca": "/etc/memstage-tls/ca.crt", "--tls-cert": "/etc/memstage-tls/tls.crt",
                             "--tls-key": "/etc/memstage-tls/tls.key", "--tls-server-name": "memstage",
                             "--timeout": "4s"}
            mounted = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/etc/memstage-tls" in mounted
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] == start
        assert "tcpSocket" not in c["livenessProbe"]
    # The flags the probe gives are the command's own.
    from memstage.cli.parser import build_parser

    args = build_parser().parse_args(container(roles(docs)[0])["livenessProbe"]["exec"]["command"][1:])
    assert args.command == "health" and args.tls_server_name == "memstage" and args.address == "127.0.0.1:7070"


def test_the_root_file_system_is_read_only_and_tmp_is_writable():
    for doc in roles(render({})):
        c = container(doc)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod(doc)["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
        # What each process writes is on a volume: the manager's state, the benefactor's PFS.
        assert ("/state" if doc["kind"] == "StatefulSet" else "/pfs") in mounts
        assert not mounts.get("/state", mounts.get("/pfs", {})).get("readOnly")


# -- the benefactors' Service and PFS -------------------------------------------------------------


def test_statefulset_benefactors_have_the_governing_service_they_name():
    docs = render({"benefactor": {"kind": "StatefulSet"}})
    benefactor = docs[("StatefulSet", "ckpt-memstage-benefactor")]
    service = docs[("Service", benefactor["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"
    labels = benefactor["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [{"name": "grpc", "port": 7071, "targetPort": "grpc"}]
    assert ("Service", "ckpt-memstage-benefactor") not in render({})  # a DaemonSet names none


def test_the_pfs_host_directory_must_exist_and_be_writable_by_the_benefactors(tmp_path):
    import os

    docs = render({})
    spec = pod(docs[("DaemonSet", "ckpt-memstage-benefactor")])
    assert spec["volumes"][0]["hostPath"] == {"path": "/scratch/memstage", "type": "Directory"}
    assert [c["name"] for c in spec["initContainers"]] == ["check-pfs"]  # no root step unless asked
    check = spec["initContainers"][0]
    assert check["securityContext"]["readOnlyRootFilesystem"] is True
    assert check["volumeMounts"] == [{"name": "pfs", "mountPath": "/pfs"}]

    # The check itself, run by sh as uid 10001 (as root here: dropping to it) on a directory that
    # root owns, as the kubelet makes it, then on one given to uid 10001, as prepare-pfs does.
    import shutil
    import tempfile

    as_10001: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to run the check as uid 10001")
        as_10001 = ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups"]
    top = Path(tempfile.mkdtemp())
    try:
        top.chmod(0o755)
        pfs = top / "pfs"
        pfs.mkdir(mode=0o755)
        script = check["command"][2].replace("/pfs", str(pfs))
        run = [*as_10001, *check["command"][:2], script]
        if as_10001:
            refused = subprocess.run(run, capture_output=True, text=True, timeout=30)
            os.chown(pfs, 10001, 10001)
        else:
            pfs.chmod(0o555)
            refused = subprocess.run(run, capture_output=True, text=True, timeout=30)
            pfs.chmod(0o755)
        assert refused.returncode == 1
        assert "not writable by uid 10001: chown 10001" in refused.stderr and "pfs.prepareHostPath" in refused.stderr
        ok = subprocess.run(run, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and list(pfs.iterdir()) == [], ok.stderr
    finally:
        shutil.rmtree(top)

    docs = render({"pfs": {"prepareHostPath": True}, "benefactor": {"supplementalGroups": [4242]}})
    spec = pod(docs[("DaemonSet", "ckpt-memstage-benefactor")])
    assert spec["volumes"][0]["hostPath"]["type"] == "DirectoryOrCreate"
    assert spec["securityContext"]["supplementalGroups"] == [4242]
    prepare, check = spec["initContainers"]
    assert prepare["command"][-1] == "chown 10001:10001 /pfs && chmod 0750 /pfs"
    assert prepare["securityContext"]["runAsUser"] == 0
    assert prepare["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert check["name"] == "check-pfs"  # after it
    lints({"pfs": {"prepareHostPath": True}})


# -- network policy ---------------------------------------------------------------------------------


def test_network_policies_open_only_the_ports_served_to_whom_they_serve():
    clients = [{"namespaceSelector": {"matchLabels": {"memstage.io/client": "true"}}}]
    scrapers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
                {"ipBlock": {"cidr": "10.0.0.0/8"}}]
    values = {"networkPolicy": {"clients": clients, "scrapers": scrapers}}
    docs = render(values)
    manager, benefactor = roles(docs)
    served = {doc["metadata"]["name"]: {p["name"] for p in container(doc)["ports"]} for doc in (manager, benefactor)}
    assert served["ckpt-memstage-benefactor"] == {"grpc", "data", "metrics"}
    assert env_of(benefactor)["MEMSTAGE_DATA_LISTEN"] == "0.0.0.0:7074"  # a port a policy can name
    rules: dict[str, list[tuple[str, ...]]] = {}
    for doc in (manager, benefactor):
        policy = docs[("NetworkPolicy", doc["metadata"]["name"])]["spec"]
        assert policy["policyTypes"] == ["Ingress"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
        for rule in policy["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            assert ports <= served[doc["metadata"]["name"]]  # names the pod's ports
            sources = tuple(json.dumps(peer, sort_keys=True) for peer in rule["from"])
            rules.setdefault(doc["metadata"]["name"], []).append((*sorted(ports), *sources))
    peer = {"manager": json.dumps({"podSelector": {"matchLabels": {
        "app.kubernetes.io/component": "manager", "app.kubernetes.io/instance": "ckpt"}}}, sort_keys=True),
            "benefactors": json.dumps({"podSelector": {"matchLabels": {
                "app.kubernetes.io/component": "benefactor", "app.kubernetes.io/instance": "ckpt"}}}, sort_keys=True)}
    as_peers = [json.dumps(p, sort_keys=True) for p in clients], [json.dumps(p, sort_keys=True) for p in scrapers]
    assert rules["ckpt-memstage-manager"] == [("grpc", "heartbeats", peer["benefactors"]),  # heartbeats: theirs only
                                              ("control", "grpc", *as_peers[0]), ("metrics", *as_peers[1])]
    assert rules["ckpt-memstage-benefactor"] == [("data", "grpc", peer["manager"], peer["benefactors"]),
                                                 ("data", "grpc", *as_peers[0]), ("metrics", *as_peers[1])]
    lints(values)

    # By default clients and scrapers come from anywhere (a rule without `from`), to those ports only.
    docs = render({"benefactor": {"dataPort": 0, "settings": {"metrics_port": 0}}})
    ingress = docs[("NetworkPolicy", "ckpt-memstage-benefactor")]["spec"]["ingress"]
    assert ingress[1:] == [{"ports": [{"port": "grpc"}]}]
    assert env_of(roles(docs)[1])["MEMSTAGE_DATA_LISTEN"] == "off"
    assert not any(kind == "NetworkPolicy" for kind, _ in render({"networkPolicy": {"enabled": False}}))


# -- the dashboard ----------------------------------------------------------------------------------


def test_every_dashboard_query_is_scoped_to_the_chosen_deployment():
    """Several deployments scraped by one Prometheus are not summed: every panel's query selects
    the job and instance of one deployment's manager, chosen by the dashboard's variables."""
    import re

    docs = render({})
    dashboard = json.loads(docs[("ConfigMap", "ckpt-memstage-dashboard")]["data"]["memstage.json"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= set(variables)
    assert variables["job"]["query"]["query"] == "label_values(memstage_benefactors_alive, job)"
    assert '{job="$job"}' in variables["instance"]["query"]["query"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    for expr in exprs:
        selectors = re.findall(r"\bmemstage_[a-z_]+(\{[^}]*\})?", expr)
        assert selectors, expr
        for labels in selectors:
            assert 'job="$job"' in labels and 'instance=~"$instance"' in labels, expr
    # With the Prometheus Operator, memstage's own namespace label survives beside the target's.
    docs = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert docs[("ServiceMonitor", "ckpt-memstage-manager")]["spec"]["endpoints"][0]["honorLabels"] is True
    assert docs[("PodMonitor", "ckpt-memstage-benefactor")]["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True


def test_with_every_new_option_on_the_chart_renders_valid_objects_and_lints_clean():
    values = {"serviceAccount": {"name": "ms", "annotations": {"a": "b"}}, "imagePullSecrets": [{"name": "regcred"}],
              "clusterSecret": {"existingSecret": "site-cluster"},
              "tls": {"existingSecret": "site-tls", "existingClientSecret": "site-client-tls"},
              "manager": {"affinity": {"nodeAffinity": {}}, "startSeconds": 300},
              "benefactor": {"kind": "StatefulSet", "affinity": {"podAntiAffinity": {}}, "supplementalGroups": [5],
                             "startSeconds": 900, "dataPort": 7080},
              "pfs": {"prepareHostPath": True},
              "networkPolicy": {"clients": [{"podSelector": {}}], "scrapers": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]},
              "metrics": {"serviceMonitor": {"enabled": True}}}
    docs = render(values)  # every object of Kubernetes' own validated against its schema
    kinds = {kind for kind, _ in docs}
    assert {"ServiceAccount", "NetworkPolicy", "Service", "StatefulSet", "ServiceMonitor", "PodMonitor"} <= kinds
    assert ("Service", "ckpt-memstage-benefactor") in docs
    lints(values)
