"""The trainer's Prometheus endpoint: contract metric names, bound to POD_IP, port 0 for tests."""

from __future__ import annotations

import urllib.request

import pytest
from finetune_trainer.metrics_server import create_metrics, serve

CONTRACT = [
    "finetune_trainer_step",
    "finetune_trainer_total_steps",
    "finetune_trainer_epoch",
    "finetune_trainer_train_loss",
    "finetune_trainer_eval_loss",
    "finetune_trainer_tokens_per_second",
    "finetune_trainer_samples_total",
    "finetune_trainer_tokens_total",
]


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
