"""The Helm chart against the real API server and node agent, installed the way users install it.

- everything `helm template` renders (with each switch) is accepted by the API server;
- the operator runs as pods with its own ServiceAccount token and least-privilege RBAC, and takes a
  FineTuneJob to Succeeded; it cannot read Secrets; without its RoleBinding the API refuses it by its
  ServiceAccount's name (so it is not using anyone else's credentials);
- `helm upgrade` with changed values rolls the pods; `helm uninstall` keeps CRDs, jobs and data;
- two replicas: one works, the other stands by and takes over when the active one is killed, and the
  running job still finishes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import kueue as local_kueue
from tests.support import operator as ops
from tests.support.helm import CHART, MONITORING_API, MONITORING_KINDS, helm, set_args
from tests.support.kube import enforce_restricted, kubectl, kubectl_json, wait_for

pytestmark = pytest.mark.cluster

OPERATOR_PODS = "app.kubernetes.io/component=operator"


def fast(namespace: str, **extra: Any) -> dict[str, Any]:
    """Values for tests: the stub trainer, short intervals, a short peering lifetime."""
    return {
        "trainer.image": ops.STUB_IMAGE,
        "operator.resyncSeconds": 5,
        "operator.progressIntervalSeconds": 1,
        "operator.terminationGraceSeconds": 10,
        "peering.lifetimeSeconds": 10,
        "terminationGracePeriodSeconds": 10,
        "operator.s3Endpoint": "",
        # The jobs' own endpoint (the local SeaweedFS, a loopback address) is allowed by name.
        "egress.s3Endpoints": [os.environ.get("AWS_ENDPOINT_URL", "")],
        **extra,
    }


@dataclass
class Release:
    name: str
    namespace: str

    @property
    def fullname(self) -> str:
        return f"{self.name}-finetune-operator"

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def install(self, values: dict[str, Any], *extra: str) -> str:
        out = helm(
            "upgrade", "--install", self.name, str(CHART), "-n", self.namespace, "--take-ownership",
            "--wait", "--timeout", "150s", *set_args(values), *extra, timeout=200,
        )  # fmt: skip
        return out.stdout

    def pods(self) -> list[dict[str, Any]]:
        items = kubectl_json("get", "pods", "-n", self.namespace, "-l", OPERATOR_PODS)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def logs(self, pod: str) -> str:
        return kubectl("logs", "-n", self.namespace, pod, check=False).stdout

    def all_logs(self) -> str:
        return "\n".join(
            f"--- {p['metadata']['name']}\n{self.logs(p['metadata']['name'])[-4000:]}" for p in self.pods()
        )

    def can(self, verb: str, resource: str, *where: str) -> bool:
        out = kubectl("auth", "can-i", verb, resource, f"--as={self.user}", *where, check=False)
        return out.stdout.strip() == "yes"


@pytest.fixture
def release(namespace: str) -> Iterator[Release]:
    rel = Release(f"fto-{namespace[-6:]}", namespace)
    try:
        yield rel
    finally:
        helm("uninstall", rel.name, "-n", namespace, "--wait", "--ignore-not-found", check=False, timeout=120)
        # Without an operator nobody removes our finalizer; let the namespace go.
        for name in kubectl("get", "ftj", "-n", namespace, "-o", "name", check=False).stdout.split():
            kubectl(
                "patch",
                name,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )


def s3_secret(namespace: str, s3_env: dict[str, str]) -> None:
    kubectl(
        "create", "secret", "generic", ops.SECRET, "-n", namespace,
        f"--from-literal=AWS_ACCESS_KEY_ID={s3_env['AWS_ACCESS_KEY_ID']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_env['AWS_SECRET_ACCESS_KEY']}",
    )  # fmt: skip


def submit(
    name: str,
    namespace: str,
    s3_env: dict[str, str],
    bucket: str,
    *,
    rows: int,
    step_seconds: float,
    extra: dict[str, Any] | None = None,
) -> None:
    train = ops.upload_dataset(
        s3_env, bucket, f"data/{name}.jsonl", ops.chat_rows(rows), {"stepSeconds": step_seconds}
    )
    ops.apply(
        ops.job_manifest(
            name, namespace, bucket=bucket, train=train, endpoint=s3_env["AWS_ENDPOINT_URL"], extra=extra
        )
    )


def finished(rel: Release, name: str, timeout: float) -> dict[str, Any]:
    try:
        obj = ops.wait_phase(name, rel.namespace, {"Succeeded", "Failed"}, timeout)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{rel.all_logs()}") from None
    assert obj["status"]["phase"] == "Succeeded", json.dumps(obj["status"], indent=1)
    return obj


# --- what the chart renders, against the real API server -------------------------------------------

SWITCHES: dict[str, dict[str, Any]] = {
    "default": {},
    "namespace-scope": {"rbac.scope": "namespace"},
    "cluster-some-namespaces": {"watchNamespaces": ["kube-public"]},
    "all-off": {
        "crds.install": False,
        "rbac.create": False,
        "serviceAccount.create": False,
        "metrics.enabled": False,
        "dashboards.enabled": False,
        "networkPolicy.enabled": False,
        "prices.create": False,
        "podDisruptionBudget.enabled": False,
        "peering.enabled": False,
        "replicaCount": 1,
    },
    "local-values": {},
}


@pytest.mark.parametrize("case", list(SWITCHES))
def test_everything_rendered_is_accepted_by_the_api_server(case: str, namespace: str) -> None:
    values = dict(SWITCHES[case])
    if case == "namespace-scope":
        values["watchNamespaces"] = [namespace]
    extra = ["-f", str(CHART.parent / "values-local.yaml")] if case == "local-values" else []
    out = helm(
        "template", "fto-dry", str(CHART), "-n", namespace, "--api-versions", MONITORING_API,
        *set_args(values), *extra,
    )  # fmt: skip
    manifests = [m for m in yaml.safe_load_all(out.stdout) if m]
    # The Prometheus Operator's CRDs are not installed here; those kinds are checked in tests/unit.
    applicable = [m for m in manifests if m["kind"] not in MONITORING_KINDS]
    assert len(applicable) < len(manifests) or case == "all-off"
    # As JSON: a YAML 1.1 dumper would write the string "2e-4" bare, which the API server reads as a number.
    stream = "\n---\n".join(json.dumps(m) for m in applicable)
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=stream)
    assert result.stdout.count("(server dry run)") == len(applicable), result.stdout


# --- where a job may send its S3 requests, refused at kubectl apply ---------------------------------

EGRESS_CASES = {
    # endpoint: the words of the refusal (None: admitted)
    "http://s3.internal:9000": None,
    "http://s3.internal:9000/": None,
    "": None,  # unset: the operator's default endpoint
    "http://169.254.169.254": "link-local",
    "http://[fe80::1]:80": "link-local",
    "http://127.0.0.1:9000": "loopback",
    "http://localhost:9000": "loopback",
    "https://kubernetes.default.svc:443": "API server",
    "https://kubernetes.default.svc.cluster.local": "API server",
    "http://10.96.0.1": "API server",
    "https://s3.example.com": "not an S3 endpoint this cluster allows (http://s3.internal:9000)",
}


def test_the_admission_policy_refuses_endpoints_outside_the_allow_list(
    namespace: str, cluster: dict[str, str]
) -> None:
    ops.apply_crd()
    name = f"egress-{namespace[-6:]}"
    out = helm(
        "template", name, str(CHART), "-n", namespace, "--show-only", "templates/admissionpolicy.yaml",
        *set_args({"egress.s3Endpoints": ["http://s3.internal:9000"], "egress.apiServerHosts": ["10.96.0.1"],
                   "watchNamespaces": [namespace]}),
    )  # fmt: skip
    kubectl("apply", "-f", "-", input=out.stdout)
    try:
        job = yaml.safe_load((CHART.parents[1] / "examples" / "finetunejob.yaml").read_text())
        job["metadata"] |= {"name": "egress", "namespace": namespace}

        def verdict(endpoint: str) -> str:
            doc = json.loads(json.dumps(job))
            storage = doc["spec"].setdefault("storage", {})
            storage.pop("endpoint", None)
            if endpoint:
                storage["endpoint"] = endpoint
            res = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
            return res.stdout + res.stderr

        # The policy takes effect once the API server has compiled it.
        wait_for(
            lambda: "denied request" in verdict("http://169.254.169.254"), 30, "the policy to be in force"
        )
        for endpoint, refusal in EGRESS_CASES.items():
            text = verdict(endpoint)
            if refusal is None:
                assert "(server dry run)" in text, (endpoint, text)
            else:
                assert "denied request" in text, (endpoint, text)
                assert refusal in text, (endpoint, text)
        # Another namespace is not this release's: its jobs are not judged by this policy.
        kubectl("create", "namespace", f"{namespace}-x")
        enforce_restricted(f"{namespace}-x")
        try:
            job["metadata"]["namespace"] = f"{namespace}-x"
            assert "(server dry run)" in verdict("https://s3.example.com")
        finally:
            kubectl("delete", "namespace", f"{namespace}-x", "--wait=false")
    finally:
        kubectl("delete", "-f", "-", input=out.stdout, check=False)


# --- install, a job, least privilege, upgrade, uninstall ------------------------------------------


def test_install_run_upgrade_uninstall(
    release: Release, namespace: str, s3_env: dict[str, str], s3_bucket: str, cluster: dict[str, str]
) -> None:
    ns = namespace
    s3_secret(ns, s3_env)
    notes = release.install(fast(ns, **{"rbac.scope": "namespace"}))
    assert f"FineTuneJobs in namespaces: {ns}" in notes

    # Its own account, its own token, nothing borrowed.
    pods = release.pods()
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == release.fullname
        env = {e["name"] for c in pod["spec"]["containers"] for e in c.get("env", [])}
        assert "KUBECONFIG" not in env
        mounts = {m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])}
        assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts  # the projected token

    # Least privilege, as the API server's authorizer sees it.
    assert release.can("patch", "finetunejobs.finetune.dev", "-n", ns)
    assert release.can("create", "jobs.batch", "-n", ns)
    assert release.can("get", "configmaps/finetune-operator-prices", "-n", ns)
    for verb in ("get", "list", "watch"):
        assert not release.can(verb, "secrets", "-n", ns), f"{verb} secrets"
        assert not release.can(verb, "secrets", "-A"), f"{verb} secrets cluster-wide"
    assert not release.can("get", "configmaps/other", "-n", ns)
    assert not release.can("delete", "pods", "-n", ns)
    assert not release.can("create", "deployments.apps", "-n", ns)
    assert not release.can("list", "finetunejobs.finetune.dev", "-n", "default")
    assert not release.can("get", "nodes")
    assert not release.can("update", "customresourcedefinitions.apiextensions.k8s.io")
    # Kueue: the Workloads and queues of a queued job, the ClusterQueue's quota, nothing to write but
    # a Workload's spec.active.
    assert release.can("list", "workloads.kueue.x-k8s.io", "-n", ns)
    assert release.can("patch", "workloads.kueue.x-k8s.io", "-n", ns)
    assert release.can("get", "localqueues.kueue.x-k8s.io", "-n", ns)
    assert release.can("get", "clusterqueues.kueue.x-k8s.io")
    assert not release.can("patch", "clusterqueues.kueue.x-k8s.io")
    assert not release.can("create", "workloads.kueue.x-k8s.io", "-n", ns)

    # A job, start to end, done by the installed operator, queued in Kueue (the local environment's
    # ClusterQueue of the node's GPUs).
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": "team", "namespace": ns},
                "spec": {"clusterQueue": local_kueue.CLUSTER_QUEUE},
            }
        ),
    )
    submit("first", ns, s3_env, s3_bucket, rows=20, step_seconds=0.2, extra={"queueName": "team"})
    first = finished(release, "first", 120)
    admitted = ops.condition(first, "Admitted") or {}
    assert admitted.get("reason") == "QuotaReserved", first["status"]
    assert admitted["message"].startswith(f"admitted by Kueue to ClusterQueue {local_kueue.CLUSTER_QUEUE}")
    assert first["status"]["queue"]["clusterQueue"] == local_kueue.CLUSTER_QUEUE
    assert first["status"]["outputs"]["adapterURI"].endswith("/out/first/adapter/")
    # The chart's NetworkPolicy for job pods is in this namespace, and its selector, as the API server
    # reads it, picks both of the job's pods (the local node does not enforce policies; a CNI would).
    policy = kubectl_json("get", "networkpolicy", f"{release.fullname}-jobs", "-n", ns)["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    selector = [f"{k}={v}" for k, v in policy["podSelector"]["matchLabels"].items()] + [
        f"{e['key']} {e['operator'].lower()} ({','.join(e['values'])})"
        for e in policy["podSelector"].get("matchExpressions", [])
    ]
    covered = kubectl_json("get", "pods", "-n", ns, "-l", ",".join([*selector, "finetune.dev/job=first"]))
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in covered["items"]}
    assert components == {"validation", "trainer"}, components

    # Take its RoleBinding away: the API server refuses *its ServiceAccount*, by name.
    kubectl("delete", "rolebinding", release.fullname, "-n", ns)
    submit("second", ns, s3_env, s3_bucket, rows=20, step_seconds=0.2)
    # (The account's name shows up in the operator's log only in the API server's refusals.)
    wait_for(
        lambda: release.user in release.all_logs(), 60, f"a 403 for {release.user} in the log", interval=2
    )

    # helm upgrade with a changed value: the RoleBinding is back and the pods roll to the new setting.
    before = {p["metadata"]["name"] for p in release.pods()}
    release.install(fast(ns, **{"rbac.scope": "namespace", "operator.resyncSeconds": 4}))
    kubectl("rollout", "status", f"deployment/{release.fullname}", "-n", ns, "--timeout=120s", timeout=150)
    wait_for(
        lambda: len(release.pods()) == 2 and not before & {p["metadata"]["name"] for p in release.pods()},
        60,
        "the old pods to be replaced",
    )
    for pod in release.pods():
        pod_env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert pod_env["FTO_RESYNC_SECONDS"] == "4"
    kubectl("get", "rolebinding", release.fullname, "-n", ns)
    finished(release, "second", 120)

    # helm uninstall: the CRDs, the users' FineTuneJobs and their data stay.
    helm("uninstall", release.name, "-n", ns, "--wait", timeout=120)
    wait_for(lambda: not release.pods(), 60, "the operator pods to go")
    for crd in ("finetunejobs.finetune.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        kubectl("get", "crd", crd)
    assert kubectl("get", "ftj", "first", "second", "-n", ns, "-o", "name").stdout.split() == [
        "finetunejob.finetune.dev/first",
        "finetunejob.finetune.dev/second",
    ]
    s3 = ops.s3_client(s3_env)
    for name in ("first", "second"):
        assert s3.head_object(Bucket=s3_bucket, Key=f"out/{name}/adapter/adapter_model.safetensors")
    # The uninstall hook took the operator's finalizer off them (and cleaned up after itself), so
    # deleting a job with no operator running does not wait for ever.
    for name in ("first", "second"):
        finalizers = ops.ftj(name, ns)["metadata"].get("finalizers") or []
        assert "finetune.dev/finalizer" not in finalizers, finalizers
    assert kubectl("get", "job,sa", "-n", ns, "-o", "name").stdout.count("-uninstall") == 0
    kubectl("delete", "ftj", "first", "-n", ns, "--wait=true", "--timeout=30s")
    for name in ("first", "second"):
        assert s3.head_object(Bucket=s3_bucket, Key=f"out/{name}/adapter/adapter_model.safetensors")


def container_pid(pod: dict[str, Any]) -> int:
    """The operator container's process, from the local node agent's sandbox (.dev/pods/<uid>/)."""
    base = Path(os.environ["FTO_STATE_DIR"]) / "pods" / pod["metadata"]["uid"] / "containers" / "operator"
    latest = max((d for d in base.iterdir() if d.is_dir()), key=lambda d: int(d.name))
    return int(json.loads((latest / "state.json").read_text())["pid"])


def leader_gauge(pod_ip: str) -> float | None:
    """finetune_operator_leader from the pod's own /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://{pod_ip}:8080/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("finetune_operator_leader "):
                return float(line.split()[1])
    return None


