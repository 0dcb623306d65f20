"""Best-weights tracking within one pod (the S3 path across pods is in test_trainer_tiny.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from finetune_trainer.best import BestWeights
from finetune_trainer.s3io import S3


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Linear(3, 3)
        self.adapter = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def _set(model: Tiny, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def _best(tmp_path: Path, *, full: bool) -> BestWeights:
    # No S3 call is made while the best weights are in this pod's scratch.
    return BestWeights(S3("http://127.0.0.1:9", "us-east-1"), "s3://b/out/", tmp_path, full=full)


def test_the_lowest_loss_wins_and_its_trainable_weights_come_back(tmp_path: Path) -> None:
    model, best = Tiny(), _best(tmp_path, full=False)
    for step, loss in ((2, 2.0), (4, 1.0), (6, 1.00005), (8, 1.5)):
        _set(model, float(step))
        best.observe(step, loss, model)
    # step 6 is within the noise margin of step 4: the earlier one stays the best
    assert best.best is not None
    assert best.best.step == 4
    assert best.restore(model, last_step=8) == 4
    assert torch.all(model.adapter.weight == 4.0)
    # Frozen weights are not part of an adapter's best: they never changed, and stay as they are.
    assert torch.all(model.frozen.weight == 8.0)


def test_a_full_fine_tune_keeps_every_weight(tmp_path: Path) -> None:
    model, best = Tiny(), _best(tmp_path, full=True)
    _set(model, 1.0)
    best.observe(1, 0.5, model)
    _set(model, 2.0)
    best.observe(2, 0.9, model)
    assert best.restore(model, last_step=2) == 1
    assert torch.all(model.frozen.weight == 1.0)
    assert torch.all(model.adapter.bias == 1.0)


def test_the_last_step_stays_when_it_is_the_best_or_nothing_was_evaluated(tmp_path: Path) -> None:
    model = Tiny()
    assert _best(tmp_path / "a", full=False).restore(model, last_step=5) == 5
    best = _best(tmp_path / "b", full=False)
    best.observe(3, 2.0, model)
    best.observe(5, 1.0, model)
    assert best.restore(model, last_step=5) == 5


def test_a_replayed_history_sets_the_best_without_weights(tmp_path: Path) -> None:
    best = _best(tmp_path, full=False)
    assert best.observe(3, 1.0, None) is True
    assert best.observe(6, 1.2, None) is False
    assert not (tmp_path / "best").exists()
