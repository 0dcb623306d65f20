"""Pure helpers of the training loop: step counts and the gradual-unfreezing schedule."""

from __future__ import annotations

from finetune_trainer.train import steps_per_epoch, unfrozen_layer_count


def test_steps_per_epoch_rounds_up_batches_and_accumulation() -> None:
    assert steps_per_epoch(48, 8, 1) == 6
    assert steps_per_epoch(49, 8, 1) == 7
    assert steps_per_epoch(49, 8, 2) == 4
    assert steps_per_epoch(3, 8, 4) == 1


def test_gradual_unfreezing_goes_from_the_top_down() -> None:
    # 3 epochs, 12 layers: the top third, then two thirds, then everything.
    assert [unfrozen_layer_count(e, 3, 12) for e in (0.0, 0.5, 1.0, 2.0, 2.99)] == [4, 4, 8, 12, 12]
    # Fractional epochs count the partial last epoch as a stage of its own.
    assert unfrozen_layer_count(0.0, 1.5, 10) == 5
    assert unfrozen_layer_count(1.2, 1.5, 10) == 10
    assert unfrozen_layer_count(0.0, 1, 2) == 2
