"""Queueing on the real Kueue (localcluster.kueue): quota, priority preemption, suspend through the
Workload, and no Workload left behind. Each test has its own ClusterQueue and LocalQueue, so tests
running beside it never share quota with it; the stub trainer behind real Jobs keeps them short."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from localcluster import kueue as local_kueue
from tests.support import operator as ops
from tests.support.kube import kubectl, kubectl_json, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def crd(cluster: dict[str, str]) -> None:
    ops.apply_crd()


def apply(*objects: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


@pytest.fixture
def queue(namespace: str, s3_env: dict[str, str], crd: None) -> Iterator[Callable[[int], str]]:
    """Makes the test's own ClusterQueue of `gpus` GPUs (preempting lower priorities) and a LocalQueue
    `team` in its namespace pointing at it; returns the ClusterQueue's name."""
    ops.setup_namespace(namespace, s3_env)
    name = f"cq-{namespace}"

    def make(gpus: int) -> str:
        apply(
            local_kueue.cluster_queue(name, gpus),
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": "team", "namespace": namespace},
                "spec": {"clusterQueue": name},
            },
        )
        return name

    yield make
    kubectl("delete", "clusterqueue", name, "--wait=false", check=False)


def job(
    namespace: str, s3_env: dict[str, str], bucket: str, name: str, stub: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    train = ops.upload_dataset(s3_env, bucket, f"data/{name}.jsonl", ops.chat_rows(8), stub)
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    return ops.job_manifest(
        name,
        namespace,
        bucket=bucket,
        train=train,
        endpoint=endpoint,
        extra={"queueName": "team", **extra},
    )


def workloads(namespace: str) -> list[dict[str, Any]]:
    return list(kubectl_json("get", "workloads.kueue.x-k8s.io", "-n", namespace)["items"])


def status(name: str, namespace: str) -> dict[str, Any]:
    return dict(ops.ftj(name, namespace).get("status") or {})


def is_admitted(name: str, namespace: str) -> bool:
    return (ops.condition(ops.ftj(name, namespace), "Admitted") or {}).get("status") == "True"


def debug(namespace: str, op: ops.Operator) -> str:
    state = kubectl("get", "ftj,jobs,pods,workloads", "-n", namespace, "-o", "wide", check=False).stdout
    messages = {
        j["metadata"]["name"]: (j.get("status") or {}).get("message")
        for j in kubectl_json("get", "ftj", "-n", namespace)["items"]
    }
    kueue = {w["metadata"]["name"]: (w.get("status") or {}).get("conditions") for w in workloads(namespace)}
    return f"{state}\n{json.dumps(messages, indent=1)}\n{json.dumps(kueue, indent=1)}\n--- operator log\n{op.log_tail()}"


def test_a_third_job_waits_for_quota_then_runs(
    namespace: str, s3_env: dict[str, str], s3_bucket: str, queue: Callable[[int], str]
) -> None:
    ns = namespace
    cluster_queue = queue(2)
    stub = {"stepSeconds": 0.5, "totalSteps": 16}
    with ops.running_operator(ns) as op:
        for name in ("first", "second"):
            ops.apply(job(ns, s3_env, s3_bucket, name, stub))
        for name in ("first", "second"):
            wait_for(lambda n=name: is_admitted(n, ns), 120, f"{name} admitted")  # type: ignore[misc]
        ops.apply(job(ns, s3_env, s3_bucket, "third", stub))
        try:
            third = wait_for(
                lambda: (s := status("third", ns)).get("queue", {}).get("position") and s, 120, "third queued"
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\n{debug(ns, op)}") from None
        admitted = ops.condition({"status": third}, "Admitted") or {}
        assert third["phase"] == "Queued", json.dumps(third, indent=1)
        assert admitted["status"] == "False"
        assert admitted["reason"] == "WaitingForQuota"
        expected = f"waiting for quota in ClusterQueue {cluster_queue}: needs 1 nvidia.com/gpu, 0 of 2 free"
        assert third["message"].startswith(expected), third["message"]
        assert "position 1 of 1 in LocalQueue team" in third["message"]
        assert third["queue"]["localQueue"] == "team"
        assert third["queue"]["clusterQueue"] == cluster_queue
        assert third["queue"]["workload"].startswith("job-third-train-a1-")
        # Held back by Kueue: its Job stays suspended, no pod of it asks for a GPU.
        assert ops.gpu_pods_ever(ns, "third") == []
        assert kubectl_json("get", "job", "third-train-a1", "-n", ns)["spec"]["suspend"] is True
        for name in ("first", "second", "third"):
            done = ops.wait_phase(name, ns, {"Succeeded", "Failed"}, 240, op)
            assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"], indent=1)
        third = status("third", ns)
        assert (ops.condition({"status": third}, "Admitted") or {}).get("reason") == "QuotaReserved"
        assert third["attempts"] == 1
        metrics = op.metrics()
        waits = [ln for ln in metrics.splitlines() if ln.startswith("finetune_job_queue_wait_seconds_count")]
        assert waits, metrics
        assert float(waits[0].split()[-1]) >= 3, waits


def test_a_higher_priority_job_preempts_and_the_preempted_one_resumes(
    namespace: str, s3_env: dict[str, str], s3_bucket: str, queue: Callable[[int], str]
) -> None:
    ns = namespace
    queue(1)
    classes = {f"low-{ns}": 10, f"high-{ns}": 1000}
    apply(
        *(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": name},
                "value": value,
            }
            for name, value in classes.items()
        )
    )
    total = 24
    try:
        with ops.running_operator(ns) as op:
            ops.apply(
                job(
                    ns,
                    s3_env,
                    s3_bucket,
                    "low",
                    {"stepSeconds": 0.5, "totalSteps": total},
                    workloadPriorityClassName=f"low-{ns}",
                )
            )
            try:
                wait_for(
                    lambda: (status("low", ns).get("progress") or {}).get("step", 0) >= 7,
                    180,
                    "low at step 7",
                )
            except AssertionError as err:
                raise AssertionError(f"{err}\n{debug(ns, op)}") from None
            ops.apply(
                job(
                    ns,
                    s3_env,
                    s3_bucket,
                    "high",
                    {"stepSeconds": 0.2, "totalSteps": 8},
                    workloadPriorityClassName=f"high-{ns}",
                )
            )

            def preempted() -> dict[str, Any] | None:
                st = status("low", ns)
                running = ops.condition({"status": st}, "Running") or {}
                return st if running.get("reason") == "Preempted" else None

            low = wait_for(preempted, 120, "low preempted")
            assert low["phase"] == "Queued", json.dumps(low, indent=1)
            assert low["message"].startswith("preempted by Kueue"), low["message"]
            reasons = [
                e["reason"]
                for e in kubectl_json(
                    "get",
                    "events",
                    "-n",
                    ns,
                    "--field-selector",
                    "involvedObject.name=low,involvedObject.kind=FineTuneJob",
                )["items"]
            ]
            assert "Preempted" in reasons, reasons
            high = ops.wait_phase("high", ns, {"Succeeded", "Failed"}, 180, op)
            assert high["status"]["phase"] == "Succeeded"
            low_done = ops.wait_phase("low", ns, {"Succeeded", "Failed"}, 240, op)
            st = low_done["status"]
            assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
            # The same final step count as an uninterrupted run, within the same attempt: preemption
            # used no retry, and the trainer resumed from the checkpoint it saved on SIGTERM.
            assert st["progress"]["step"] == total
            assert st["attempts"] == 1
            assert "lastFailure" not in st
            result = ops.s3_client(s3_env).get_object(Bucket=s3_bucket, Key="out/low/reports/result.json")
            resumed = json.loads(result["Body"].read())["resumedFromStep"]
            assert 7 <= resumed < total, resumed
    finally:
        kubectl("delete", "workloadpriorityclass", *classes, "--wait=false", check=False)


def test_suspend_and_resume_through_kueue_and_no_workload_left_behind(
    namespace: str, s3_env: dict[str, str], s3_bucket: str, queue: Callable[[int], str]
) -> None:
    ns = namespace
    queue(1)
    stub = {"stepSeconds": 0.5, "totalSteps": 12}
    with ops.running_operator(ns) as op:
        # Long enough to be suspended while it trains.
        ops.apply(job(ns, s3_env, s3_bucket, "admitted", {"stepSeconds": 0.5, "totalSteps": 60}))
        wait_for(lambda: status("admitted", ns).get("phase") == "Running", 180, "admitted running")
        ops.apply(job(ns, s3_env, s3_bucket, "waiting", stub))
        wait_for(
            lambda: (status("waiting", ns).get("queue") or {}).get("position") == 1, 120, "waiting queued"
        )
        for name in ("admitted", "waiting"):
            kubectl("patch", "ftj", name, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        for name in ("admitted", "waiting"):
            ops.wait_phase(name, ns, "Suspended", 120, op)
        # Held in Kueue: both Workloads inactive, so the quota the first one freed admits neither.
        try:
            wait_for(lambda: not ops.gpu_pods_ever(ns, "admitted"), 60, "the admitted job's pods gone")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{debug(ns, op)}") from None
        active = {w["metadata"]["name"].split("-train-")[0]: w["spec"].get("active") for w in workloads(ns)}
        assert active == {"job-admitted": False, "job-waiting": False}, active
        assert kubectl_json("get", "job", "admitted-train-a1", "-n", ns)["spec"]["suspend"] is True
        assert ops.gpu_pods_ever(ns, "waiting") == []
        for name in ("admitted", "waiting"):
            kubectl("patch", "ftj", name, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
        for name in ("admitted", "waiting"):
            done = ops.wait_phase(name, ns, {"Succeeded", "Failed"}, 240, op)
            assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"], indent=1)
            assert done["status"]["progress"]["step"] == (60 if name == "admitted" else 12)
            assert done["status"]["attempts"] == 1
        # A queued job deleted: its Job and Workload go with it (owner references, the real GC).
        ops.apply(job(ns, s3_env, s3_bucket, "big", stub, resources={"gpus": 1, "nodes": 2}))
        big = wait_for(
            lambda: (s := status("big", ns)).get("queue", {}).get("workload") and s, 120, "big queued"
        )
        assert big["phase"] == "Queued"
        assert "this job needs 2: it is never admitted" in big["message"], big["message"]
        # All or nothing: a 2-pod job never starts one pod on a 1-GPU quota.
        assert ops.gpu_pods_ever(ns, "big") == []
        kubectl("delete", "ftj", "big", "-n", ns, "--wait=true", "--timeout=60s")
        wait_for(
            lambda: not [w for w in workloads(ns) if w["metadata"]["name"].startswith("job-big-")],
            60,
            "big's Workload deleted",
        )


def test_a_multi_node_job_is_admitted_all_at_once_or_not_at_all(
    namespace: str, s3_env: dict[str, str], s3_bucket: str, queue: Callable[[int], str]
) -> None:
    ns = namespace
    cluster_queue = queue(2)
    with ops.running_operator(ns) as op:
        ops.apply(job(ns, s3_env, s3_bucket, "one", {"stepSeconds": 0.5, "totalSteps": 80}))
        wait_for(lambda: is_admitted("one", ns), 120, "one admitted")
        # Two pods of one GPU each, with one GPU of the quota free: Kueue admits the whole attempt or
        # nothing, so neither pod starts while the other could not.
        ops.apply(job(ns, s3_env, s3_bucket, "pair", {}, resources={"gpus": 1, "nodes": 2}))
        try:
            pair = wait_for(
                lambda: (s := status("pair", ns)).get("queue", {}).get("position") and s, 120, "pair queued"
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\n{debug(ns, op)}") from None
        expected = f"waiting for quota in ClusterQueue {cluster_queue}: needs 2 nvidia.com/gpu, 1 of 2 free"
        assert pair["message"].startswith(expected), pair["message"]
        assert status("one", ns)["phase"] in ("Queued", "Running")
        assert ops.gpu_pods_ever(ns, "pair") == []
        assert kubectl_json("get", "job", "pair-train-a1", "-n", ns)["spec"]["suspend"] is True
