"""The operator against the real API server, scheduler, Job controller and node agent: every state of
DESIGN §4 with the stub trainer (localcluster.trainer_stub) behind a real Job and real pods."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.support import operator as ops
from tests.support.kube import kubectl, kubectl_json, wait_for
from tests.support.tcpproxy import Forwarder

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def crd(cluster: dict[str, str]) -> None:
    ops.apply_crd()


@pytest.fixture
def env(namespace: str, s3_env: dict[str, str], s3_bucket: str, crd: None) -> dict[str, str]:
    ops.setup_namespace(namespace, s3_env)
    return {"namespace": namespace, "bucket": s3_bucket, "endpoint": s3_env["AWS_ENDPOINT_URL"]}


@pytest.fixture
def operator(env: dict[str, str]) -> Iterator[ops.Operator]:
    with ops.running_operator(env["namespace"]) as op:
        yield op


def make_job(
    env: dict[str, str],
    s3_env: dict[str, str],
    name: str,
    rows: list[Any],
    stub: dict[str, Any] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    train = ops.upload_dataset(s3_env, env["bucket"], f"data/{name}.jsonl", rows, stub)
    return ops.job_manifest(
        name, env["namespace"], bucket=env["bucket"], train=train, endpoint=env["endpoint"], **kw
    )


def events(namespace: str, name: str) -> list[dict[str, Any]]:
    items = kubectl_json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name},involvedObject.kind=FineTuneJob",
    )["items"]
    # eventTime keeps microseconds; lastTimestamp is whole seconds, and names are random suffixes,
    # so two events in the same second would otherwise come back in any order.
    return sorted(
        items, key=lambda e: (e.get("eventTime") or e.get("lastTimestamp") or "", e["metadata"]["name"])
    )


def test_happy_path(env: dict[str, str], s3_env: dict[str, str], operator: ops.Operator) -> None:
    ns = env["namespace"]
    ops.apply(make_job(env, s3_env, "happy", ops.chat_rows(40), {"stepSeconds": 0.4}, batch_size=4))
    # 40 rows x 1 epoch / batch 4 = 10 steps of 0.4 s
    seen_phases: list[str] = []
    percents: set[int] = set()

    def finished() -> dict[str, Any] | None:
        obj = ops.ftj("happy", ns)
        st = obj.get("status", {})
        if st.get("phase") and (not seen_phases or seen_phases[-1] != st["phase"]):
            seen_phases.append(st["phase"])
        if st.get("phase") == "Running" and st.get("progress", {}).get("percent") is not None:
            percents.add(st["progress"]["percent"])
        return obj if st.get("phase") in ("Succeeded", "Failed") else None

    try:
        obj = wait_for(finished, 120, "happy to finish", interval=0.3)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{operator.log_tail()}") from None
    st = obj["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert seen_phases[0] in ("Pending", "Validating"), seen_phases
    assert "Running" in seen_phases, seen_phases
    assert (
        seen_phases.index("Running") > seen_phases.index("Validating")
        if "Validating" in seen_phases
        else True
    )
    assert any(0 < p < 100 for p in percents), percents  # progress moved while it ran
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Validated"]["status"] == "True"
    assert conds["Validated"]["reason"] == "InputsValid"
    assert conds["Admitted"]["status"] == "True"
    assert conds["Running"]["status"] == "False"
    assert conds["Running"]["reason"] == "Completed"
    assert conds["Succeeded"]["status"] == "True"
    assert conds["Succeeded"]["reason"] == "Completed"
    order = [conds[t]["lastTransitionTime"] for t in ("Validated", "Admitted", "Succeeded")]
    assert order == sorted(order)
    assert all(c["observedGeneration"] == obj["metadata"]["generation"] for c in st["conditions"])
    assert st["startTime"] <= st["completionTime"]
    assert st["attempts"] == 1
    assert st["trainerJobName"] == "happy-train-a1"
    assert st["progress"]["percent"] == 100
    assert st["progress"]["step"] == 10
    assert st["outputs"]["adapterURI"].endswith("/out/happy/adapter/")
    assert st["usage"]["gpuSeconds"] >= 3
    assert float(st["usage"]["estimatedCost"]) >= 0
    assert st["estimate"]["tokens"] > 0
    # printer columns
    row = kubectl("get", "ftj", "happy", "-n", ns, "--no-headers").stdout.split()
    assert row[0] == "happy"
    assert row[1] == "Succeeded"
    assert row[2] == "100"
    assert row[3] == st["metrics"]["trainLoss"]
    assert row[5] == st["usage"]["estimatedCost"]
    # one event per transition, in order
    reasons = wait_for(
        lambda: (
            [e["reason"] for e in events(ns, "happy")]
            if any(e["reason"] == "Succeeded" for e in events(ns, "happy"))
            else None
        ),
        20,
        "events",
    )
    assert reasons[0] == "Validating"
    assert reasons[-1] == "Succeeded"
    assert "Running" in reasons
    # `kubectl describe` says who reported them
    assert {e.get("reportingComponent") or e["source"]["component"] for e in events(ns, "happy")} == {
        "finetune-operator"
    }
    # the stub reports checkpoints like the trainer (everySteps 3 of 10 steps, keep 3 of them)
    assert [c["step"] for c in st["checkpoints"]] == [3, 6, 9]
    assert all(c["complete"] and c["createdAt"] for c in st["checkpoints"])
    assert st["checkpoints"][0]["uri"].endswith("/out/happy/checkpoints/step-3/")
    # the adapter is in S3
    s3 = ops.s3_client(s3_env)
    assert s3.head_object(Bucket=env["bucket"], Key="out/happy/adapter/adapter_model.safetensors")
    # the operator's own metrics
    text = operator.metrics()
    assert f'finetune_jobs{{namespace="{ns}",phase="Succeeded"}} 1.0' in text
    assert 'finetune_job_duration_seconds_count{result="succeeded"} 1.0' in text
    job = kubectl_json("get", "job", "happy-train-a1", "-n", ns)
    assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"


def test_invalid_dataset_fails_without_gpu(
    env: dict[str, str], s3_env: dict[str, str], operator: ops.Operator
) -> None:
    ns = env["namespace"]
    rows = [*ops.chat_rows(2), "{not json", *ops.chat_rows(3)]
    ops.apply(make_job(env, s3_env, "baddata", rows))
    obj = ops.wait_phase("baddata", ns, {"Failed", "Succeeded"}, 90, operator)
    st = obj["status"]
    failed = ops.condition(obj, "Failed")
    assert st["phase"] == "Failed"
    assert failed is not None
    assert failed["reason"] == "InvalidDataset"
    assert "train:3" in failed["message"], failed
    assert st["lastFailure"]["exitCode"] == 42
    assert ops.children(ns, "jobs", "baddata") == []
    assert ops.gpu_pods_ever(ns, "baddata") == []
    assert "Admitted" not in {c["type"] for c in st["conditions"]}
    report = ops.s3_client(s3_env).get_object(Bucket=env["bucket"], Key="out/baddata/reports/validation.json")
    assert json.loads(report["Body"].read())["errors"][0]["line"] == 3
    assert any(e["reason"] == "InvalidDataset" and e["type"] == "Warning" for e in events(ns, "baddata"))


def test_transient_failures_retry_then_exhaust(
    env: dict[str, str], s3_env: dict[str, str], operator: ops.Operator
) -> None:
    ns = env["namespace"]
    flaky = {"failAttempts": 2, "exitCode": 75, "failAtStep": 2, "stepSeconds": 0.2, "totalSteps": 6}
    ops.apply(make_job(env, s3_env, "flaky", ops.chat_rows(8), flaky, retries=2, every_steps=1))
    broken = {"failAttempts": 9, "exitCode": 75, "failAtStep": 1, "stepSeconds": 0.2, "totalSteps": 6}
    ops.apply(make_job(env, s3_env, "broken", ops.chat_rows(8), broken, retries=1, every_steps=1))
    ok = ops.wait_phase("flaky", ns, {"Succeeded", "Failed"}, 150, operator)
    assert ok["status"]["phase"] == "Succeeded", json.dumps(ok["status"], indent=1)
    assert ok["status"]["attempts"] == 3
    assert sorted(j["metadata"]["name"] for j in ops.children(ns, "jobs", "flaky")) == [
        "flaky-train-a1",
        "flaky-train-a2",
        "flaky-train-a3",
    ]
    result = json.loads(
        ops.s3_client(s3_env)
        .get_object(Bucket=env["bucket"], Key="out/flaky/reports/result.json")["Body"]
        .read()
    )
    assert result["resumedFromStep"] >= 2  # attempts resume from the last complete checkpoint
    bad = ops.wait_phase("broken", ns, {"Succeeded", "Failed"}, 150, operator)
    failed = ops.condition(bad, "Failed")
    assert failed is not None, bad["status"]
    assert failed["reason"] == "RetriesExhausted", bad["status"]
    assert "TransientError" in failed["message"]
    assert len(ops.children(ns, "jobs", "broken")) == 2
    assert any(e["reason"] == "TransientError" for e in events(ns, "broken"))


def test_a_transient_s3_error_in_validation_is_retried_and_the_job_succeeds(
    env: dict[str, str], s3_env: dict[str, str], operator: ops.Operator
) -> None:
    ns = env["namespace"]
    # The job's S3 endpoint is down while its first validation pod runs, and up for the retry.
    s3 = urlparse(env["endpoint"])
    port = ops.free_port()
    proxy = Forwarder(port, (s3.hostname or "127.0.0.1", s3.port or 80))
    job = make_job(env, s3_env, "flaky-s3", ops.chat_rows(8), {"stepSeconds": 0.1}, batch_size=4)
    job["spec"]["storage"]["endpoint"] = f"http://127.0.0.1:{port}"
    ops.apply(job)
    try:
        waiting = wait_for(
            lambda: (
                (m := ops.ftj("flaky-s3", ns).get("status", {}).get("message") or "")
                and "retrying in" in m
                and m
            ),
            180,
            "the first validation pod to fail with a transient error",
        )
        assert "TransientError" in waiting
        assert "retries used" in waiting
        proxy.start()
        obj = ops.wait_phase("flaky-s3", ns, {"Succeeded", "Failed"}, 240, operator)
    finally:
        proxy.close()
    st = obj["status"]
    assert st["phase"] == "Succeeded", st
    # Usually one retry; a second if the operator first looked after the back-off had passed.
    name, _, tries = st["validationPodName"].rpartition("-r")
    assert tries in ("1", "2"), st["validationPodName"]
    pods = {p["metadata"]["name"]: p for p in ops.children(ns, "pod", "flaky-s3")}
    failed = [n for n in pods if n.startswith(name) and pods[n]["status"]["phase"] == "Failed"]
    assert len(failed) == int(tries)  # kept for their logs
    assert "TransientError" in [e["reason"] for e in events(ns, "flaky-s3")]
    # The retries are charged to the budget the trainer attempts share.
    job_obj = ops.children(ns, "job", "flaky-s3")[0]
    assert job_obj["metadata"]["annotations"]["finetune.dev/retries-used"] == tries


def test_too_many_gpus_is_queued_with_the_schedulers_message(
    env: dict[str, str], s3_env: dict[str, str], operator: ops.Operator
) -> None:
    ns = env["namespace"]
    ops.apply(make_job(env, s3_env, "huge", ops.chat_rows(4), gpus=16))

    def queued_with_message() -> dict[str, Any] | None:
        obj = ops.ftj("huge", ns)
        running = ops.condition(obj, "Running")
        ok = (
            obj.get("status", {}).get("phase") == "Queued"
            and running
            and running["reason"] == "Unschedulable"
        )
        return obj if ok else None

    try:
        obj = wait_for(queued_with_message, 90, "huge to be Queued/Unschedulable")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{ops.ftj('huge', ns).get('status')}\n{operator.log_tail()}") from None
    message = ops.condition(obj, "Running")["message"]  # type: ignore[index]
    assert "Insufficient nvidia.com/gpu" in message, message
    assert obj["status"]["message"] == message


def test_suspend_resume_delete(env: dict[str, str], s3_env: dict[str, str], operator: ops.Operator) -> None:
    ns = env["namespace"]
    ops.apply(
        make_job(
            env, s3_env, "pause", ops.chat_rows(8), {"stepSeconds": 0.3, "totalSteps": 40}, every_steps=50
        )
    )
    wait_for(
        lambda: (ops.ftj("pause", ns).get("status", {}).get("progress", {}).get("step") or 0) >= 3,
        90,
        "pause to make progress",
    )
    kubectl("patch", "ftj", "pause", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    ops.wait_phase("pause", ns, "Suspended", 30, operator)
    wait_for(
        lambda: (
            not [
                p
                for p in ops.children(ns, "pods", "pause")
                if p["metadata"]["labels"].get("app.kubernetes.io/component") == "trainer"
                and p["status"].get("phase") not in ("Succeeded", "Failed")
            ]
        ),
        60,
        "trainer pods gone",
    )

    def suspended_and_stopped() -> dict[str, Any] | None:
        obj = ops.ftj("pause", ns)
        return obj if obj["status"].get("message", "").startswith("suspended;") else None

    obj = wait_for(suspended_and_stopped, 30, "Suspended with pods gone")
    assert ops.condition(obj, "Suspended")["status"] == "True"  # type: ignore[index]
    # the trainer saved a checkpoint on SIGTERM (everySteps 50 would not have written one)
    keys = ops.s3_client(s3_env).list_objects_v2(Bucket=env["bucket"], Prefix="out/pause/checkpoints/")
    assert any(k["Key"].endswith("/COMPLETE") for k in keys.get("Contents", []))
    kubectl("patch", "ftj", "pause", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    obj = ops.wait_phase("pause", ns, "Running", 60, operator)
    assert ops.condition(obj, "Suspended")["reason"] == "Resumed"  # type: ignore[index]
    assert obj["status"]["attempts"] == 1  # resuming is not a new attempt
    kubectl("delete", "ftj", "pause", "-n", ns, "--wait=true", "--timeout=60s")
    for kind in ("jobs", "pods", "configmaps"):
        wait_for(lambda k=kind: ops.children(ns, k, "pause") == [], 60, f"no {kind} left")  # type: ignore[misc]


def test_a_trainer_job_deleted_by_hand_is_replaced_by_a_new_attempt(
    env: dict[str, str], s3_env: dict[str, str]
) -> None:
    ns = env["namespace"]
    with ops.running_operator(ns, FTO_JOB_VISIBLE_GRACE_SECONDS="5") as op:
        ops.apply(
            make_job(
                env, s3_env, "orphan", ops.chat_rows(8), {"stepSeconds": 0.3, "totalSteps": 30}, every_steps=5
            )
        )
        wait_for(
            lambda: (ops.ftj("orphan", ns).get("status", {}).get("progress", {}).get("step") or 0) >= 6,
            90,
            "orphan to save a checkpoint",
        )
        kubectl("delete", "job", "orphan-train-a1", "-n", ns, "--wait=true", "--timeout=60s")
        obj = ops.wait_phase("orphan", ns, {"Succeeded", "Failed"}, 180, op)
        # Read before the operator fixture deletes the job and, with it, the pods.
        pods = ops.children(ns, "pods", "orphan")
    st = obj["status"]
    assert st["phase"] == "Succeeded", st
    assert st["attempts"] == 2
    assert st["lastFailure"]["reason"] == "TrainerJobDeleted"
    assert "orphan-train-a1 was deleted" in st["lastFailure"]["message"]
    # The new attempt resumed from the deleted one's checkpoint rather than starting over.
    [second] = [p for p in pods if p["metadata"]["labels"].get("finetune.dev/attempt") == "2"]
    summary = json.loads(second["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert summary["resumedFromStep"] >= 5


def test_recreated_job_does_not_inherit_its_predecessors_children(
    env: dict[str, str], s3_env: dict[str, str], operator: ops.Operator
) -> None:
    """Delete a finished job and apply one of the same name at once: the garbage collector is still
    removing the old children (same names), and the new job must neither adopt them nor stall."""
    ns = env["namespace"]
    ops.apply(make_job(env, s3_env, "again", ops.chat_rows(8), {"stepSeconds": 0.1, "totalSteps": 3}))
    ops.wait_phase("again", ns, "Succeeded", 90, operator)
    kubectl("delete", "ftj", "again", "-n", ns, "--wait=true", "--timeout=60s")
    ops.apply(make_job(env, s3_env, "again", [*ops.chat_rows(2), "{broken"]))
    obj = ops.wait_phase("again", ns, {"Succeeded", "Failed"}, 90, operator)
    failed = ops.condition(obj, "Failed")
    assert failed is not None, obj["status"]
    assert failed["reason"] == "InvalidDataset"
    assert "train:3" in failed["message"]
    # it validated with its own pod and never got to training (the old, passed validation is not its)
    assert "Admitted" not in {c["type"] for c in obj["status"]["conditions"]}
    assert ops.children(ns, "jobs", "again") == []
    pods = ops.children(ns, "pods", "again")
    assert [p["metadata"]["ownerReferences"][0]["uid"] for p in pods] == [obj["metadata"]["uid"]]
