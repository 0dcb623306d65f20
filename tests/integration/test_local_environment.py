"""The embedded local environment: versions, S3 with enforced keys, Prometheus discovery,
and cluster-up / cluster-down themselves (on a second environment beside the main one)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from localcluster.paths import ETCD_VERSION, HELM_VERSION, K8S_VERSION, LAYOUT, PROM_VERSION, Ports
from tests.support import images
from tests.support.kube import kubectl, kubectl_json, wait_for

REPO = Path(__file__).resolve().parents[2]


def test_kubectl_reports_the_pinned_server_version(cluster: dict[str, str]) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == K8S_VERSION


def test_every_binary_is_its_pinned_release(cluster: dict[str, str]) -> None:
    """The binaries come from one Go module (build-binaries.sh): each still carries its own release's
    version stamp, set at link time."""

    def version(*argv: str) -> str:
        return subprocess.run(
            [str(LAYOUT.bin / argv[0]), *argv[1:]], capture_output=True, text=True, check=True, timeout=60
        ).stdout

    prometheus = "3.{}.{}".format(int(PROM_VERSION.split(".")[1]) - 300, PROM_VERSION.split(".")[2])
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert version(component, "--version").split() == ["Kubernetes", K8S_VERSION]
    assert f"etcd Version: {ETCD_VERSION[1:]}" in version("etcd", "--version")
    assert version("helm", "version", "--template", "{{.Version}}") == HELM_VERSION
    assert version("prometheus", "--version").startswith(f"prometheus, version {prometheus} ")
    assert version("promtool", "--version").startswith(f"promtool, version {prometheus} ")


def test_gpu_node_is_ready_with_gpus_allocatable(cluster: dict[str, str]) -> None:
    nodes = kubectl_json("get", "nodes")["items"]
    assert len(nodes) == 1
    node = nodes[0]
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu.product" in node["metadata"]["labels"]


def test_rbac_is_enforced_for_service_accounts(cluster: dict[str, str], namespace: str) -> None:
    who = f"system:serviceaccount:{namespace}:default"
    assert (
        kubectl("auth", "can-i", "list", "secrets", "--as", who, "-n", namespace, check=False).stdout.strip()
        == "no"
    )
    assert kubectl("auth", "can-i", "list", "secrets", "-n", namespace).stdout.strip() == "yes"


def _s3(env: dict[str, str], secret: str | None = None):
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def test_s3_put_get_with_the_right_key_and_refused_with_a_wrong_one(
    s3_env: dict[str, str], s3_bucket: str
) -> None:
    good = _s3(s3_env)
    good.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello")
    assert good.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"hello"

    bad = _s3(s3_env, secret="not-the-secret")
    with pytest.raises(ClientError) as put_err:
        bad.put_object(Bucket=s3_bucket, Key="a/c.txt", Body=b"nope")
    assert put_err.value.response["Error"]["Code"] in {
        "SignatureDoesNotMatch",
        "AccessDenied",
        "InvalidAccessKeyId",
    }
    with pytest.raises(ClientError):
        bad.get_object(Bucket=s3_bucket, Key="a/b.txt")
    keys = [o["Key"] for o in good.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == ["a/b.txt"]


METRICS_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: metrics-demo
  labels: {{app: metrics-demo}}
  annotations:
    prometheus.io/scrape: "true"
    prometheus.io/port: "9100"
spec:
  restartPolicy: Never
  securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: exporter
    image: {image}
    securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
    command: [python, -c]
    args:
    - |
      import os, time
      from prometheus_client import Gauge, start_http_server
      Gauge("local_env_probe_value", "A value for the discovery test").set(42)
      start_http_server(9100, addr=os.environ["POD_IP"])
      time.sleep(600)
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    ports: [{{containerPort: 9100, name: metrics}}]
"""


