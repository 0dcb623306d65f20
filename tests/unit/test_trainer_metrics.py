"""The trainer's Prometheus endpoint: contract metric names, bound to POD_IP, port 0 for tests."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime

import pytest
from finetune_contract import metrics as names
from finetune_contract.outcomes import CheckpointRef
from finetune_operator.progress import parse_metrics
from finetune_trainer.metrics_server import create_metrics, serve

CONTRACT = list(names.GAUGES)


def test_metrics_endpoint_serves_contract_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_PORT", "0")
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    metrics = serve(create_metrics())
    try:
        assert metrics.port > 0
        metrics.step.set(7)
        metrics.total_steps.set(30)
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    for name in CONTRACT:
        assert f"\n{name} " in body or body.startswith(f"{name} ")
    assert "finetune_trainer_step 7.0" in body
    assert "finetune_trainer_total_steps 30.0" in body
    # no loss or throughput before the first log: NaN, which the operator skips and Grafana draws as a gap
    assert "finetune_trainer_train_loss NaN" in body
    assert "finetune_trainer_eval_loss NaN" in body
    assert "finetune_trainer_tokens_per_second NaN" in body


def test_what_the_trainer_serves_is_what_the_operator_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_PORT", "0")
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    metrics = serve(create_metrics())
    saved = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    try:
        metrics.step.set(250)
        metrics.total_steps.set(600)
        metrics.learning_rate.set(1.5e-4)
        metrics.report_checkpoints(
            [CheckpointRef(step=200, created_at=saved), CheckpointRef(step=400, complete=False)]
        )
        metrics.report_checkpoints([CheckpointRef(step=400, created_at=saved)])  # 200 pruned, 400 complete
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    sample = parse_metrics(body)
    assert (sample.step, sample.total_steps, sample.learning_rate) == (250, 600, 1.5e-4)
    assert sample.checkpoints == (CheckpointRef(step=400, complete=True, created_at=saved),)
