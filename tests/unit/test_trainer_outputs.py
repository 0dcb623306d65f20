"""The model card says which step's weights were published and why."""

from __future__ import annotations

from finetune_contract.config import TrainerConfig
from finetune_trainer.outputs import model_card

CFG = TrainerConfig.model_validate(
    {
        "baseModel": {"uri": "s3://models/m/"},
        "dataset": {"train": "s3://data/t.jsonl"},
        "output": {"uri": "s3://out/x/"},
    }
)


def card(metrics: dict[str, object], step: int) -> str:
    return model_card(
        CFG,
        "ab" * 32,
        metrics,
        "adapter_model.safetensors",
        hyperparameters={"totalSteps": 40},
        published_step=step,
    )


def test_the_card_names_the_best_step_when_there_was_validation() -> None:
    text = card({"evalLoss": 0.25, "trainLoss": 0.3}, 30)
    assert "from step 30 of 40 (the evaluation with the lowest validation loss)" in text
    assert "| evalLoss | 0.25 |" in text


def test_without_validation_the_card_says_the_last_step_was_published() -> None:
    text = card({"evalLoss": None, "trainLoss": 0.3}, 40)
    assert "from step 40 of 40 (the last step: there were no validation rows to choose by)" in text
    assert "lowest validation loss" not in text