# --- high availability --------------------------------------------------------------------------


def test_two_replicas_one_active_and_failover(
    release: Release, namespace: str, s3_env: dict[str, str], s3_bucket: str
) -> None:
    """Cluster-scope RBAC limited to this namespace, Kopf peering between two replicas."""
    ns = namespace
    s3_secret(ns, s3_env)
    release.install(fast(ns, watchNamespaces=[ns]))
    pods = release.pods()
    assert len(pods) == 2

    # 60 steps of 0.5 s: long enough to kill the active replica in the middle.
    submit("ha", ns, s3_env, s3_bucket, rows=240, step_seconds=0.5)
    ops.wait_phase("ha", ns, "Running", 60)
    wait_for(
        lambda: ops.ftj("ha", ns)["status"].get("progress", {}).get("step", 0) >= 3, 60, "training steps"
    )

    peers = wait_for(
        lambda: (
            (p := kubectl_json("get", "kopfpeering", release.fullname, "-n", ns).get("status", {}))
            and len(p) == 2
            and p
        ),
        30,
        "two peers in the KopfPeering",
    )
    priorities = [peer["priority"] for peer in peers.values()]
    assert len(set(priorities)) == 2, peers  # distinct: Kopf pauses all replicas of one priority

    # Exactly one replica handles jobs.
    logs = {p["metadata"]["name"]: release.logs(p["metadata"]["name"]) for p in pods}
    workers = [name for name, log in logs.items() if "created Job ha-train-a1" in log]
    assert len(workers) == 1, logs
    (active,) = workers
    standby = next(name for name in logs if name != active)
    assert "created " not in logs[standby], logs[standby]
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    wait_for(
        lambda: leader_gauge(ips[active]) == 1 and leader_gauge(ips[standby]) == 0,
        30,
        "finetune_operator_leader to be 1 on the active replica only",
    )

    # Kill the active replica's process outright (SIGKILL: no goodbye to its peers, like a crash or
    # a lost node); the standby must take over when the dead one's peering record expires, and the
    # job must keep moving under it.
    step_at_kill = ops.ftj("ha", ns)["status"].get("progress", {}).get("step", 0)
    standby_led = release.logs(standby).count("this replica is the active one")
    killed = time.monotonic()
    os.kill(container_pid(next(p for p in pods if p["metadata"]["name"] == active)), signal.SIGKILL)
    wait_for(
        lambda: (
            kubectl_json("get", "pod", active, "-n", ns)["status"]["containerStatuses"][0]["restartCount"] > 0
        ),
        30,
        f"{active} to be seen dead and restarted",
    )

    def progressed() -> dict[str, Any] | None:
        o = ops.ftj("ha", ns)
        st = o.get("status", {})
        moved = st.get("progress", {}).get("step", 0) > step_at_kill + 2 or st.get("phase") == "Succeeded"
        return o if moved else None

    try:
        wait_for(progressed, 60, "the job's status to move under the other replica", interval=0.5)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{release.all_logs()}") from None
    handover = time.monotonic() - killed
    assert handover < 60
    # The other replica took over (it is older than the restarted one, so it leads from now on).
    wait_for(
        lambda: release.logs(standby).count("this replica is the active one") > standby_led,
        15,
        f"{standby} to report itself active",
    )
    assert "this replica stands by" in release.logs(active)
    done = finished(release, "ha", 120)
    assert done["status"]["attempts"] == 1  # the trainer was never interrupted
    assert [j["metadata"]["name"] for j in ops.children(ns, "jobs", "ha")] == ["ha-train-a1"]
    print(f"handover after {handover:.1f}s (step {step_at_kill} at the kill)")
