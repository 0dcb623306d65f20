"""Observability end to end: the local environment's real Prometheus finds the operator (running as a pod)
and the trainer pods through Kubernetes service discovery, scrapes them while jobs run, evaluates the
chart's alert rules, and every dashboard panel has data.

Every PromQL expression comes from the dashboards' JSON and the rule files (tests/promtool/queries.py),
never from a list in this file.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import kueue as local_kueue
from tests.promtool.queries import (
    RULE_FILES,
    dashboard_queries,
    label_values_as_promql,
    load_dashboards,
    panels,
    promtool,
    rule_queries,
    substitute,
    variable_queries,
)
from tests.support import images
from tests.support import operator as ops
from tests.support.kube import kubectl, kubectl_json, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
OPERATOR_IMAGE = images.OPERATOR
RULES_COPY = "finetune-operator-e2e.yaml"


# --- Prometheus HTTP API ------------------------------------------------------------------------------


def prom_url() -> str:
    import os

    return os.environ["PROMETHEUS_URL"]


def prom(path: str, params: dict[str, str] | None = None, method: str = "GET") -> Any:
    url = prom_url() + path + ("?" + urllib.parse.urlencode(params) if params else "")
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip().startswith(b"{") else raw.decode()


def prom_query(expr: str) -> dict[str, Any]:
    """An instant query; returns the whole answer (status + data), errors included."""
    url = prom_url() + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return dict(json.load(resp))
    except urllib.error.HTTPError as err:
        return dict(json.loads(err.read() or b"{}") or {"status": "error", "error": str(err)})


def prom_range(expr: str, start: float, end: float, step: float = 5) -> list[dict[str, Any]]:
    """What a Grafana panel asks: a range query over the dashboard's time range."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
    body = prom("/api/v1/query_range", params)
    assert body["status"] == "success", f"{expr}: {body}"
    return list(body["data"]["result"])


def reload_prometheus(rules: list[Path]) -> None:
    """Write the local Prometheus' config (from localcluster.prometheus) and our rule files, then reload."""
    from localcluster import prometheus

    state = REPO / ".dev" / "prometheus"
    (state / "rules").mkdir(parents=True, exist_ok=True)
    conf = prometheus.config([str(state / "rules" / "*.yaml")])
    (state / "prometheus.yml").write_text(yaml.safe_dump(conf, sort_keys=False))
    for src in rules:
        (state / "rules" / RULES_COPY).write_text(src.read_text())
    if not rules:
        (state / "rules" / RULES_COPY).unlink(missing_ok=True)
    prom("/-/reload", method="POST")


# --- the operator as a pod ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))  # noqa: S104
        return int(s.getsockname()[1])


def operator_objects(ns: str, port: int) -> list[dict[str, Any]]:
    """ServiceAccount, RBAC and the operator pod, annotated for the annotation-based scrape jobs."""
    rules = [
        {
            "apiGroups": ["finetune.dev"],
            "resources": ["finetunejobs"],
            "verbs": ["get", "list", "watch", "patch"],
        },
        {"apiGroups": ["finetune.dev"], "resources": ["finetunejobs/status"], "verbs": ["get", "patch"]},
        {"apiGroups": ["finetune.dev"], "resources": ["finetunejobs/finalizers"], "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["list", "patch"]},
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["localqueues"], "verbs": ["get"]},
    ]
    labels = {"app.kubernetes.io/name": "finetune-operator", "app.kubernetes.io/component": "operator"}
    env = {
        "FTO_TRAINER_IMAGE": ops.STUB_IMAGE,
        "FTO_NAMESPACES": ns,
        "FTO_NAMESPACE": ns,
        "FTO_PROGRESS_INTERVAL": "1",
        "FTO_RESYNC_SECONDS": "5",
        "FTO_TERMINATION_GRACE_SECONDS": "10",
        "FTO_METRICS_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "finetune-operator",
            "namespace": ns,
            "labels": labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "serviceAccountName": "finetune-operator",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 15,
            # As the chart runs it: the namespace enforces Pod Security "restricted".
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "operator",
                    "image": OPERATOR_IMAGE,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "ports": [{"name": "metrics", "containerPort": port}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 2},
                }
            ],
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "finetune-operator", "namespace": ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "finetune-operator", "namespace": ns},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "finetune-operator", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "finetune-operator"},
            "subjects": [{"kind": "ServiceAccount", "name": "finetune-operator", "namespace": ns}],
        },
        pod,
    ]


