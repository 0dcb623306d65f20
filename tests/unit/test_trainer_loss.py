"""The labelled-token loss equals the model's own causal-LM loss, in value and in gradients."""

from __future__ import annotations

import pytest
import torch
from finetune_trainer.loss import KeepLabelledLogits, labelled_positions, labelled_token_loss
from finetune_trainer.packing import PackingCollator, PaddingCollator

from tests.unit.test_trainer_packing import EXAMPLES, tiny_llama


def test_positions_are_those_that_predict_a_label() -> None:
    labels = torch.tensor([[-100, -100, 7, 8, -100, 3]])
    assert labelled_positions(labels).tolist() == [[False, True, True, False, True, False]]


@pytest.mark.parametrize(
    "collator",
    [PackingCollator(pad_token_id=0), PackingCollator(pad_token_id=0, row_tokens=8), PaddingCollator(0)],
    ids=["one-row", "bounded-rows", "padded"],
)
@pytest.mark.parametrize("count", [None, 40], ids=["mean", "accumulated"])
def test_loss_and_gradients_equal_the_models_own(collator: object, count: int | None) -> None:
    model = tiny_llama("sdpa").train()
    batch = KeepLabelledLogits(collator)(EXAMPLES)  # type: ignore[arg-type]
    labels = batch.pop("labels")
    keep = batch.pop("logits_to_keep")

    extra = {} if count is None else {"num_items_in_batch": torch.tensor(count)}
    reference = model(**batch, labels=labels, **extra).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    outputs = model(**batch, logits_to_keep=keep)
    assert outputs.logits.shape[0] == int(keep.sum()) < labels.numel()  # only the labelled positions
    loss = labelled_token_loss(outputs, labels, None if count is None else torch.tensor(count))
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6)
