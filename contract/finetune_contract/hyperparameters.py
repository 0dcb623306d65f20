"""Automatic hyperparameters: what a job that sets none of them trains with, chosen from its data.

The validation pod measures the data (rows, token lengths) and resolves the values with `resolve`; the
trainer resolves them again in the training pod from the same rows (same files, same seed, same split,
same function), so what the FineTuneJob's status shows (`status.resolved.hyperparameters`) is what runs.
Every value the user sets wins; only the unset ones are chosen. The reasoning is in
docs/hyperparameters.md, and tests/unit/test_hyperparameters.py pins the values for 20 to 50,000 rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Final

from pydantic import Field

from .spec import Hyperparameters, MethodType
from .wire import Crd, FloatString, ReadModel

FieldName = Annotated[str, Crd(description="A hyperparameters field, e.g. epochs.", maxLength=64)]

# Learning rates by method. LoRA/QLoRA: the usual 2e-4 for adapters (with rsLoRA's alpha/sqrt(r)).
# Full: an order of magnitude lower, as full fine-tunes of instruction models are run (1e-5 .. 5e-5).
LORA_LEARNING_RATE: Final = 2e-4
FULL_LEARNING_RATE: Final = 2e-5

# Epochs: 3 passes unless that leaves a run with too few optimizer steps to learn anything (small sets:
# more passes, up to MAX_AUTO_EPOCHS) or shows the model far more examples than it needs (large sets:
# fewer passes, at least one). The 25,000 examples bound is OpenAI's published rule for its default.
DEFAULT_EPOCHS: Final = 3
MIN_AUTO_STEPS: Final = 100
MAX_AUTO_EPOCHS: Final = 10
MAX_EXAMPLES_SEEN: Final = 25_000

# Effective batch: small sets take small batches (more optimizer steps per pass); from 8 upwards the
# batch grows with the set (one step per ~250 rows) so very large sets do not run tens of thousands of
# steps. A power of two, so it splits evenly into micro-batches.
SMALL_SET_ROWS_PER_EXAMPLE: Final = 16
LARGE_SET_ROWS_PER_EXAMPLE: Final = 250
BASE_BATCH: Final = 8
MAX_AUTO_BATCH: Final = 64

# Memory guard for one forward pass: sequences x tokens (at the 95th percentile length) per micro-batch;
# what does not fit is reached by gradient accumulation, which keeps the effective batch.
TOKENS_PER_MICRO_BATCH: Final = 8192

# Warm-up: 3% of the steps, but at least 10 (or 10% of a run shorter than 100 steps), so the first
# updates of a short run are not taken at the full learning rate.
WARMUP_SHARE: Final = 0.03
MIN_WARMUP_STEPS: Final = 10
MAX_WARMUP_SHARE: Final = 0.1

# Validation split when the user sets none: 10% of the rows, at least 50 rows (but never more than 20%
# of a small set), at most 1,000 rows (evaluation runs several times per epoch).
DEFAULT_VALIDATION_SHARE: Final = 0.1
MIN_VALIDATION_ROWS: Final = 50
MAX_VALIDATION_SHARE: Final = 0.2
MAX_VALIDATION_ROWS: Final = 1000


@dataclass(frozen=True)
class DataShape:
    """What the validation pod measured of the training rows (after the validation split)."""

    rows: int
    p95_tokens: int


class ResolvedHyperparameters(ReadModel):
    """The hyperparameters a job trains with: the ones the spec sets, the rest chosen from the data."""

    epochs: int
    """Passes over the training rows."""
    learning_rate: FloatString
    """Peak learning rate."""
    batch_size: int
    """Sequences per forward pass (per process)."""
    gradient_accumulation_steps: int
    """Forward passes summed into each optimizer step."""
    effective_batch_size: int
    """Sequences per optimizer step: batchSize x gradientAccumulationSteps x processes (GPUs x nodes)."""
    steps_per_epoch: int
    """Optimizer steps of one pass over the training rows."""
    total_steps: int
    """Optimizer steps of the whole run (epochs x stepsPerEpoch, or hyperparameters.maxSteps if lower)."""
    warmup_steps: int
    """Steps over which the learning rate rises from 0 to its peak."""
    training_rows: int
    """Training rows the values were chosen for (after duplicates and the validation split)."""
    auto: Annotated[list[FieldName], Field(max_length=16), Crd(x__kubernetes__list__type="atomic")] = Field(
        default_factory=list
    )
    """The fields chosen automatically (the others are the spec's own values)."""


def validation_rows(n_rows: int, fraction: float | None) -> int:
    """Rows held out of train when no validation file is given; `fraction` is dataset.validationSplit."""
    if n_rows < 2 or (fraction is not None and fraction <= 0):
        return 0
    if fraction is not None:
        wanted = round(n_rows * fraction)
    else:
        floor = min(MIN_VALIDATION_ROWS, math.floor(n_rows * MAX_VALIDATION_SHARE))
        wanted = min(MAX_VALIDATION_ROWS, max(round(n_rows * DEFAULT_VALIDATION_SHARE), floor))
    return min(n_rows - 1, max(1, wanted))


def _pow2_floor(value: float) -> int:
    return 1 << max(0, math.floor(math.log2(value))) if value >= 1 else 1


def auto_batch_size(rows: int) -> int:
    """The effective batch for a training set of `rows`."""
    large = min(MAX_AUTO_BATCH, _pow2_floor(rows / LARGE_SET_ROWS_PER_EXAMPLE))
    if large > BASE_BATCH:
        return large
    return min(BASE_BATCH, _pow2_floor(rows / SMALL_SET_ROWS_PER_EXAMPLE))


def auto_epochs(rows: int, steps_per_epoch: int) -> int:
    epochs = DEFAULT_EPOCHS
    if steps_per_epoch * epochs < MIN_AUTO_STEPS:
        epochs = min(MAX_AUTO_EPOCHS, math.ceil(MIN_AUTO_STEPS / steps_per_epoch))
    if rows * epochs > MAX_EXAMPLES_SEEN:
        epochs = max(1, MAX_EXAMPLES_SEEN // rows)
    return epochs


def micro_batch_cap(p95_tokens: int) -> int:
    """The most sequences of the data's (95th percentile) length per forward pass."""
    return _pow2_floor(TOKENS_PER_MICRO_BATCH / max(1, p95_tokens))


def auto_warmup_steps(total_steps: int) -> int:
    floor = min(MIN_WARMUP_STEPS, math.ceil(total_steps * MAX_WARMUP_SHARE))
    return max(math.ceil(total_steps * WARMUP_SHARE), floor)


def resolve(
    hp: Hyperparameters, method: MethodType, data: DataShape, world_size: int = 1
) -> ResolvedHyperparameters:
    """The values a run uses: each set field as it is, each unset one chosen from `data` and `method`.

    batchSize is per process, so `world_size` processes (GPUs x nodes) train on world_size times as many
    sequences per step; the automatic batch is the same effective batch whatever the world size (split
    between the processes), so adding GPUs makes a run faster, not different.
    """
    rows = max(1, data.rows)
    world = max(1, world_size)
    auto: list[str] = []

    target = auto_batch_size(rows)
    micro = hp.batch_size
    if micro is None:
        accum_hint = hp.gradient_accumulation_steps or 1
        micro = max(1, min(target // (accum_hint * world), micro_batch_cap(data.p95_tokens)))
        auto.append("batchSize")
    accum = hp.gradient_accumulation_steps
    if accum is None:
        # A batchSize the user sets is the batch they want; otherwise accumulation makes up the
        # automatic batch that the memory cap kept out of one forward pass.
        accum = 1 if hp.batch_size is not None else max(1, math.ceil(target / (micro * world)))
        auto.append("gradientAccumulationSteps")
    effective = micro * accum * world
    per_epoch = max(1, math.ceil(math.ceil(rows / (micro * world)) / accum))

    epochs = hp.epochs
    if epochs is None:
        epochs = auto_epochs(rows, per_epoch)
        if hp.gradual_unfreezing:
            epochs = max(2, epochs)  # unfreezing needs at least two passes
        auto.append("epochs")
    total = per_epoch * epochs
    if hp.max_steps is not None:
        total = min(total, hp.max_steps)

    learning_rate = hp.learning_rate
    if learning_rate is None:
        learning_rate = FULL_LEARNING_RATE if method is MethodType.FULL else LORA_LEARNING_RATE
        auto.append("learningRate")
    if hp.warmup_ratio is not None:
        warmup = math.ceil(hp.warmup_ratio * total)
    else:
        warmup = auto_warmup_steps(total)
        auto.append("warmupSteps")
    return ResolvedHyperparameters(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=micro,
        gradient_accumulation_steps=accum,
        effective_batch_size=effective,
        steps_per_epoch=per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        training_rows=data.rows,
        auto=auto,
    )
