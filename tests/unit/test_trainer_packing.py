"""Padding-free packing: position ids reset per example, and no attention across examples.

The decisive check: a tiny Llama gives the same loss (and the same logits per example) for a
packed row as for a padded batch, with SDPA and with eager attention.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from finetune_trainer.packing import PackingCollator, PaddingCollator, TokenCounter, pack_rows
from transformers import LlamaConfig, LlamaForCausalLM

EXAMPLES = [
    {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
    {"input_ids": [10, 11, 12], "labels": [10, 11, 12]},
    {"input_ids": [13, 14, 15, 16, 17, 18, 19], "labels": [-100, -100, -100, 16, 17, 18, 19]},
]


def tiny_llama(attn: str) -> Any:
    torch.manual_seed(0)
    # Accepted by PretrainedConfig's **kwargs; LlamaConfig's typed signature does not list it.
    attention: dict[str, Any] = {"attn_implementation": attn}
    config: Any = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **attention,
    )
    model = LlamaForCausalLM(config).eval()
    # As apply_method does for training: no KV cache (a cache disables packed-mask detection).
    model.config.use_cache = False
    return model


def test_packing_collator_concatenates_and_resets_positions() -> None:
    counter = TokenCounter()
    batch = PackingCollator(counter)(EXAMPLES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6]]
    # The first label of every example is ignored: never predict across a boundary.
    assert batch["labels"].tolist() == [[-100, -100, 7, 8, 9, -100, 11, 12, -100, -100, -100, 16, 17, 18, 19]]
    assert "attention_mask" not in batch
    assert (counter.tokens, counter.samples) == (15, 3)


def test_bounded_rows_pack_first_fit_decreasing_with_an_isolated_padding_segment() -> None:
    counter = TokenCounter()
    batch = PackingCollator(counter, pad_token_id=0, row_tokens=8)(EXAMPLES)
    # 7 tokens alone (nothing else fits), 5 + 3 together; the shorter row gets a padding
    # segment with its own positions, so it never joins the example before it.
    assert batch["input_ids"].tolist() == [[13, 14, 15, 16, 17, 18, 19, 0], [5, 6, 7, 8, 9, 10, 11, 12]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 0], [0, 1, 2, 3, 4, 0, 1, 2]]
    assert batch["labels"].tolist() == [
        [-100, -100, -100, 16, 17, 18, 19, -100],
        [-100, -100, 7, 8, 9, -100, 11, 12],
    ]
    assert (counter.tokens, counter.samples) == (15, 3)


def test_pack_rows_gives_oversized_examples_their_own_row() -> None:
    assert pack_rows([10, 3, 3, 2], capacity=5) == [[0], [1, 3], [2]]
    assert pack_rows([1, 1, 1], capacity=100) == [[0, 1, 2]]


def test_padding_collator_counts_only_real_tokens() -> None:
    counter = TokenCounter()
    batch = PaddingCollator(pad_token_id=0, counter=counter)(EXAMPLES)
    assert batch["input_ids"].shape == (3, 7)
    assert batch["attention_mask"].sum().item() == 15
    assert counter.tokens == 15


@pytest.mark.parametrize("row_tokens", [None, 8])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_padded_loss(attn: str, row_tokens: int | None) -> None:
    model = tiny_llama(attn)
    padded = PaddingCollator(pad_token_id=0)(EXAMPLES)
    packed = PackingCollator(row_tokens=row_tokens)(EXAMPLES)
    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_packed = model(**packed).loss
    assert loss_packed.item() == pytest.approx(loss_padded.item(), rel=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_examples_do_not_see_each_other(attn: str) -> None:
    model = tiny_llama(attn)
    packed = PackingCollator(row_tokens=None)(EXAMPLES)
    with torch.no_grad():
        assert_each_example_as_alone(model(**packed).logits[0], model)


def assert_each_example_as_alone(row_logits: torch.Tensor, model: Any) -> None:
    """The logits of each example in a packed row are those of the example run alone through `model`."""
    start = 0
    for example in EXAMPLES:
        alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
        n = len(example["input_ids"])
        torch.testing.assert_close(row_logits[start : start + n], alone, rtol=1e-4, atol=1e-5)
        start += n


def test_without_position_reset_examples_would_leak() -> None:
    # Sanity check of the test itself: one long causal sequence gives a different loss.
    model = tiny_llama("sdpa")
    packed = PackingCollator()(EXAMPLES)
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    with torch.no_grad():
        assert model(**leaky).loss.item() != pytest.approx(model(**packed).loss.item(), rel=1e-5)
