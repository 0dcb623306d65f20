"""Failure classification, cost, progress parsing and settings: the pure pieces the reconcile uses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from finetune_contract.outcomes import Failed, FailureReason, render_summary
from finetune_operator.api import FineTuneJobSpec, Progress, Reason
from finetune_operator.cost import estimate, parse_price_table, pod_gpu_seconds, pod_run_seconds, usage
from finetune_operator.failures import (
    classify_exit,
    classify_job,
    classify_pod,
    pod_blocker,
    termination_summary,
)
from finetune_operator.progress import Sample, checkpoint_status, next_progress, parse_metrics
from finetune_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def failed_pod(code: int, message: str = "", reason: str = "Error") -> dict[str, Any]:
    return {
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": code, "message": message, "reason": reason}},
                }
            ],
        }
    }


def failed(reason: FailureReason, code: int, message: str, **where: Any) -> Failed:
    return Failed(reason=reason, exit_code=code, message=message, **where)


@pytest.mark.parametrize(
    ("code", "summary", "reason", "permanent", "counts"),
    [
        (
            42,
            failed(FailureReason.INVALID_DATASET, 42, "invalid input: train:3: bad", file="train", line=3),
            "InvalidDataset",
            True,
            True,
        ),
        # The trainer's reason is taken as it is, whatever the message says.
        (42, failed(FailureReason.ACCESS_DENIED, 42, "reading the dataset"), "AccessDenied", True, True),
        (42, failed(FailureReason.INVALID_OUTPUT, 42, "dataset is fine"), "InvalidOutput", True, True),
        (42, failed(FailureReason.INVALID_MODEL, 42, "output.uri AccessDenied"), "InvalidModel", True, True),
        # A 42 without a summary is still never retried.
        (42, None, "InvalidSpec", True, True),
        (75, failed(FailureReason.TRANSIENT_ERROR, 75, "S3 timeout"), "TransientError", False, True),
        (76, failed(FailureReason.PREEMPTED, 76, "SIGTERM"), "Preempted", False, False),
        (137, None, "OOMKilled", False, True),
        (1, failed(FailureReason.TRAINER_ERROR, 1, "Traceback"), "TrainerError", False, True),
    ],
)
def test_exit_codes(code: int, summary: Failed | None, reason: str, permanent: bool, counts: bool) -> None:
    f = classify_exit(code, summary)
    assert (f.reason, f.permanent, f.counts, f.exit_code) == (reason, permanent, counts, code)


def test_every_trainer_reason_is_a_condition_reason() -> None:
    assert {r.value for r in FailureReason} <= {r.value for r in Reason}


def test_file_and_line_are_kept_in_the_message() -> None:
    f = classify_exit(
        42, failed(FailureReason.INVALID_DATASET, 42, "row has no messages", file="train", line=12)
    )
    assert f.message == "row has no messages (train:12)"
    f = classify_exit(42, failed(FailureReason.INVALID_DATASET, 42, "train:12: row has no messages", line=12))
    assert f.message == "train:12: row has no messages"


def test_oom_killed_reason_wins_over_exit_code() -> None:
    f = classify_pod(failed_pod(1, reason="OOMKilled"))
    assert f is not None
    assert f.reason == "OOMKilled"


def test_a_pod_stopped_at_its_deadline_says_so_not_its_exit_code() -> None:
    pod = failed_pod(143, "Terminated")
    pod["status"] |= {"reason": "DeadlineExceeded", "message": "Pod was active on the node longer than 600s"}
    f = classify_pod(pod)
    assert f is not None
    assert (f.reason, f.permanent) == ("DeadlineExceeded", True)
    assert "longer than 600s" in f.message


def test_termination_message_is_typed_or_nothing() -> None:
    assert termination_summary(failed_pod(1, "plain log tail")) is None
    # Not a summary of the contract (no reason): not guessed at.
    assert termination_summary(failed_pod(1, json.dumps({"result": "Failed"}))) is None
    assert termination_summary({"status": {}}) is None
    text = render_summary(failed(FailureReason.INVALID_MODEL, 42, "no config.json"))
    assert termination_summary(failed_pod(42, text)) == failed(
        FailureReason.INVALID_MODEL, 42, "no config.json"
    )
    # The log tail (FallbackToLogsOnError) is what the user sees when there is no summary.
    crashed = classify_pod(failed_pod(1, "Traceback ...\nKeyError: 'x'"))
    assert crashed is not None
    assert crashed.message.endswith("KeyError: 'x'")


def test_succeeded_pod_is_no_failure() -> None:
    assert (
        classify_pod(
            {
                "status": {
                    "phase": "Succeeded",
                    "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 0}}}],
                }
            }
        )
        is None
    )


def test_disrupted_pod_does_not_count() -> None:
    pod = {
        "status": {
            "phase": "Failed",
            "conditions": [
                {"type": "DisruptionTarget", "status": "True", "message": "preempted by higher priority"}
            ],
        }
    }
    f = classify_pod(pod)
    assert f is not None
    assert f.reason == "Preempted"
    assert not f.counts


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (
            {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/1 nodes are available",
                    }
                ]
            },
            "Unschedulable",
        ),
        (
            {
                "containerStatuses": [
                    {"name": "trainer", "state": {"waiting": {"reason": "ImagePullBackOff"}}}
                ]
            },
            "ImagePull",
        ),
        (
            {
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "state": {
                            "waiting": {
                                "reason": "CreateContainerConfigError",
                                "message": 'secret "s3" not found',
                            }
                        },
                    }
                ]
            },
            "SecretNotFound",
        ),
        ({"containerStatuses": [{"name": "trainer", "state": {"running": {}}}]}, None),
    ],
)
def test_blockers(status: dict[str, Any], reason: str | None) -> None:
    f = pod_blocker({"status": status})
    assert (f.reason if f else None) == reason


def test_job_failure_prefers_the_permanent_pod() -> None:
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}
    bad_row = render_summary(failed(FailureReason.INVALID_DATASET, 42, "bad", file="train", line=2))
    f = classify_job(job, [failed_pod(75), failed_pod(42, bad_row)])
    assert f.permanent
    assert f.reason == "InvalidDataset"
    deadline = {
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}
    }
    assert classify_job(deadline, []).reason == "DeadlineExceeded"


def spec(**resources: object) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "s3://models/x/"},
            "dataset": {"train": "s3://data/t.jsonl"},
            "output": {"uri": "s3://out/x/"},
            "storage": {"credentialsSecretRef": {"name": "c"}},
            "hyperparameters": {"epochs": 2},
            "resources": resources or {"gpus": 1},
        }
    )


def test_price_table_and_estimate() -> None:
    table, problems = parse_price_table(
        {"default": "2", "h100": "4.50", "h100.tokensPerSecond": "9000", "broken": "cheap"}
    )
    assert problems == ["price table entry broken='cheap' is not a non-negative number; ignored"]
    assert table.price("h100") == Decimal("4.50")
    assert table.price("other") == Decimal(2)
    est = estimate(spec(gpus=2, gpuType="h100"), 16_200_000 * 2, table)
    # 16.2M tokens x 2 epochs / 9000 tok/s = 3600 s = 1 GPU-hour (independent of the GPU count) x 4.50
    assert (est.tokens, est.gpu_hours, est.cost) == (32_400_000, "1.00", "4.50")
    assert estimate(spec(gpus=0), 1000, table).cost == "0.00"
    assert parse_price_table(None)[0].price("x") == Decimal(0)


def test_usage_from_pod_times() -> None:
    def pod(state: dict[str, Any], gpus: str = "2") -> dict[str, Any]:
        return {
            "spec": {"containers": [{"name": "trainer", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]},
            "status": {"containerStatuses": [{"name": "trainer", "state": state}]},
        }

    def at(s: float) -> str:
        return (NOW + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")

    done = pod({"terminated": {"startedAt": at(-100), "finishedAt": at(-40)}}) | {"metadata": {"uid": "a"}}
    live = pod({"running": {"startedAt": at(-30)}}, "1") | {"metadata": {"uid": "b"}}
    assert pod_run_seconds(done, NOW) == 60
    seen = pod_gpu_seconds([done, live], NOW)
    assert seen == {"a": 120, "b": 30}
    u = usage(sum(seen.values()), Decimal("3.60"))
    assert u.gpu_seconds == 150
    assert u.estimated_cost == "0.15"
    # the pod of a suspension is gone; what it used is not
    assert pod_gpu_seconds([live], NOW + timedelta(seconds=10), seen) == {"a": 120, "b": 40}
    assert usage(5, Decimal(1), floor=1000).gpu_seconds == 1000


METRICS = """# HELP finetune_trainer_step Optimizer steps completed
# TYPE finetune_trainer_step gauge
finetune_trainer_step 30.0
finetune_trainer_total_steps 120.0
finetune_trainer_epoch 0.75
finetune_trainer_train_loss 1.5
finetune_trainer_eval_loss NaN
finetune_trainer_tokens_per_second 1234.5
"""


def test_parse_metrics_and_progress() -> None:
    sample = parse_metrics(METRICS)
    assert (sample.step, sample.total_steps, sample.train_loss, sample.eval_loss) == (30, 120, 1.5, None)
    p = next_progress(None, sample, NOW)
    assert (p.percent, p.epoch, p.tokens_per_second, p.eta) == (25, "0.75", "1234.5", None)
    later = next_progress(
        p, parse_metrics(METRICS.replace("step 30.0", "step 60.0")), NOW + timedelta(seconds=60)
    )
    assert later.eta_seconds == 120
    assert later.eta == "2m"
    assert later.percent == 50
    same = next_progress(
        later, parse_metrics(METRICS.replace("step 30.0", "step 60.0")), NOW + timedelta(seconds=90)
    )
    assert same.last_step_time == later.last_step_time  # the stall clock moves only with the step
    assert isinstance(same, Progress)
    # between steps the ETA counts down (by at most one step's time), it does not stand still
    assert same.eta_seconds == 118
    assert later.seconds_per_step == "2.000"


def test_eta_follows_the_smoothed_rate_not_the_last_interval() -> None:
    """1 step/s with one evaluation pause of 30 s: the last interval's rate would multiply the ETA by 7
    (what users saw as 4m -> 8m -> 37s); the smoothed rate moves it a little, then it counts down."""
    progress, t, etas = None, NOW, []
    for step in range(0, 100, 5):
        t += timedelta(seconds=5 if step != 50 else 35)
        progress = next_progress(progress, Sample(step=step + 5, total_steps=200), t)
        etas.append(progress.eta_seconds)
    assert etas[0] is None  # no rate before two steps were seen
    counted = [e for e in etas[1:] if e is not None]
    assert len(counted) == len(etas) - 1
    before, after_pause = counted[8], counted[9]
    assert 145 <= before <= 155  # 150 steps left at 1 s/step
    assert after_pause < before * 1.8
    # and from there it only counts down
    assert counted[9:] == sorted(counted[9:], reverse=True)


def test_checkpoints_from_the_trainers_metrics() -> None:
    text = METRICS + (
        "# TYPE finetune_trainer_checkpoint_created_timestamp_seconds gauge\n"
        'finetune_trainer_checkpoint_created_timestamp_seconds{step="200"} 1.7e9\n'
        'finetune_trainer_checkpoint_created_timestamp_seconds{step="400"} NaN\n'
        "# TYPE finetune_trainer_checkpoint_complete gauge\n"
        'finetune_trainer_checkpoint_complete{step="200"} 1.0\n'
        'finetune_trainer_checkpoint_complete{step="400"} 0.0\n'
    )
    sample = parse_metrics(text)
    assert sample.checkpoints is not None
    assert [(c.step, c.complete) for c in sample.checkpoints] == [(200, True), (400, False)]
    assert sample.checkpoints[0].created_at == datetime.fromtimestamp(1.7e9, UTC)
    assert sample.checkpoints[1].created_at is None
    status = checkpoint_status("s3://out/bot/", sample.checkpoints)
    assert [(c.step, c.uri, c.complete) for c in status] == [
        (200, "s3://out/bot/checkpoints/step-200/", True),
        (400, "s3://out/bot/checkpoints/step-400/", False),
    ]
    # a trainer that reports none yet, and one that does not report checkpoints at all
    empty = "# TYPE finetune_trainer_checkpoint_complete gauge\n"
    assert parse_metrics(METRICS + empty).checkpoints == ()
    assert parse_metrics(METRICS).checkpoints is None


def test_settings_from_env() -> None:
    s = OperatorSettings.from_env(
        {
            "FTO_TRAINER_IMAGE": "img:1",
            "FTO_PROGRESS_INTERVAL": "0.5",
            "FTO_VALIDATION_NODE_SELECTOR": "pool=cpu,zone=a",
            "FTO_NAMESPACES": "a,b",
        }
    )
    assert s.trainer_image == "img:1"
    assert s.progress_interval == 0.5
    assert s.validation_node_selector == {"pool": "cpu", "zone": "a"}
    assert s.namespaces == ("a", "b")
    assert OperatorSettings.from_env({}).trainer_image == "finetune-operator/trainer:0.1.0"
    with pytest.raises(ValueError, match="FTO_RESYNC_SECONDS"):
        OperatorSettings.from_env({"FTO_RESYNC_SECONDS": "soon"})
    with pytest.raises(ValueError, match="key=value"):
        OperatorSettings.from_env({"FTO_VALIDATION_NODE_SELECTOR": "pool"})


def test_children_of_a_predecessor_or_forged_ones_are_ignored() -> None:
    from finetune_operator.service import observe

    def obj(
        component: str, uid: str, owner: str, controller: bool = True, job: str = "bot"
    ) -> dict[str, Any]:
        return {
            "metadata": {
                "uid": uid,
                "ownerReferences": [{"uid": owner, "controller": controller}],
                "labels": {
                    "app.kubernetes.io/component": component,
                    "app.kubernetes.io/managed-by": "finetune-operator",
                    "finetune.dev/job": job,
                },
            }
        }

    key = ("ns", "bot")
    jobs = {key: [obj("trainer", "job-old", "ftj-old"), obj("trainer", "job-new", "ftj-new")]}
    pods = {
        key: [
            obj("validation", "v-old", "ftj-old"),
            obj("validation", "v-new", "ftj-new"),
            obj("trainer", "t-old", "job-old"),
            obj("trainer", "t-new", "job-new"),
            # Forged by a tenant: an owner reference that is not the controller, or the wrong labels.
            obj("validation", "v-forged", "ftj-new", controller=False),
            obj("trainer", "t-forged", "job-new", job="other"),
        ]
    }
    validation, trainer, trainer_jobs = observe(key, "ftj-new", pods, jobs)
    assert [p["metadata"]["uid"] for p in validation] == ["v-new"]
    assert [p["metadata"]["uid"] for p in trainer] == ["t-new"]
    assert [j["metadata"]["uid"] for j in trainer_jobs] == ["job-new"]
    assert observe(("ns", "other"), "ftj-new", pods, jobs) == ([], [], [])


def test_the_trainers_start_does_not_set_the_rate() -> None:
    """Step 0 -> 1 takes the model load and the base evaluation (40 s here); 5 s per step after that.
    The ETA must say minutes, not an hour (what the demo showed with the start counted in)."""
    progress = next_progress(None, Sample(step=0, total_steps=96), NOW)
    t = NOW + timedelta(seconds=40)
    progress = next_progress(progress, Sample(step=1, total_steps=96), t)
    assert progress.eta_seconds is None  # nothing measured yet
    for step in range(3, 21, 2):
        t += timedelta(seconds=10)
        progress = next_progress(progress, Sample(step=step, total_steps=96), t)
    assert progress.seconds_per_step == "5.000"
    assert progress.eta_seconds is not None
    assert progress.eta_seconds == (96 - 19) * 5  # steps left at 5 s, not 40
