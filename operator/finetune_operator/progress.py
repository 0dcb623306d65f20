"""Training progress from the trainer's Prometheus text (`/metrics` on podIP:METRICS_PORT).

`parse_metrics` and `next_progress` are pure; `scrape` is the one network call (short timeout, any
error is "no sample": progress is for watching and must never fail a reconcile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import aiohttp
from finetune_contract import metrics as names
from finetune_contract.outcomes import CheckpointRef
from prometheus_client.parser import text_string_to_metric_families

from .api import Checkpoint, Metrics, Progress, format_eta

# The ETA's step rate is an exponentially weighted average with this time constant: a new measurement
# counts for 1 - exp(-dt / tau), so the rate follows a real change within some minutes while one slow
# interval (an evaluation, a checkpoint upload, a scrape that saw a burst of steps) barely moves it.
RATE_TAU_SECONDS: Final = 300.0


@dataclass(frozen=True)
class Sample:
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    # None: the trainer does not report checkpoints; []: it does, and there are none yet.
    checkpoints: tuple[CheckpointRef, ...] | None = None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def parse_metrics(text: str) -> Sample:
    values: dict[str, float] = {}
    created: dict[int, float] = {}
    complete: dict[int, bool] = {}
    reports_checkpoints = False
    for family in text_string_to_metric_families(text):
        if family.name in (names.CHECKPOINT_CREATED, names.CHECKPOINT_COMPLETE):
            reports_checkpoints = True
        for sample in family.samples:
            raw_step = sample.labels.get(names.CHECKPOINT_STEP_LABEL, "")
            if sample.name == names.CHECKPOINT_CREATED and raw_step.isdigit():
                created[int(raw_step)] = float(sample.value)
            elif sample.name == names.CHECKPOINT_COMPLETE and raw_step.isdigit():
                complete[int(raw_step)] = float(sample.value) == 1.0
            elif sample.name.startswith(names.PREFIX) and sample.name not in values:
                values[sample.name] = float(sample.value)

    def get(name: str) -> float | None:
        return _finite(values.get(name))

    checkpoints = None
    if reports_checkpoints:
        checkpoints = tuple(
            CheckpointRef(
                step=step,
                complete=complete.get(step, False),
                created_at=datetime.fromtimestamp(created[step], UTC)
                if _finite(created.get(step)) is not None
                else None,
            )
            for step in sorted(set(created) | set(complete))
        )
    step, total = get(names.STEP), get(names.TOTAL_STEPS)
    return Sample(
        step=int(step) if step is not None else None,
        total_steps=int(total) if total else None,
        epoch=get(names.EPOCH),
        train_loss=get(names.TRAIN_LOSS),
        eval_loss=get(names.EVAL_LOSS),
        learning_rate=get(names.LEARNING_RATE),
        tokens_per_second=get(names.TOKENS_PER_SECOND),
        checkpoints=checkpoints,
    )


def _fmt(value: float | None, digits: int = 4) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def smoothed_seconds_per_step(
    old: float | None, measured: float, elapsed: float, share: float = 0.0
) -> float:
    """One step of the exponentially weighted average of seconds per step (see RATE_TAU_SECONDS).

    `share` is the new interval's share of the steps seen so far: early in a run, when few steps have
    been measured, each counts that much at least (a plain mean), so the first interval does not
    linger for minutes."""
    if old is None:
        return measured
    weight = max(1.0 - math.exp(-max(elapsed, 0.0) / RATE_TAU_SECONDS), min(max(share, 0.0), 1.0))
    return old + weight * (measured - old)


def next_progress(old: Progress | None, sample: Sample, now: datetime) -> Progress:
    """Progress after a new sample. The ETA is the smoothed seconds per step times the steps left, less
    the time since the last step (at most one step's worth), so it counts down between steps instead of
    jumping with each scrape."""
    old = old or Progress()
    step = sample.step if sample.step is not None else old.step
    total = sample.total_steps or old.total_steps
    last_step_time = old.last_step_time
    rate = _float(old.seconds_per_step)
    if step is not None and step != old.step:
        # The interval from step 0 holds the trainer's start (model load, the base evaluation), not
        # training: it would set the rate many times too slow.
        if old.step and old.last_step_time is not None and step > old.step:
            elapsed = (now - old.last_step_time).total_seconds()
            rate = smoothed_seconds_per_step(
                rate, elapsed / (step - old.step), elapsed, (step - old.step) / step
            )
        last_step_time = now
    eta_seconds = old.eta_seconds
    if rate is not None and total and step is not None:
        since = (now - last_step_time).total_seconds() if last_step_time is not None else 0.0
        eta_seconds = max(0, round(rate * (total - step) - min(since, rate)))
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
        seconds_per_step=_fmt(rate, 3) if rate is not None else None,
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
            "learning_rate": (f"{sample.learning_rate:.3g}" if sample.learning_rate is not None else None)
            or old.learning_rate,
        }
    )


def checkpoint_status(output_prefix: str, refs: Sequence[CheckpointRef]) -> list[Checkpoint]:
    """status.checkpoints from what the trainer reports, oldest first."""
    return [
        Checkpoint(
            step=ref.step,
            uri=f"{output_prefix}checkpoints/step-{ref.step}/",
            complete=ref.complete,
            created_at=ref.created_at,
        )
        for ref in sorted(refs, key=lambda r: r.step)
    ][-100:]


# A trainer's /metrics is a few KiB (100 checkpoint series at most); the pod runs the user's job, so
# what it serves is read with a bound in time (the session's timeout) and in size.
MAX_SCRAPE_BYTES: Final = 1024 * 1024


async def scrape(session: aiohttp.ClientSession, pod_ip: str, port: int, timeout: float) -> Sample | None:
    url = f"http://{pod_ip}:{port}/metrics"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return None
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_SCRAPE_BYTES:
                    return None
            return parse_metrics(body.decode("utf-8", errors="replace"))
    except (TimeoutError, aiohttp.ClientError, ValueError, OSError):
        return None
