"""Training progress from the trainer's Prometheus text (`/metrics` on podIP:METRICS_PORT).

`parse_metrics` and `next_progress` are pure; `scrape` is the one network call (short timeout, any
error is "no sample": progress is for watching and must never fail a reconcile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .api import Metrics, Progress, format_eta

PREFIX: Final = "finetune_trainer_"


@dataclass(frozen=True)
class Sample:
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def parse_metrics(text: str) -> Sample:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(PREFIX) and sample.name not in values:
                values[sample.name] = float(sample.value)

    def get(name: str) -> float | None:
        return _finite(values.get(PREFIX + name))

    step, total = get("step"), get("total_steps")
    return Sample(
        step=int(step) if step is not None else None,
        total_steps=int(total) if total else None,
        epoch=get("epoch"),
        train_loss=get("train_loss"),
        eval_loss=get("eval_loss"),
        tokens_per_second=get("tokens_per_second"),
    )


def _fmt(value: float | None, digits: int = 4) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def next_progress(old: Progress | None, sample: Sample, now: datetime) -> Progress:
    """Progress after a new sample; the ETA comes from the step rate since the last step change."""
    old = old or Progress()
    step = sample.step if sample.step is not None else old.step
    total = sample.total_steps or old.total_steps
    last_step_time = old.last_step_time
    eta_seconds = old.eta_seconds
    if step is not None and step != old.step:
        if old.step is not None and old.last_step_time is not None and step > old.step:
            per_step = (now - old.last_step_time).total_seconds() / (step - old.step)
            if total:
                eta_seconds = max(0, round(per_step * (total - step)))
        last_step_time = now
    percent = None
    if step is not None and total:
        percent = max(0, min(100, int(100 * step / total)))
    return Progress(
        step=step,
        total_steps=total,
        epoch=_fmt(sample.epoch, 2) if sample.epoch is not None else old.epoch,
        percent=percent,
        eta_seconds=eta_seconds,
        eta=format_eta(eta_seconds) or None,
        tokens_per_second=_fmt(sample.tokens_per_second, 1)
        # 0 is what the trainer's gauge reads between logging windows and after the last step.
        if sample.tokens_per_second
        else old.tokens_per_second,
        last_step_time=last_step_time,
    )


def next_metrics(old: Metrics | None, sample: Sample) -> Metrics:
    old = old or Metrics()
    return old.model_copy(
        update={
            "train_loss": _fmt(sample.train_loss) or old.train_loss,
            "eval_loss": _fmt(sample.eval_loss) or old.eval_loss,
        }
    )


async def scrape(session: aiohttp.ClientSession, pod_ip: str, port: int, timeout: float) -> Sample | None:
    url = f"http://{pod_ip}:{port}/metrics"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return None
            return parse_metrics(await resp.text())
    except (TimeoutError, aiohttp.ClientError, ValueError, OSError):
        return None