def operator_logs(ns: str) -> str:
    return kubectl("logs", "-n", ns, "finetune-operator", "--tail=80", check=False).stdout


@pytest.fixture
def operator_pod(namespace: str, s3_env: dict[str, str], cluster: dict[str, str]) -> Iterator[str]:
    ops.apply_crd()
    ops.setup_namespace(namespace, s3_env)
    port = free_port()
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(operator_objects(namespace, port)))

    def ready() -> bool:
        pod = kubectl_json("get", "pod", "finetune-operator", "-n", namespace)
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
        return conds.get("Ready") == "True"

    try:
        wait_for(ready, 90, "the operator pod to be Ready")
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- operator log\n{operator_logs(namespace)}") from None
    try:
        yield namespace
    finally:
        # Jobs first, while the operator runs: it owns their finalizer.
        kubectl(
            "delete", "finetunejobs", "--all", "-n", namespace, "--wait=true", "--timeout=60s", check=False
        )
        kubectl("delete", "pod", "finetune-operator", "-n", namespace, "--wait=false", check=False)


@pytest.fixture
def closed_queue(operator_pod: str) -> Iterator[str]:
    """A Kueue LocalQueue `closed` in the operator's namespace whose ClusterQueue has no GPU quota."""
    ns = operator_pod
    cluster_queue = f"closed-{ns}"
    objects = [
        local_kueue.cluster_queue(cluster_queue, 0),
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "closed", "namespace": ns},
            "spec": {"clusterQueue": cluster_queue},
        },
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    try:
        yield "closed"
    finally:
        kubectl("delete", "clusterqueue", cluster_queue, "--wait=false", check=False)


@pytest.fixture
def prometheus_with_rules(cluster: dict[str, str]) -> Iterator[None]:
    reload_prometheus(RULE_FILES)
    try:
        yield
    finally:
        reload_prometheus([])


# --- the test -----------------------------------------------------------------------------------------


def operator_metrics_url(ns: str) -> str:
    pod = kubectl_json("get", "pod", "finetune-operator", "-n", ns)
    ip, port = pod["status"].get("podIP"), pod["metadata"]["annotations"]["prometheus.io/port"]
    return f"http://{ip}:{port}/metrics"


def diagnose(ns: str) -> str:
    """What the operator exposes and what Prometheus holds of it, for failure messages."""
    url = operator_metrics_url(ns)
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            exposed = "\n".join(
                line for line in resp.read().decode().splitlines() if line.startswith("finetune_job")
            )
    except OSError as err:
        exposed = f"cannot read {url}: {err}"
    held = prom_query('{pod="finetune-operator", __name__=~"finetune_job_info|finetune_jobs"}')
    return f"--- operator /metrics\n{exposed}\n--- prometheus\n{held}\n--- operator log\n{operator_logs(ns)}"


def wait_series(ns: str, expr: str, timeout: float, what: str) -> list[dict[str, Any]]:
    try:
        return wait_for(lambda: prom_query(expr)["data"]["result"], timeout, what)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{diagnose(ns)}") from None


def active_targets() -> list[dict[str, Any]]:
    return list(prom("/api/v1/targets", {"state": "active"})["data"]["activeTargets"])


def target_of(pod: str, ns: str) -> dict[str, Any] | None:
    for t in active_targets():
        labels = t.get("labels", {})
        if labels.get("pod") == pod and labels.get("namespace") == ns and t.get("health") == "up":
            return t
    return None


