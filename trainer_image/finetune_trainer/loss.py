"""The training loss on the labelled tokens only, without computing logits anywhere else.

A chat row's prompt (the template, a system prompt, the user turn) is most of its tokens and none of
them is a target, yet a causal LM computes the vocabulary-wide logits (the LM head, then a softmax
over ~50k entries) at every position. On SmolLM2-135M the LM head is a fifth of the forward pass and
the logits are the largest tensor of the step. The collator wrapper below tells the model which
positions predict a labelled token (`logits_to_keep`, a boolean mask transformers applies before the
LM head), and `labelled_token_loss` is the cross-entropy over exactly those positions, normalised as
transformers normalises its own causal-LM loss (by the labelled tokens of the whole accumulated batch).
tests/unit/test_trainer_loss.py checks that loss and gradients equal the model's own loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """True where the next token is a target: position t predicts labels[t + 1]."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


@dataclass
class KeepLabelledLogits:
    """Wraps a collator: its batches also say where logits are needed."""

    collator: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(features)
        batch["logits_to_keep"] = labelled_positions(batch["labels"])
        return batch


def labelled_token_loss(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Cross-entropy of the kept logits (one row per labelled position, in order) against their
    targets: a sum divided by the accumulated batch's labelled tokens, or a mean without that count."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    targets = labels[:, 1:]
    targets = targets[targets != IGNORE_INDEX].to(logits.device)
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    if isinstance(count, torch.Tensor):
        return loss / count.to(loss.device).clamp(min=1)
    return loss / max(int(count), 1)
