"""Prometheus text at /metrics, bound to the pod IP (the operator polls it, a PodMonitor scrapes it).

Metric names are part of the trainer contract in docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

log = logging.getLogger(__name__)


@dataclass
class TrainerMetrics:
    registry: CollectorRegistry
    step: Gauge
    total_steps: Gauge
    epoch: Gauge
    train_loss: Gauge
    eval_loss: Gauge
    tokens_per_second: Gauge
    samples: Gauge
    tokens: Gauge
    port: int = 0
    server: Any = None

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def create_metrics() -> TrainerMetrics:
    registry = CollectorRegistry()

    def gauge(name: str, doc: str) -> Gauge:
        return Gauge(name, doc, registry=registry)

    # samples/tokens are Gauges named *_total on purpose: they are restored from the checkpoint
    # on resume, which a Counter (monotonic per process) cannot express.
    metrics = TrainerMetrics(
        registry=registry,
        step=gauge("finetune_trainer_step", "Optimizer steps completed"),
        total_steps=gauge("finetune_trainer_total_steps", "Optimizer steps planned"),
        epoch=gauge("finetune_trainer_epoch", "Fractional epoch"),
        train_loss=gauge("finetune_trainer_train_loss", "Training loss (last logging interval)"),
        eval_loss=gauge("finetune_trainer_eval_loss", "Validation loss (last evaluation)"),
        tokens_per_second=gauge("finetune_trainer_tokens_per_second", "Non-padding tokens per second"),
        samples=gauge("finetune_trainer_samples_total", "Training examples seen"),
        tokens=gauge("finetune_trainer_tokens_total", "Non-padding training tokens seen"),
    )
    # NaN ("no value yet") rather than the Gauge's 0 until the first log or evaluation: a loss of 0
    # before the first step would read as a perfect model on the dashboards.
    for unknown in (metrics.train_loss, metrics.eval_loss, metrics.tokens_per_second):
        unknown.set(float("nan"))
    return metrics


def serve(metrics: TrainerMetrics) -> TrainerMetrics:
    """Start the HTTP server on $POD_IP:$METRICS_PORT (port 0 picks a free one, for tests)."""
    host = os.environ.get("POD_IP", "127.0.0.1")
    port = int(os.environ.get("METRICS_PORT", "9400"))
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        # Metrics are for watching; a busy port must not fail a training run.
        log.warning("metrics server not started on %s:%d: %s", host, port, exc)
        return metrics
    metrics.server = server
    metrics.port = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host, metrics.port)
    return metrics