def test_prometheus_scrapes_operator_and_trainer_and_every_panel_has_data(
    operator_pod: str,
    closed_queue: str,
    prometheus_with_rules: None,
    s3_env: dict[str, str],
    s3_bucket: str,
) -> None:
    ns = operator_pod
    start = time.time() - 30
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    # A job that trains for ~40 s (cost accrues at 2.00/GPU-hour: a cent every 18 s), with a budget...
    train = ops.upload_dataset(s3_env, s3_bucket, "data/good.jsonl", ops.chat_rows(80), {"stepSeconds": 2.0})
    good = ops.job_manifest(
        "good",
        ns,
        bucket=s3_bucket,
        train=train,
        endpoint=endpoint,
        batch_size=4,
        every_steps=5,
        extra={"budget": {"maxCost": "1"}},
    )
    # ...and one whose dataset fails validation (a failure by reason, no GPU ever held).
    bad_rows: list[Any] = ["this is not JSON", *ops.chat_rows(3)]
    bad_train = ops.upload_dataset(s3_env, s3_bucket, "data/bad.jsonl", bad_rows)
    bad = ops.job_manifest("bad", ns, bucket=s3_bucket, train=bad_train, endpoint=endpoint)
    # ...and one that stays in a Kueue queue whose ClusterQueue has no GPU (the queue panel).
    waiting = ops.job_manifest(
        "waiting", ns, bucket=s3_bucket, train=train, endpoint=endpoint, extra={"queueName": closed_queue}
    )
    ops.apply(good)
    ops.apply(bad)
    ops.apply(waiting)

    # While the trainer runs, Prometheus has both targets, found through Kubernetes service discovery.
    running = ops.wait_phase("good", ns, "Running", 120)
    trainer_pods = [
        p
        for p in ops.children(ns, "pods", "good")
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "trainer"
    ]
    assert trainer_pods, running
    trainer_pod = trainer_pods[0]["metadata"]["name"]
    op_target = wait_for(
        lambda: target_of("finetune-operator", ns), 60, "Prometheus to scrape the operator pod"
    )
    tr_target = wait_for(
        lambda: target_of(trainer_pod, ns), 60, f"Prometheus to scrape trainer pod {trainer_pod}"
    )
    assert op_target["scrapePool"] == "kubernetes-pods"
    assert op_target["discoveredLabels"]["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert tr_target["labels"].get("finetune_dev_job") == "good"
    wait_for(
        lambda: prom_query(f'finetune_trainer_step{{namespace="{ns}", pod="{trainer_pod}"}} > 0')["data"][
            "result"
        ],
        60,
        "a trainer step in Prometheus",
    )

    done = ops.wait_phase("good", ns, "Succeeded", 180)
    failed = ops.wait_phase("bad", ns, "Failed", 60)
    assert float(done["status"]["usage"]["estimatedCost"]) > 0, done["status"]
    # The final statuses reach Prometheus (scrape interval 5 s).
    wait_series(
        ns,
        f'finetune_job_info{{namespace="{ns}", name="good", phase="Succeeded"}}',
        30,
        "the Succeeded job in Prometheus",
    )
    wait_series(
        ns,
        f'finetune_job_info{{namespace="{ns}", name="bad", phase="Failed"}}',
        30,
        "the Failed job in Prometheus",
    )
    time.sleep(11)  # two more scrapes: rate() and increase() have two samples after the last change
    end = time.time()
    window = f"{int(end - start) + 1}s"

    # The operator's series keep the job's namespace (honor_labels), never an exported_namespace.
    info = prom_query(f'finetune_job_info{{namespace="{ns}"}}')["data"]["result"]
    assert {s["metric"]["name"] for s in info} == {"good", "bad", "waiting"}
    queued = [s["metric"] for s in info if s["metric"]["name"] == "waiting"]
    assert [(m["phase"], m["queue"]) for m in queued] == [("Queued", "closed")], queued
    assert all("exported_namespace" not in s["metric"] for s in info)
    reason = failed["status"]["conditions"]
    assert any(s["metric"]["reason"] == c["reason"] for s in info for c in reason if c["type"] == "Failed")

    # Every expression of the dashboards and the rules parses in this Prometheus.
    for q in dashboard_queries() + rule_queries():
        body = prom_query(substitute(q.expr, {"namespace": ns, "job": "good"}, window))
        assert body.get("status") == "success", f"{q.where}: {q.expr}: {body}"

    # The variables list this namespace and these jobs.
    for q in variable_queries():
        promql, label = label_values_as_promql(substitute(q.expr, {"namespace": ns}))
        values = {s["metric"].get(label) for s in prom_query(promql)["data"]["result"]}
        assert ns in values or {"good", "bad"} <= values, f"{q.where}: {promql} -> {values}"

    # Every panel returns at least one series over the run's time range (what Grafana would draw).
    empty_panels, empty_targets = [], []
    by_panel: dict[str, int] = {}
    for dash in load_dashboards():
        job = "good" if dash["uid"] == "finetune-job" else ".*"
        for p in panels(dash):
            total = 0
            for t in p["targets"]:
                expr = substitute(t["expr"], {"namespace": ns, "job": job}, window)
                n = len(prom_range(expr, start, end))
                total += n
                if n == 0:
                    empty_targets.append(f"{dash['uid']} {p['title']!r} {t['refId']}: {expr}")
            by_panel[f"{dash['uid']}/{p['title']}"] = total
            if total == 0:
                empty_panels.append(f"{dash['uid']} {p['title']!r}")
    assert not empty_panels, "panels without data:\n" + "\n".join([*empty_panels, "targets:", *empty_targets])
    assert not empty_targets, "targets without data:\n" + "\n".join(empty_targets)

    # The rules are loaded and evaluate without errors.
    groups = prom("/api/v1/rules")["data"]["groups"]
    loaded = {r["name"]: r for g in groups if g["file"].endswith(RULES_COPY) for r in g["rules"]}
    assert set(loaded) == {q.where.split(": ", 1)[1] for q in rule_queries()}
    assert all(r["health"] == "ok" for r in loaded.values()), {
        n: r.get("lastError") for n, r in loaded.items()
    }
    # The failed job's alert is pending or firing (no `for:`: firing at the next evaluation).
    wait_for(
        lambda: [
            a
            for a in prom("/api/v1/alerts")["data"]["alerts"]
            if a["labels"].get("alertname") == "FineTuneJobFailed"
            and a["labels"].get("namespace") == ns
            and a["labels"].get("name") == "bad"
        ],
        30,
        "the FineTuneJobFailed alert for the failed job",
    )

    # promtool finds no problem in what the running operator exposes (per-job series of both jobs included).
    with urllib.request.urlopen(operator_metrics_url(ns), timeout=10) as resp:
        exposition = resp.read()
    assert [
        line
        for line in exposition.decode().splitlines()
        if line.startswith("finetune_job_train_loss{") and 'name="good"' in line
    ]
    check = subprocess.run(
        [promtool(), "check", "metrics"], input=exposition, capture_output=True, timeout=60
    )
    problems = (check.stdout + check.stderr).decode()
    assert check.returncode == 0, f"promtool check metrics:\n{problems}"
    assert not problems.strip(), f"promtool check metrics:\n{problems}"

    # Deleting a job removes its per-job series (stale at the next scrape).
    kubectl("delete", "finetunejob", "good", "-n", ns, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: not prom_query(f'finetune_job_info{{namespace="{ns}", name="good"}}')["data"]["result"],
        30,
        "the deleted job's series to go",
    )
    assert prom_query(f'finetune_job_info{{namespace="{ns}", name="bad"}}')["data"]["result"]