def _prom_query(url: str, promql: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(
        f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5
    ) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_discovers_and_scrapes_a_pod_through_kubernetes_sd(
    cluster: dict[str, str], namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=METRICS_POD.format(image=images.OPERATOR))
    wait_for(
        lambda: (
            kubectl_json("get", "pod", "metrics-demo", "-n", namespace)["status"].get("phase") == "Running"
        ),
        60,
        "metrics pod Running",
    )
    prom = cluster["PROMETHEUS_URL"]
    series = wait_for(
        lambda: _prom_query(prom, f'local_env_probe_value{{namespace="{namespace}", pod="metrics-demo"}}'),
        60,
        "Prometheus to scrape the pod",
    )
    assert series[0]["value"][1] == "42"  # type: ignore[index]
    up = _prom_query(prom, f'up{{job="kubernetes-pods", namespace="{namespace}"}}')
    assert [s["value"][1] for s in up] == ["1"]  # type: ignore[index]


# --- cluster-up / cluster-down on a second environment ---------------------------------------

OFFSET = 100  # every port of the second environment, incl. SeaweedFS' grpc ports (+10000), is free


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pids_under(state_dir: Path) -> list[int]:
    """Processes whose command line mentions the state dir: everything that environment started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if str(state_dir) in cmdline and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def test_cluster_up_is_idempotent_and_cluster_down_leaves_nothing(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "env2"
    env = dict(os.environ, FTO_STATE_DIR=str(state), FTO_PORT_OFFSET=str(OFFSET), FTO_ENV_INDEX="1")
    http_ports = [p + OFFSET for p in Ports().__dict__.values()]
    grpc_ports = [p + 10000 for p in http_ports if p - OFFSET in (18333, 19333, 18080, 18888, 18646)]
    ports = http_ports + grpc_ports
    run = [sys.executable, "-m", "localcluster"]
    try:
        t0 = time.monotonic()
        subprocess.run([*run, "up"], env=env, cwd=REPO, check=True, timeout=600)
        cold = time.monotonic() - t0
        assert (state / "env").exists()
        assert all(
            _listening(p)
            for p in (
                Ports().apiserver + OFFSET,
                Ports().s3 + OFFSET,
                Ports().prometheus + OFFSET,
                Ports().kubelet + OFFSET,
            )
        )
        nodes = subprocess.run(
            ["kubectl", "get", "nodes", "-o", "json"],
            env=dict(env, KUBECONFIG=str(state / "kubeconfig")),
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(nodes.stdout)["items"][0]["metadata"]["name"]
        # Kueue serves its webhooks and has admitted its own queues through them.
        assert _listening(Ports().kueue_webhook + OFFSET)

        def active_queues() -> dict[tuple[str, str, str], str | None]:
            queues = subprocess.run(
                ["kubectl", "get", "clusterqueue,localqueue", "-A", "-o", "json"],
                env=dict(env, KUBECONFIG=str(state / "kubeconfig")),
                capture_output=True,
                text=True,
                check=True,
            )
            return {
                (q["kind"], q["metadata"].get("namespace", ""), q["metadata"]["name"]): {
                    c["type"]: c["status"] for c in q.get("status", {}).get("conditions", [])
                }.get("Active")
                for q in json.loads(queues.stdout)["items"]
            }

        want = {("ClusterQueue", "", "gpus"): "True", ("LocalQueue", "default", "gpus"): "True"}
        found = wait_for(lambda: (q := active_queues()) == want and q, 30, "Kueue's queues Active")
        assert found == {("ClusterQueue", "", "gpus"): "True", ("LocalQueue", "default", "gpus"): "True"}, (
            found
        )

        t0 = time.monotonic()
        subprocess.run([*run, "up"], env=env, cwd=REPO, check=True, timeout=120)
        warm = time.monotonic() - t0
        assert warm < 15, f"a second cluster-up should be a quick no-op, took {warm:.1f}s (cold {cold:.1f}s)"
    finally:
        subprocess.run([*run, "down"], env=env, cwd=REPO, check=True, timeout=180)
    assert _pids_under(state) == []
    still = [p for p in ports if _listening(p)]
    assert still == [], f"ports still listening after cluster-down: {still}"
