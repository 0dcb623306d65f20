"""The state machine, table by table: given a FineTuneJob and its children, the decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from finetune_contract.outcomes import (
    CheckpointRef,
    Failed,
    FailureReason,
    Succeeded,
    Validated,
    render_summary,
)
from finetune_operator.api import ConditionType, FineTuneJobSpec, FineTuneJobStatus, Phase, find_condition
from finetune_operator.cost import parse_price_table
from finetune_operator.manifests import JobRef
from finetune_operator.progress import Sample
from finetune_operator.reconcile import Decision, JobInput, Observed, reconcile, scrape_target
from finetune_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
REF = JobRef(name="bot", namespace="ns", uid="u1")
SETTINGS = OperatorSettings(image_pull_timeout=300, stall_seconds=600)
PRICES, _ = parse_price_table({"default": "2.00", "default.tokensPerSecond": "1000"})
LABELS = {"app.kubernetes.io/managed-by": "finetune-operator", "finetune.dev/job": "bot"}
VPOD = "bot-validate-"


def ts(delta: float = 0) -> str:
    return (NOW + timedelta(seconds=delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_spec(**overrides: Any) -> FineTuneJobSpec:
    body: dict[str, Any] = {
        "baseModel": {"uri": "s3://models/m/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://out/bot/"},
        "storage": {"credentialsSecretRef": {"name": "creds"}},
        "retries": {"limit": 2},
        "resources": {"gpus": 1},
    }
    body.update(overrides)
    return FineTuneJobSpec.model_validate(body)


def terminated(
    code: int,
    message: Validated | Succeeded | Failed | str | None = None,
    start: float = -60,
    end: float = -1,
) -> dict[str, Any]:
    text = message if isinstance(message, str) else (render_summary(message) if message is not None else "")
    return {
        "terminated": {
            "exitCode": code,
            "message": text,
            "startedAt": ts(start),
            "finishedAt": ts(end),
            "reason": "Completed" if code == 0 else "Error",
        }
    }


VALIDATED = Validated(rows=120, tokens=3600)


def bad_row(line: int, problem: str) -> Failed:
    return Failed(
        reason=FailureReason.INVALID_DATASET, exit_code=42, message=problem, file="train", line=line
    )


def pod(
    name: str,
    phase: str,
    *,
    component: str,
    attempt: int | None = None,
    state: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    created: float = -100,
    ip: str = "127.1.0.5",
) -> dict[str, Any]:
    labels = dict(LABELS, **{"app.kubernetes.io/component": component})
    if attempt is not None:
        labels["finetune.dev/attempt"] = str(attempt)
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if state is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": state, "image": "x"}]
    if phase == "Running":
        status["podIP"] = ip
        status["startTime"] = ts(-50)
    return {
        "metadata": {"name": name, "uid": name, "labels": labels, "creationTimestamp": ts(created)},
        "spec": {
            "nodeName": "local-gpu-0",
            "containers": [{"name": "trainer", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": status,
    }


def vpod(phase: str, try_: int = 0, **kw: Any) -> dict[str, Any]:
    from finetune_operator import manifests, names

    return pod(
        names.validation_pod_name("bot", manifests.validation_hash(make_spec()), try_),
        phase,
        component="validation",
        **kw,
    )


def tpod(attempt: int, phase: str, **kw: Any) -> dict[str, Any]:
    return pod(f"bot-train-a{attempt}-xyz", phase, component="trainer", attempt=attempt, **kw)


def tjob(
    attempt: int, *, cond: str | None = None, reason: str = "", suspend: bool = False, used: int = 0
) -> dict[str, Any]:
    conditions = [{"type": cond, "status": "True", "reason": reason}] if cond else []
    return {
        "metadata": {
            "name": f"bot-train-a{attempt}",
            "creationTimestamp": ts(-90),
            "labels": dict(LABELS, **{"finetune.dev/attempt": str(attempt)}),
            "annotations": {"finetune.dev/retries-used": str(used)},
        },
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions},
    }


def run(
    status: FineTuneJobStatus | None = None,
    spec: FineTuneJobSpec | None = None,
    *,
    vpods: list[dict[str, Any]] | None = None,
    jobs: list[dict[str, Any]] | None = None,
    tpods: list[dict[str, Any]] | None = None,
    sample: Sample | None = None,
    now: datetime = NOW,
) -> Decision:
    job = JobInput(REF, 1, spec or make_spec(), status or FineTuneJobStatus())
    obs = Observed(vpods or [], jobs or [], tpods or [], sample, PRICES)
    return reconcile(job, obs, SETTINGS, now)


def validated() -> FineTuneJobStatus:
    """The status after validation passed and attempt 1 was created."""
    return run(vpods=[vpod("Succeeded", state=terminated(0, VALIDATED))]).status


def cond(d: Decision, type_: str) -> tuple[str, str] | None:
    c = find_condition(d.status.conditions, type_)
    return (c.status.value, c.reason) if c else None


def kinds(d: Decision) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in d.create]


def test_new_job_starts_validation_without_gpu() -> None:
    d = run()
    assert [k for k, _ in kinds(d)] == ["ConfigMap", "Pod"]
    assert kinds(d)[1][1].startswith(VPOD)
    assert d.status.phase == Phase.VALIDATING
    assert cond(d, ConditionType.VALIDATED) == ("False", "Validating")
    assert [e.reason for e in d.events] == ["Validating"]
    assert not d.done


def test_validation_running_creates_nothing() -> None:
    first = run().status
    d = run(first, vpods=[vpod("Running", state={"running": {"startedAt": ts(-5)}})])
    assert d.create == []
    assert d.events == []
    assert d.status.to_patch() == first.to_patch()


def test_validation_passed_creates_attempt_one_and_estimates() -> None:
    d = run(run().status, vpods=[vpod("Succeeded", state=terminated(0, VALIDATED))])
    assert kinds(d) == [("ConfigMap", "bot-config"), ("Job", "bot-train-a1")]
    assert d.create[1]["metadata"]["annotations"]["finetune.dev/retries-used"] == "0"
    assert cond(d, ConditionType.VALIDATED) == ("True", "InputsValid")
    assert cond(d, ConditionType.ADMITTED) == ("True", "JobCreated")
    assert d.status.phase == Phase.QUEUED
    assert d.status.attempts == 1
    assert d.status.trainer_job_name == "bot-train-a1"
    # 3600 tokens x 3 epochs / 1000 tokens/s = 10.8 s = 0.003 GPU-hours at 2.00
    assert d.status.estimate is not None
    assert d.status.estimate.tokens == 10800
    assert d.status.estimate.cost == "0.01"
    assert d.status.start_time == NOW


def test_the_trainer_pods_scratch_follows_the_sizes_validation_measured() -> None:
    measured = Validated(rows=120, tokens=3600, model_bytes=16 * 10**9, dataset_file_bytes=5 * 1024**2)
    d = run(run().status, vpods=[vpod("Succeeded", state=terminated(0, measured))])
    assert d.status.resolved is not None
    resolved = d.status.resolved.scratch
    assert resolved is not None
    assert resolved.request == "16288Mi"  # 16e9 bytes of weights + 5 MiB of dataset + 1 GiB of caches
    assert resolved.size_limit == "30937Mi"  # + 4 LoRA r16 states: 8e9 x 0.25% x 16 x 12 bytes = 14648 MiB
    pod = d.create[1]["spec"]["template"]["spec"]
    [scratch] = [v for v in pod["volumes"] if v["name"] == "scratch"]
    assert scratch["emptyDir"] == {"sizeLimit": "30937Mi"}
    assert pod["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "16288Mi"
    # The next attempt is sized the same from the status (the validation pod is not read again).
    assert d.status.model_dump(by_alias=True, exclude_none=True)["resolved"]["scratch"] == {
        "request": "16288Mi",
        "sizeLimit": "30937Mi",
    }


@pytest.mark.parametrize(
    ("message", "reason", "needle"),
    [
        (bad_row(3, "not valid JSON"), "InvalidDataset", "not valid JSON (train:3)"),
        (
            Failed(
                reason=FailureReason.ACCESS_DENIED, exit_code=42, message="reading s3://data/train.jsonl: 403"
            ),
            "AccessDenied",
            "403",
        ),
        (
            Failed(
                reason=FailureReason.INVALID_MODEL, exit_code=42, message="baseModel.uri has no config.json"
            ),
            "InvalidModel",
            "config.json",
        ),
        (
            Failed(reason=FailureReason.INVALID_OUTPUT, exit_code=42, message="output.uri is not writable"),
            "InvalidOutput",
            "not writable",
        ),
        # No summary at all (the pod died before writing one): still permanent, with the log tail.
        ("Traceback ... ValueError: boom", "InvalidSpec", "boom"),
    ],
)
def test_invalid_input_fails_before_any_gpu(message: Failed | str, reason: str, needle: str) -> None:
    d = run(run().status, vpods=[vpod("Failed", state=terminated(42, message))])
    assert d.done
    assert d.status.phase == Phase.FAILED
    assert cond(d, ConditionType.FAILED) == ("True", reason)
    assert needle in (d.status.message or "")
    assert not any(o["kind"] == "Job" for o in d.create)
    assert d.status.last_failure is not None
    assert d.status.last_failure.exit_code == 42
    assert [(e.type, e.reason) for e in d.events] == [("Warning", reason)]
    assert d.status.completion_time == NOW


TRANSIENT = Failed(reason=FailureReason.TRANSIENT_ERROR, exit_code=75, message="reading s3://data: timeout")


def test_a_transient_validation_failure_is_retried_after_a_backoff_within_the_budget() -> None:
    failed0 = vpod("Failed", state=terminated(75, TRANSIENT, end=-3))
    # Within the back-off (10 s after the first failure): nothing is created, the wait is said.
    d = run(run().status, vpods=[failed0])
    assert d.create == []
    assert not d.done
    assert cond(d, ConditionType.VALIDATED) == ("False", "TransientError")
    assert "retrying in 7s (retries used 1 of 2)" in (d.status.message or "")
    # After it: the next try, with its own name; the failed pod stays for its logs.
    d = run(d.status, vpods=[failed0], now=NOW + timedelta(seconds=8))
    assert [k for k, _ in kinds(d)] == ["Pod"]
    assert kinds(d)[0][1].endswith("-r1")
    assert d.status.validation_pod_name == kinds(d)[0][1]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "TransientError")]
    # The retry passes: attempt 1 starts with the retry already counted against the shared budget.
    passed = vpod("Succeeded", 1, state=terminated(0, VALIDATED))
    d = run(d.status, vpods=[failed0, passed], now=NOW + timedelta(seconds=30))
    assert kinds(d) == [("ConfigMap", "bot-config"), ("Job", "bot-train-a1")]
    assert d.create[1]["metadata"]["annotations"]["finetune.dev/retries-used"] == "1"


def test_validation_retries_stop_when_the_budget_is_used_and_evictions_do_not_count() -> None:
    evicted = {"type": "DisruptionTarget", "status": "True", "message": "evicted: node pressure"}
    tries = [
        vpod("Failed", 0, conditions=[evicted]),
        vpod("Failed", 1, state=terminated(75, TRANSIENT, end=-400)),
        vpod("Failed", 2, state=terminated(1, "Traceback ... KeyError", end=-200)),
    ]
    d = run(run().status, vpods=tries)
    assert [k for _, k in kinds(d)] == [tries[2]["metadata"]["name"].replace("-r2", "-r3")]
    tries.append(vpod("Failed", 3, state=terminated(75, TRANSIENT, end=-100)))
    d = run(d.status, vpods=tries)
    assert d.done
    assert cond(d, ConditionType.FAILED) == ("True", "RetriesExhausted")
    assert "spec.retries.limit=2" in (d.status.message or "")


def test_a_validation_pod_stopped_at_its_deadline_fails_the_job_naming_the_limit() -> None:
    stopped = vpod("Failed", state=terminated(143, "Terminated"))
    stopped["status"] |= {"reason": "DeadlineExceeded", "message": "Pod was active longer than 1800s"}
    d = run(run().status, vpods=[stopped])
    assert d.done
    assert cond(d, ConditionType.FAILED) == ("True", "DeadlineExceeded")
    assert "validation.deadlineSeconds" in (d.status.message or "")


def test_an_oom_killed_validation_pod_fails_at_once_naming_the_platforms_limit_not_the_jobs() -> None:
    killed = vpod("Failed", state=terminated(137, ""))
    killed["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    d = run(run().status, vpods=[killed])
    assert d.done  # the same input would be killed again: no retry
    assert [k for k, _ in kinds(d)] == []
    assert cond(d, ConditionType.FAILED) == ("True", "OOMKilled")
    message = d.status.message or ""
    assert "validation.memoryLimit" in message
    assert "4Gi" in message
    assert "resources.memory" not in message


def test_secret_not_found_stalls_validation_then_fails() -> None:
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "creds" not found'}}
    d = run(run().status, vpods=[vpod("Pending", state=waiting, created=-10)])
    assert cond(d, ConditionType.STALLED) == ("True", "SecretNotFound")
    assert not d.done
    d = run(run().status, vpods=[vpod("Pending", state=waiting, created=-400)])
    assert cond(d, ConditionType.FAILED) == ("True", "SecretNotFound")


def test_unschedulable_shows_queued_with_the_schedulers_message() -> None:
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    unsched = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}]
    d = run(validated(), jobs=[tjob(1)], tpods=[tpod(1, "Pending", conditions=unsched)])
    assert d.status.phase == Phase.QUEUED
    assert cond(d, ConditionType.RUNNING) == ("False", "Unschedulable")
    assert msg in (d.status.message or "")
    assert d.create == []


def test_running_with_progress_and_usage() -> None:
    running = tpod(1, "Running", state={"running": {"startedAt": ts(-36)}})
    d = run(
        validated(),
        jobs=[tjob(1)],
        tpods=[running],
        sample=Sample(step=5, total_steps=20, epoch=0.75, train_loss=1.23456, tokens_per_second=900.0),
    )
    assert d.status.phase == Phase.RUNNING
    assert cond(d, ConditionType.RUNNING) == ("True", "TrainerRunning")
    assert d.status.progress is not None
    assert d.status.progress.percent == 25
    assert d.status.metrics is not None
    assert d.status.metrics.train_loss == "1.2346"
    assert d.status.usage is not None
    assert d.status.usage.gpu_seconds == 36
    assert d.status.usage.estimated_cost == "0.02"
    assert [e.reason for e in d.events] == ["Running"]
    # the next sample moves the ETA from the step rate
    later = run(
        d.status,
        jobs=[tjob(1)],
        tpods=[running],
        sample=Sample(step=10, total_steps=20),
        now=NOW + timedelta(seconds=10),
    )
    assert later.status.progress is not None
    assert later.status.progress.eta_seconds == 20
    assert later.status.progress.eta == "20s"
    assert later.events == []


def test_finished_trainer_before_the_job_completes_stays_running() -> None:
    """Between the trainer's exit 0 and the Job controller's Complete, the phase must not go back."""
    running = tpod(1, "Running", state={"running": {"startedAt": ts(-36)}})
    before = run(validated(), jobs=[tjob(1)], tpods=[running]).status
    done = tpod(1, "Succeeded", state=terminated(0))
    d = run(before, jobs=[tjob(1)], tpods=[done])
    assert d.status.phase == Phase.RUNNING
    assert cond(d, ConditionType.RUNNING) == ("True", "TrainerRunning")
    assert d.create == []
    assert not d.done


def test_stalled_when_the_step_does_not_move() -> None:
    running = tpod(1, "Running", state={"running": {"startedAt": ts(-36)}})
    d = run(validated(), jobs=[tjob(1)], tpods=[running], sample=Sample(step=5, total_steps=20))
    d2 = run(
        d.status,
        jobs=[tjob(1)],
        tpods=[running],
        sample=Sample(step=5, total_steps=20),
        now=NOW + timedelta(seconds=700),
    )
    assert cond(d2, ConditionType.STALLED) == ("True", "NoProgress")
    d3 = run(
        d2.status,
        jobs=[tjob(1)],
        tpods=[running],
        sample=Sample(step=6, total_steps=20),
        now=NOW + timedelta(seconds=701),
    )
    assert cond(d3, ConditionType.STALLED) == ("False", "Progressing")


def test_complete_job_succeeds_with_outputs() -> None:
    summary = Succeeded(
        step=20,
        total_steps=20,
        epoch=3.0,
        train_loss=0.42,
        eval_loss=0.5,
        eval_perplexity=1.6487,
        adapter_uri="s3://out/bot/adapter/",
        sha256="a" * 64,
        report_uri="s3://out/bot/reports/result.json",
        tokens_per_second=117.25,
        checkpoints=[CheckpointRef(step=10, created_at=NOW), CheckpointRef(step=20, created_at=NOW)],
    )
    d = run(
        validated(),
        jobs=[tjob(1, cond="Complete")],
        tpods=[tpod(1, "Succeeded", state=terminated(0, summary))],
    )
    assert d.done
    assert d.status.phase == Phase.SUCCEEDED
    assert cond(d, ConditionType.SUCCEEDED) == ("True", "Completed")
    assert cond(d, ConditionType.RUNNING) == ("False", "Completed")
    assert d.status.progress is not None
    assert d.status.progress.tokens_per_second == "117.2"  # the run's average, not the idle gauge
    assert d.status.outputs is not None
    assert d.status.outputs.adapter_uri == "s3://out/bot/adapter/"
    assert d.status.progress is not None
    assert d.status.progress.percent == 100
    assert d.status.metrics is not None
    assert d.status.metrics.train_loss == "0.4200"
    assert d.status.metrics.eval_perplexity == "1.6487"
    assert [(c.step, c.uri, c.complete) for c in d.status.checkpoints] == [
        (10, "s3://out/bot/checkpoints/step-10/", True),
        (20, "s3://out/bot/checkpoints/step-20/", True),
    ]
    assert d.status.completion_time == NOW
    assert [e.reason for e in d.events] == ["Succeeded"]


@pytest.mark.parametrize(
    ("code", "used", "limit", "expect_reason", "next_used"),
    [
        (75, 0, 2, "TransientError", 1),
        (1, 1, 2, "TrainerError", 2),
        (137, 0, 2, "OOMKilled", 1),
        (75, 2, 2, "RetriesExhausted", None),
        (75, 0, 0, "RetriesExhausted", None),
    ],
)
def test_transient_failures_use_the_budget(
    code: int, used: int, limit: int, expect_reason: str, next_used: int | None
) -> None:
    spec = make_spec(retries={"limit": limit})
    failed = tpod(1, "Failed", state=terminated(code, "boom"))
    d = run(
        validated(),
        spec,
        jobs=[tjob(1, cond="Failed", reason="BackoffLimitExceeded", used=used)],
        tpods=[failed],
    )
    if next_used is None:
        assert d.done
        assert cond(d, ConditionType.FAILED) == ("True", expect_reason)
        assert d.create == []
    else:
        assert kinds(d) == [("ConfigMap", "bot-config"), ("Job", "bot-train-a2")]
        assert d.create[1]["metadata"]["annotations"]["finetune.dev/retries-used"] == str(next_used)
        assert cond(d, ConditionType.RUNNING) == ("False", expect_reason)
        assert d.status.attempts == 2
        assert ("Warning", expect_reason) in [(e.type, e.reason) for e in d.events]
        assert not d.done


def test_invalid_input_in_training_is_never_retried() -> None:
    failed = tpod(1, "Failed", state=terminated(42, bad_row(9, "bad row")))
    d = run(validated(), jobs=[tjob(1, cond="Failed", reason="PodFailurePolicy")], tpods=[failed])
    assert cond(d, ConditionType.FAILED) == ("True", "InvalidDataset")
    assert d.create == []


def test_deadline_exceeded_is_terminal() -> None:
    d = run(validated(), jobs=[tjob(1, cond="Failed", reason="DeadlineExceeded")], tpods=[])
    assert cond(d, ConditionType.FAILED) == ("True", "DeadlineExceeded")


def test_next_attempt_gets_the_deadline_that_is_left() -> None:
    spec = make_spec(activeDeadlineSeconds=1000)
    st = validated()  # started at NOW
    failed = tpod(1, "Failed", state=terminated(75))
    d = run(st, spec, jobs=[tjob(1, cond="Failed")], tpods=[failed], now=NOW + timedelta(seconds=400))
    assert d.create[1]["spec"]["activeDeadlineSeconds"] == 600
    d = run(st, spec, jobs=[tjob(1, cond="Failed")], tpods=[failed], now=NOW + timedelta(seconds=1001))
    assert cond(d, ConditionType.FAILED) == ("True", "DeadlineExceeded")


def test_suspend_and_resume() -> None:
    running = tpod(1, "Running", state={"running": {"startedAt": ts(-30)}})
    st = run(validated(), jobs=[tjob(1)], tpods=[running]).status
    d = run(st, make_spec(suspend=True), jobs=[tjob(1)], tpods=[running])
    assert d.patch_jobs == [("bot-train-a1", {"spec": {"suspend": True}})]
    assert d.status.phase == Phase.SUSPENDED
    assert "stopping" in (d.status.message or "")
    d = run(d.status, make_spec(suspend=True), jobs=[tjob(1, suspend=True)], tpods=[])
    assert d.patch_jobs == []
    assert "suspended" in (d.status.message or "")
    d = run(d.status, make_spec(suspend=False), jobs=[tjob(1, suspend=True)], tpods=[])
    assert d.patch_jobs == [("bot-train-a1", {"spec": {"suspend": False}})]
    assert cond(d, ConditionType.SUSPENDED) == ("False", "Resumed")
    assert d.status.phase == Phase.QUEUED
    d = run(d.status, make_spec(), jobs=[tjob(1)], tpods=[running])
    assert d.status.phase == Phase.RUNNING


def test_suspended_before_training_creates_no_job() -> None:
    st = run(vpods=[vpod("Running")]).status
    d = run(st, make_spec(suspend=True), vpods=[vpod("Succeeded", state=terminated(0))])
    assert not any(o["kind"] == "Job" for o in d.create)
    assert d.status.phase == Phase.SUSPENDED


def test_terminal_job_is_left_alone() -> None:
    failed = run(run().status, vpods=[vpod("Failed", state=terminated(42, bad_row(1, "bad")))]).status
    d = run(failed, vpods=[], jobs=[], tpods=[])
    assert d.done
    assert d.create == []
    assert d.events == []
    assert d.patch_jobs == []


def test_a_job_not_yet_in_the_index_is_not_created_twice() -> None:
    st = validated()
    failed = tpod(1, "Failed", state=terminated(75))
    d = run(st, jobs=[tjob(1, cond="Failed")], tpods=[failed])
    assert kinds(d)[-1] == ("Job", "bot-train-a2")
    # the index still shows only attempt 1 while the status already says 2: wait, create nothing
    d2 = run(d.status, jobs=[tjob(1, cond="Failed")], tpods=[failed])
    assert d2.create == []


def test_a_trainer_job_deleted_by_hand_leads_to_a_new_attempt_that_counts() -> None:
    failed = tpod(1, "Failed", state=terminated(75))
    st = run(validated(), jobs=[tjob(1, cond="Failed")], tpods=[failed]).status
    assert st.attempts == 2  # attempt 2 created (retries used 1), then deleted by hand
    # Within the grace for the index to show it: still nothing.
    later = NOW + timedelta(seconds=30)
    assert run(st, jobs=[tjob(1, cond="Failed")], tpods=[failed], now=later).create == []
    later = NOW + timedelta(seconds=90)
    d = run(st, jobs=[tjob(1, cond="Failed")], tpods=[failed], now=later)
    assert kinds(d)[-1] == ("Job", "bot-train-a3")
    assert d.create[-1]["metadata"]["annotations"]["finetune.dev/retries-used"] == "2"
    assert d.status.attempts == 3
    assert d.status.last_failure is not None
    assert d.status.last_failure.reason == "TrainerJobDeleted"
    assert "bot-train-a2 was deleted" in (d.status.message or "")
    # The first attempt's Job deleted: the budget starts from validation's retries (none here).
    st1 = validated()
    d = run(st1, now=NOW + timedelta(seconds=90))
    assert kinds(d)[-1] == ("Job", "bot-train-a2")
    assert d.create[-1]["metadata"]["annotations"]["finetune.dev/retries-used"] == "1"


def test_restart_without_status_recomputes_from_children() -> None:
    """An operator that died before writing status decides the same from the children alone."""
    jobs = [tjob(1, cond="Failed", used=0), tjob(2, used=1)]
    running = tpod(2, "Running", state={"running": {"startedAt": ts(-10)}})
    d = run(validated().model_copy(update={"attempts": 1}), jobs=jobs, tpods=[running])
    assert d.create == []
    assert d.status.attempts == 2
    assert d.status.trainer_job_name == "bot-train-a2"
    assert d.status.phase == Phase.RUNNING


def test_image_pull_stalls_then_fails_and_stops_the_job() -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}
    d = run(validated(), jobs=[tjob(1)], tpods=[tpod(1, "Pending", state=waiting, created=-10)])
    assert cond(d, ConditionType.STALLED) == ("True", "ImagePull")
    assert not d.done
    d = run(validated(), jobs=[tjob(1)], tpods=[tpod(1, "Pending", state=waiting, created=-400)])
    assert cond(d, ConditionType.FAILED) == ("True", "ImagePull")
    assert d.patch_jobs == [("bot-train-a1", {"spec": {"suspend": True}})]


def test_transition_times_move_only_on_status_change() -> None:
    st = run().status
    later = run(st, vpods=[vpod("Running")], now=NOW + timedelta(minutes=5)).status
    a = find_condition(st.conditions, ConditionType.VALIDATED)
    b = find_condition(later.conditions, ConditionType.VALIDATED)
    assert a is not None
    assert b is not None
    assert a.last_transition_time == b.last_transition_time


def test_unparseable_spec_fails_with_invalid_spec() -> None:
    job = JobInput(REF, 1, None, FineTuneJobStatus(), spec_error="unknown field")
    d = reconcile(job, Observed(), SETTINGS, NOW)
    assert cond(d, ConditionType.FAILED) == ("True", "InvalidSpec")


def test_scrape_target_is_the_running_pod_of_the_current_attempt() -> None:
    old = tpod(1, "Running", ip="127.1.0.1")
    new = tpod(2, "Running", ip="127.1.0.2")
    assert scrape_target([old, new], [tjob(1), tjob(2)]) == "127.1.0.2"
    assert scrape_target([old], [tjob(1), tjob(2)]) is None


def test_budget_estimate_warns_and_usage_stops_the_trainer() -> None:
    spec = make_spec(budget={"maxCost": "0.01"})
    # the estimate (10800 tokens / 1000 tok/s = 10.8 s at 2.00/h = 0.006) is within budget
    first = run(run().status, spec, vpods=[vpod("Succeeded", state=terminated(0, VALIDATED))])
    assert cond(first, ConditionType.BUDGET_EXCEEDED) == ("False", "WithinBudget")
    running = tpod(1, "Running", state={"running": {"startedAt": ts(-36)}})
    d = run(first.status, spec, jobs=[tjob(1)], tpods=[running])  # 36 GPU-seconds = 0.02 > 0.01
    assert cond(d, ConditionType.BUDGET_EXCEEDED) == ("True", "MaxCostExceeded")
    assert cond(d, ConditionType.FAILED) == ("True", "MaxCostExceeded")
    assert d.patch_jobs == [("bot-train-a1", {"spec": {"suspend": True}})]
    hours = make_spec(budget={"maxGPUHours": "0.001"})
    d = run(validated(), hours, jobs=[tjob(1)], tpods=[running])
    assert cond(d, ConditionType.FAILED) == ("True", "MaxGPUHoursExceeded")
    big = run(
        run().status,
        make_spec(budget={"maxCost": "0.001"}),
        vpods=[vpod("Succeeded", state=terminated(0, VALIDATED))],
    )
    assert cond(big, ConditionType.BUDGET_EXCEEDED) == ("True", "MaxCostExceeded")
    assert ("Warning", "MaxCostExceeded") in [(e.type, e.reason) for e in big.events]
    assert not big.done  # an estimate only warns


def indexed(p: dict[str, Any], index: int) -> dict[str, Any]:
    p["metadata"]["name"] = f"bot-train-a1-{index}-xyz"
    p["metadata"]["annotations"] = {"batch.kubernetes.io/job-completion-index": str(index)}
    return p


def test_a_multi_node_attempt_runs_only_when_every_pod_can_and_status_shows_each_pod() -> None:
    spec = make_spec(resources={"gpus": 2, "nodes": 2})
    status = run(spec=spec, vpods=[vpod("Succeeded", state=terminated(0, VALIDATED))]).status
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    unsched = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}]
    rank0 = indexed(tpod(1, "Running", state={"running": {"startedAt": ts(-36)}}), 0)
    rank1 = indexed(tpod(1, "Pending", conditions=unsched), 1)
    # Rank 0 runs but waits at the rendezvous for rank 1, which cannot be scheduled: that is the news.
    d = run(status, spec, jobs=[tjob(1)], tpods=[rank1, rank0])
    assert cond(d, ConditionType.RUNNING) == ("False", "Unschedulable")
    assert msg in (d.status.message or "")
    assert "trainer pod bot-train-a1-1-xyz (node rank 1 of 2)" in (d.status.message or "")
    world = d.status.world
    assert world is not None
    assert (world.nodes, world.processes_per_node, world.size) == (2, 2, 4)
    assert [(p.index, p.phase, p.reason) for p in world.pods] == [
        (0, "Running", None),
        (1, "Pending", "Unschedulable"),
    ]
    # Both running: Running, and the message says the world.
    rank1 = indexed(tpod(1, "Running", state={"running": {"startedAt": ts(-30)}}), 1)
    d = run(d.status, spec, jobs=[tjob(1)], tpods=[rank1, rank0])
    assert cond(d, ConditionType.RUNNING) == ("True", "TrainerRunning")
    assert "bot-train-a1-0-xyz" in (d.status.message or "")
    assert "2 of 2 pods running, world size 4 (2 x 2)" in (d.status.message or "")


def test_a_replaced_pod_is_shown_by_its_newest_instance() -> None:
    spec = make_spec(resources={"gpus": 1, "nodes": 2})
    status = run(spec=spec, vpods=[vpod("Succeeded", state=terminated(0, VALIDATED))]).status
    old = indexed(tpod(1, "Failed", state=terminated(76), created=-200), 1)
    old["metadata"]["name"] = "bot-train-a1-1-old"
    new = indexed(tpod(1, "Pending", created=-5), 1)
    rank0 = indexed(tpod(1, "Running", state={"running": {"startedAt": ts(-36)}}), 0)
    d = run(status, spec, jobs=[tjob(1)], tpods=[new, old, rank0])
    assert d.status.world is not None
    assert [(p.name, p.phase) for p in d.status.world.pods] == [
        ("bot-train-a1-0-xyz", "Running"),
        ("bot-train-a1-1-xyz", "Pending"),
    ]


def test_success_criteria_met_is_success_even_if_the_job_was_suspended_before_complete() -> None:
    done = tpod(1, "Succeeded", state=terminated(0))
    d = run(
        validated(),
        make_spec(suspend=True),
        jobs=[tjob(1, cond="SuccessCriteriaMet", suspend=True)],
        tpods=[done],
    )
    assert d.status.phase == Phase.SUCCEEDED
    assert d.patch_jobs == []
