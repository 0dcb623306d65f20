"""The operator's metrics (finetune_operator.metrics): values, label bounds, deletion, the HTTP endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from finetune_operator import metrics as m
from finetune_operator.api import FineTuneJobSpec, FineTuneJobStatus
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = FineTuneJobSpec.model_validate(
    {
        "baseModel": {"uri": "s3://bucket/models/tiny/"},
        "dataset": {"train": "s3://bucket/data/train.jsonl"},
        "output": {"uri": "s3://bucket/out/bot/"},
        "storage": {"credentialsSecretRef": {"name": "s3-creds"}},
        "resources": {"gpus": 1, "gpuType": "nvidia-h100-80gb"},
        "budget": {"maxCost": "10"},
    }
)


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client import generate_latest

    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return samples(registry).get((metric, frozenset(labels.items())))


def cond(type_: str, status: str, reason: str, at: datetime) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "lastTransitionTime": at.isoformat()}


def status(phase: str | None, conditions: list[dict[str, Any]] = (), **extra: Any) -> FineTuneJobStatus:  # type: ignore[assignment]
    body: dict[str, Any] = {"conditions": list(conditions), **extra}
    if phase:
        body["phase"] = phase
    return FineTuneJobStatus.model_validate(body)


def lifecycle() -> list[tuple[datetime, FineTuneJobStatus]]:
    """Statuses of one job as the reconcile writes them: created at T0, validated at +10s, queued until
    +40s (trainer running), first step at +60s, done at +300s."""
    validating = [cond("Validated", "False", "Validating", T0 + timedelta(seconds=1))]
    validated = [cond("Validated", "True", "InputsValid", T0 + timedelta(seconds=10))]
    queued = [
        *validated,
        cond("Admitted", "True", "JobCreated", T0 + timedelta(seconds=10)),
        cond("Running", "False", "Pending", T0 + timedelta(seconds=10)),
    ]
    running = [*queued[:2], cond("Running", "True", "TrainerRunning", T0 + timedelta(seconds=40))]
    done = [
        *running[:2],
        cond("Running", "False", "Completed", T0 + timedelta(seconds=300)),
        cond("Succeeded", "True", "Completed", T0 + timedelta(seconds=300)),
    ]
    usage = {"gpuSeconds": 20, "estimatedCost": "0.02"}
    return [
        (T0 + timedelta(seconds=1), status("Validating", validating)),
        (T0 + timedelta(seconds=10), status("Queued", queued)),
        (T0 + timedelta(seconds=40), status("Running", running, usage={"gpuSeconds": 0})),
        (
            T0 + timedelta(seconds=60),
            status(
                "Running",
                running,
                usage=usage,
                progress={
                    "step": 3,
                    "totalSteps": 12,
                    "etaSeconds": 90,
                    "tokensPerSecond": "1234.5",
                    "lastStepTime": (T0 + timedelta(seconds=60)).isoformat(),
                },
                metrics={"trainLoss": "1.5000", "evalLoss": "1.7000"},
            ),
        ),
        (
            T0 + timedelta(seconds=300),
            status(
                "Succeeded",
                done,
                usage={"gpuSeconds": 260, "estimatedCost": "0.30"},
                progress={"step": 12, "totalSteps": 12, "percent": 100, "etaSeconds": 0},
                metrics={"trainLoss": "0.9000", "evalLoss": "1.1000"},
            ),
        ),
    ]


def run_lifecycle(metrics: m.OperatorMetrics, ns: str = "team-a", name: str = "bot") -> None:
    old = FineTuneJobStatus()
    for now, new in lifecycle():
        metrics.record_status(ns, name, created=T0.isoformat(), spec=SPEC, old=old, new=new, now=now)
        old = new


def test_lifecycle_counts_transitions_histograms_and_usage() -> None:
    met = m.OperatorMetrics(process_collectors=False)
    run_lifecycle(met)
    r = met.registry
    # The first view is the baseline (Validating): later phase changes are counted.
    assert (
        value(r, "finetune_job_transitions_total", namespace="team-a", phase="Queued", reason="Pending") == 1
    )
    assert (
        value(
            r, "finetune_job_transitions_total", namespace="team-a", phase="Running", reason="TrainerRunning"
        )
        == 1
    )
    assert (
        value(r, "finetune_job_transitions_total", namespace="team-a", phase="Succeeded", reason="Completed")
        == 1
    )
    # Queued at +10s (the Running=False / Admitted time), running at +40s.
    assert value(r, "finetune_job_queue_wait_seconds_sum") == 30
    assert value(r, "finetune_job_queue_wait_seconds_count") == 1
    assert value(r, "finetune_job_time_to_first_step_seconds_sum") == 60
    assert value(r, "finetune_job_duration_seconds_sum", result="succeeded") == 300
    assert value(r, "finetune_job_duration_seconds_count", result="succeeded") == 1
    assert value(r, "finetune_job_gpu_seconds_total", namespace="team-a", gpu_type="nvidia-h100-80gb") == 260
    assert value(
        r, "finetune_estimated_cost_dollars_total", namespace="team-a", gpu_type="nvidia-h100-80gb"
    ) == (pytest.approx(0.30))
    job = {"namespace": "team-a", "name": "bot"}
    assert value(r, "finetune_job_progress_ratio", **job) == 1.0
    assert value(r, "finetune_job_step", **job) == 12
    assert value(r, "finetune_job_total_steps", **job) == 12
    assert value(r, "finetune_job_eta_seconds", **job) == 0
    assert value(r, "finetune_job_train_loss", **job) == 0.9
    assert value(r, "finetune_job_eval_loss", **job) == 1.1
    # A value missing from a later status keeps the last one.
    assert value(r, "finetune_job_tokens_per_second", **job) == 1234.5
    assert value(r, "finetune_job_estimated_cost_dollars", **job) == pytest.approx(0.30)
    assert value(r, "finetune_job_used_gpu_seconds", **job) == 260
    assert value(r, "finetune_job_budget_ratio", **job) == pytest.approx(0.03)
    assert (
        value(r, "finetune_job_phase_start_timestamp_seconds", **job)
        == (T0 + timedelta(seconds=300)).timestamp()
    )
    assert (
        value(r, "finetune_job_last_progress_timestamp_seconds", **job)
        == (T0 + timedelta(seconds=60)).timestamp()
    )
    info = {
        "namespace": "team-a",
        "name": "bot",
        "phase": "Succeeded",
        "reason": "Completed",
        "gpu_type": "nvidia-h100-80gb",
        "queue": "",
    }
    assert value(r, "finetune_job_info", **info) == 1
    assert value(r, "finetune_jobs", namespace="team-a", phase="Succeeded") == 1
    assert value(r, "finetune_jobs", namespace="team-a", phase="Running") == 0


def test_running_job_series_and_failure() -> None:
    met = m.OperatorMetrics(process_collectors=False)
    _, queued = lifecycle()[1]
    now, running = lifecycle()[3]
    met.record_status("ns", "a", created=T0, spec=SPEC, old=FineTuneJobStatus(), new=queued, now=now)
    met.record_status("ns", "a", created=T0, spec=SPEC, old=queued, new=running, now=now)
    r = met.registry
    assert value(r, "finetune_job_progress_ratio", namespace="ns", name="a") == 0.25
    assert value(r, "finetune_job_tokens_per_second", namespace="ns", name="a") == 1234.5
    assert value(r, "finetune_jobs", namespace="ns", phase="Running") == 1
    failed = status(
        "Failed",
        [cond("Failed", "True", "OOMKilled", now + timedelta(seconds=5))],
        usage={"gpuSeconds": 30, "estimatedCost": "0.05"},
    )
    met.record_status(
        "ns", "a", created=T0, spec=SPEC, old=running, new=failed, now=now + timedelta(seconds=5)
    )
    assert value(r, "finetune_job_failures_total", namespace="ns", reason="OOMKilled") == 1
    assert value(r, "finetune_job_transitions_total", namespace="ns", phase="Failed", reason="OOMKilled") == 1
    assert value(r, "finetune_job_duration_seconds_count", result="failed") == 1
    # 0 (queued, the baseline) -> 20 -> 30 GPU-seconds.
    assert value(r, "finetune_job_gpu_seconds_total", namespace="ns", gpu_type="nvidia-h100-80gb") == 30
    assert (
        value(
            r,
            "finetune_job_info",
            namespace="ns",
            name="a",
            phase="Failed",
            reason="OOMKilled",
            gpu_type="nvidia-h100-80gb",
            queue="",
        )
        == 1
    )


def test_restart_does_not_count_again() -> None:
    """A fresh process (new OperatorMetrics) sees existing jobs: their past usage and phase changes were
    counted by the previous process, so they are a baseline, and the same status twice counts nothing."""
    met = m.OperatorMetrics(process_collectors=False)
    now, done = lifecycle()[-1]
    for _ in range(3):
        met.record_status("ns", "old", created=T0, spec=SPEC, old=done, new=done, now=now)
    r = met.registry
    names = {name for name, _ in samples(r)}
    assert "finetune_job_gpu_seconds_total" not in names
    assert "finetune_job_transitions_total" not in names
    assert value(r, "finetune_job_duration_seconds_count", result="succeeded") == 0
    assert value(r, "finetune_job_used_gpu_seconds", namespace="ns", name="old") == 260


def test_forget_job_removes_every_per_job_series() -> None:
    met = m.OperatorMetrics(process_collectors=False)
    run_lifecycle(met, name="gone")
    run_lifecycle(met, name="stays")
    met.forget_job("team-a", "gone")
    met.forget_job("team-a", "never-existed")
    all_samples = samples(met.registry)
    assert not [k for k in all_samples if ("name", "gone") in k[1]]
    assert [k for k in all_samples if ("name", "stays") in k[1]]
    assert value(met.registry, "finetune_jobs", namespace="team-a", phase="Succeeded") == 1
    # Counters are aggregates: they keep what the deleted job used.
    assert (
        value(met.registry, "finetune_job_gpu_seconds_total", namespace="team-a", gpu_type="nvidia-h100-80gb")
        == 520
    )
    met.forget_job("team-a", "stays")
    assert not [k for k in samples(met.registry) if k[0] == "finetune_jobs"]


def test_histograms_and_aggregates_have_bounded_labels() -> None:
    met = m.OperatorMetrics(process_collectors=False)
    for i in range(20):
        run_lifecycle(met, ns=f"ns{i % 2}", name=f"job-{i}")
    per_job = set(m.JOB_GAUGES) | {"finetune_job_info"}
    series: dict[str, set[frozenset[tuple[str, str]]]] = {}
    for name, labels in samples(met.registry):
        series.setdefault(name, set()).add(labels)
    for name, label_sets in series.items():
        keys = {k for labels in label_sets for k, _ in labels}
        assert "uid" not in keys, name
        if name not in per_job:
            assert "name" not in keys, f"{name} carries job names: {keys}"
    assert len(series["finetune_job_queue_wait_seconds_bucket"]) == len(m.QUEUE_WAIT_BUCKETS) + 1


def test_reconcile_leader_and_build_info() -> None:
    met = m.OperatorMetrics(process_collectors=False)
    met.observe_reconcile(0.02)
    met.observe_reconcile(0.5, error=True)
    met.set_leader(True)
    r = met.registry
    assert value(r, "finetune_reconcile_duration_seconds_count") == 2
    assert value(r, "finetune_reconcile_errors_total") == 1
    assert value(r, "finetune_operator_leader") == 1
    met.set_leader(False)
    assert value(r, "finetune_operator_leader") == 0
    start = value(r, "finetune_operator_start_time_seconds")
    assert start is not None
    assert start > 1.7e9
    assert [k for k in samples(r) if k[0] == "finetune_operator_build_info"]


def test_job_without_budget_or_gpu_type() -> None:
    met = m.OperatorMetrics(process_collectors=False)
    spec = SPEC.model_copy(
        update={"budget": None, "resources": SPEC.resources.model_copy(update={"gpu_type": None})}
    )
    new = status("Pending")
    met.record_status("ns", "j", created=None, spec=spec, old=FineTuneJobStatus(), new=new, now=T0)
    r = met.registry
    assert value(r, "finetune_job_budget_ratio", namespace="ns", name="j") is None
    assert (
        value(
            r,
            "finetune_job_info",
            namespace="ns",
            name="j",
            phase="Pending",
            reason="Pending",
            gpu_type="default",
            queue="",
        )
        == 1
    )
    # Pending without a creation time: the phase started "now".
    assert value(r, "finetune_job_phase_start_timestamp_seconds", namespace="ns", name="j") == T0.timestamp()


def test_serve_metrics_and_health() -> None:
    met = m.OperatorMetrics()
    checks = {"ok": True}
    met.set_health_check(lambda: checks["ok"])
    server, _ = met.serve(0, "127.0.0.1")
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            body = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
        assert "finetune_operator_start_time_seconds" in body
        assert "process_start_time_seconds" in body
        with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
            assert resp.status == 200
        checks["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert err.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
