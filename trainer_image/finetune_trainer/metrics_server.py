"""Prometheus text at /metrics, bound to the pod IP (the operator polls it, a PodMonitor scrapes it).

Metric names are the contract's (finetune_contract.metrics): the operator reads the same constants.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from finetune_contract import metrics as names
from finetune_contract.outcomes import CheckpointRef
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
    learning_rate: Gauge
    tokens_per_second: Gauge
    samples: Gauge
    tokens: Gauge
    checkpoint_created: Gauge
    checkpoint_complete: Gauge
    port: int = 0
    server: Any = None

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def report_checkpoints(self, checkpoints: Iterable[CheckpointRef]) -> None:
        """Publish the checkpoints that exist now (series of pruned ones disappear)."""
        self.checkpoint_created.clear()
        self.checkpoint_complete.clear()
        for ckpt in checkpoints:
            step = str(ckpt.step)
            created = ckpt.created_at.timestamp() if ckpt.created_at else float("nan")
            self.checkpoint_created.labels(step=step).set(created)
            self.checkpoint_complete.labels(step=step).set(1 if ckpt.complete else 0)


def create_metrics() -> TrainerMetrics:
    registry = CollectorRegistry()
    # samples/tokens are Gauges named *_total on purpose: they are restored from the checkpoint
    # on resume, which a Counter (monotonic per process) cannot express.
    gauges = {name: Gauge(name, doc, registry=registry) for name, doc in names.GAUGES.items()}
    per_checkpoint = {
        name: Gauge(name, doc, [names.CHECKPOINT_STEP_LABEL], registry=registry)
        for name, doc in names.CHECKPOINT_GAUGES.items()
    }
    metrics = TrainerMetrics(
        registry=registry,
        step=gauges[names.STEP],
        total_steps=gauges[names.TOTAL_STEPS],
        epoch=gauges[names.EPOCH],
        train_loss=gauges[names.TRAIN_LOSS],
        eval_loss=gauges[names.EVAL_LOSS],
        learning_rate=gauges[names.LEARNING_RATE],
        tokens_per_second=gauges[names.TOKENS_PER_SECOND],
        samples=gauges[names.SAMPLES],
        tokens=gauges[names.TOKENS],
        checkpoint_created=per_checkpoint[names.CHECKPOINT_CREATED],
        checkpoint_complete=per_checkpoint[names.CHECKPOINT_COMPLETE],
    )
    # NaN ("no value yet") rather than the Gauge's 0 until the first log or evaluation: a loss of 0
    # before the first step would read as a perfect model on the dashboards.
    for unknown in (metrics.train_loss, metrics.eval_loss, metrics.learning_rate, metrics.tokens_per_second):
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
