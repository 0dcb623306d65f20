"""Automatic hyperparameters (finetune_contract.hyperparameters): the values docs/hyperparameters.md
promises for 20, 100, 1,000 and 50,000 rows, and that every value a user sets wins."""

from __future__ import annotations

import pytest
from finetune_contract.hyperparameters import (
    DataShape,
    resolve,
    validation_rows,
)
from finetune_contract.spec import Hyperparameters, MethodType

AUTO = Hyperparameters()
SHORT = 150  # tokens at the 95th percentile: short instruction pairs


@pytest.mark.parametrize(
    ("rows", "held_out", "expected"),  # expected: epochs, batch, accumulation, steps, warm-up
    [
        # 20 pairs: 4 held out (20%), batch 1, 7 passes so the run gets ~100 optimizer steps.
        (20, 4, (7, 1, 1, 112, 10)),
        # 100 pairs: 20 held out, batch 4, 5 passes: 100 steps.
        (100, 20, (5, 4, 1, 100, 10)),
        # 1,000 pairs: 100 held out, batch 8, the usual 3 passes.
        (1000, 100, (3, 8, 1, 339, 11)),
        # 50,000 pairs: 1,000 held out (the cap), batch 64 (32 x 2 to fit 8,192 tokens), one pass.
        (50_000, 1000, (1, 32, 2, 766, 23)),
    ],
)
def test_values_for_each_dataset_size(
    rows: int, held_out: int, expected: tuple[int, int, int, int, int]
) -> None:
    epochs, batch, accum, steps, warmup = expected
    assert validation_rows(rows, None) == held_out
    r = resolve(AUTO, MethodType.LORA, DataShape(rows=rows - held_out, p95_tokens=SHORT))
    assert (r.epochs, r.batch_size, r.gradient_accumulation_steps) == (epochs, batch, accum)
    assert (r.total_steps, r.warmup_steps) == (steps, warmup)
    assert r.learning_rate == pytest.approx(2e-4)
    assert r.effective_batch_size == batch * accum
    assert r.training_rows == rows - held_out
    assert set(r.auto) == {"epochs", "learningRate", "batchSize", "gradientAccumulationSteps", "warmupSteps"}


def test_every_run_gets_enough_steps_and_no_run_sees_too_many_examples() -> None:
    for rows in (1, 2, 5, 16, 37, 80, 128, 300, 900, 4000, 9000, 20_000, 49_000, 500_000):
        r = resolve(AUTO, MethodType.LORA, DataShape(rows=rows, p95_tokens=SHORT))
        assert 1 <= r.epochs <= 10
        # Enough steps to learn, unless that would take more than 10 passes over a tiny set.
        assert r.total_steps >= 100 or r.epochs == 10
        if r.epochs > 1:
            assert rows * r.epochs <= 25_000
        # Warm-up: at least 3% of the run, at most 10% (or the 3% rounded up, for long runs).
        assert 0.03 * r.total_steps <= r.warmup_steps <= max(0.1 * r.total_steps, 0.03 * r.total_steps + 1)


def test_full_fine_tunes_get_a_full_fine_tune_learning_rate() -> None:
    lora = resolve(AUTO, MethodType.LORA, DataShape(rows=900, p95_tokens=SHORT))
    full = resolve(AUTO, MethodType.FULL, DataShape(rows=900, p95_tokens=SHORT))
    assert lora.learning_rate == pytest.approx(2e-4)
    assert full.learning_rate == pytest.approx(2e-5)


def test_long_sequences_are_split_into_micro_batches_keeping_the_effective_batch() -> None:
    r = resolve(AUTO, MethodType.LORA, DataShape(rows=900, p95_tokens=4096))
    assert (r.batch_size, r.gradient_accumulation_steps, r.effective_batch_size) == (2, 4, 8)
    r = resolve(AUTO, MethodType.LORA, DataShape(rows=900, p95_tokens=100_000))
    assert (r.batch_size, r.gradient_accumulation_steps) == (1, 8)


def test_values_the_user_sets_win() -> None:
    hp = Hyperparameters(
        epochs=2, learning_rate=1e-3, batch_size=16, gradient_accumulation_steps=2, warmup_ratio=0.1
    )
    r = resolve(hp, MethodType.LORA, DataShape(rows=1000, p95_tokens=SHORT))
    assert (r.epochs, r.learning_rate, r.batch_size, r.gradient_accumulation_steps) == (2, 1e-3, 16, 2)
    assert r.steps_per_epoch == 32  # ceil(ceil(1000 / 16) / 2)
    assert (r.total_steps, r.warmup_steps) == (64, 7)
    assert r.auto == []


def test_a_set_batch_size_is_the_batch_and_a_set_accumulation_shares_the_automatic_one() -> None:
    r = resolve(Hyperparameters(batch_size=2), MethodType.LORA, DataShape(rows=900, p95_tokens=SHORT))
    assert (r.batch_size, r.gradient_accumulation_steps) == (2, 1)
    r = resolve(
        Hyperparameters(gradient_accumulation_steps=4), MethodType.LORA, DataShape(rows=900, p95_tokens=SHORT)
    )
    assert (r.batch_size, r.gradient_accumulation_steps) == (2, 4)


def test_max_steps_caps_the_run_and_the_warmup_follows() -> None:
    r = resolve(Hyperparameters(max_steps=20), MethodType.LORA, DataShape(rows=900, p95_tokens=SHORT))
    assert (r.total_steps, r.warmup_steps) == (20, 2)


def test_gradual_unfreezing_gets_at_least_two_epochs() -> None:
    hp = Hyperparameters(gradual_unfreezing=True)
    r = resolve(hp, MethodType.FULL, DataShape(rows=20_000, p95_tokens=SHORT))
    assert r.epochs == 2


@pytest.mark.parametrize(
    ("rows", "fraction", "held_out"),
    [
        *[(0, None, 0), (1, None, 0), (2, None, 1), (10, None, 2), (300, None, 50), (5000, None, 500)],
        *[(100_000, None, 1000), (100, 0.1, 10), (100_000, 0.1, 10_000), (3, 0.5, 2), (2, 0.01, 1)],
    ],
)
def test_validation_split_has_a_floor_in_rows(rows: int, fraction: float | None, held_out: int) -> None:
    assert validation_rows(rows, fraction) == held_out


@pytest.mark.parametrize("world", [2, 4, 8])
def test_more_processes_keep_the_automatic_effective_batch_and_the_step_count(world: int) -> None:
    data = DataShape(rows=900, p95_tokens=SHORT)
    one = resolve(AUTO, MethodType.LORA, data)
    many = resolve(AUTO, MethodType.LORA, data, world_size=world)
    # The batch is split between the processes, so the run learns the same way, only faster.
    assert many.effective_batch_size == one.effective_batch_size
    assert many.batch_size * many.gradient_accumulation_steps * world == one.effective_batch_size
    assert (many.epochs, many.total_steps) == (one.epochs, one.total_steps)


def test_a_batch_size_the_user_sets_is_per_process() -> None:
    data = DataShape(rows=1000, p95_tokens=SHORT)
    hp = Hyperparameters(batch_size=4, epochs=1)
    one = resolve(hp, MethodType.LORA, data)
    four = resolve(hp, MethodType.LORA, data, world_size=4)
    assert four.batch_size == one.batch_size == 4
    assert four.effective_batch_size == 4 * one.effective_batch_size
    # Each optimizer step takes four times the rows, so a pass takes a quarter of the steps.
    assert four.total_steps == -(-1000 // 16)
    assert one.total_steps == 1000 // 4
