"""Batch collators: padding-free packing (default) and plain padding.

Packing follows transformers' `DataCollatorWithFlattening`: examples are concatenated into a
row, `position_ids` restart at 0 for every example, and the first label of every example is
ignored, so no token is ever predicted from the previous example. No attention mask is passed: transformers' mask builder (`masking_utils`) detects
the packed layout from the position ids and builds a block-diagonal causal mask for SDPA and
eager attention (flash-attention kernels take the sequence boundaries from the same ids), so
examples cannot attend to each other. `tests/unit/test_trainer_packing.py` checks that the
packed loss equals the padded loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .data import IGNORE_INDEX


@dataclass
class TokenCounter:
    """Counts the real (non-padding) tokens the collator hands to the model."""

    tokens: int = 0
    samples: int = 0


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bins of example indices, each bin at most `capacity` tokens
    (an example longer than the capacity gets a bin of its own)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[index] <= free:
                bins[b].append(index)
                room[b] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(capacity - lengths[index])
    return [sorted(members) for members in bins]  # dataset order inside a row


@dataclass
class PackingCollator:
    """Packs a batch into as few rows as possible, each at most `row_tokens` long (or the
    longest example, if longer).

    One unbounded row is the `DataCollatorWithFlattening` layout and ideal for flash-attention
    kernels, but SDPA/eager attention over a packed row costs (row length)^2 however the mask
    splits it, which on CPU erased the gain from dropping padding (bench/trainer_bench.py).
    Bounded rows keep that cost near the per-example cost. Rows shorter than the longest are
    filled with a padding *segment* (its own position ids from 0, labels ignored), not a 2D
    attention mask, so transformers still derives the block-diagonal mask from the position ids
    and no real token attends to padding or to another example.
    """

    counter: TokenCounter | None = None
    pad_token_id: int = 0
    row_tokens: int | None = 512

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        capacity = max(*lengths, self.row_tokens or sum(lengths))
        rows = [self._row([features[i] for i in members]) for members in pack_rows(lengths, capacity)]
        width = max(len(ids) for ids, _, _ in rows)
        input_ids, labels, position_ids = [], [], []
        for ids, labs, pos in rows:
            pad = width - len(ids)
            input_ids.append(ids + [self.pad_token_id] * pad)
            labels.append(labs + [IGNORE_INDEX] * pad)
            position_ids.append(pos + list(range(pad)))
        if self.counter is not None:
            self.counter.tokens += sum(lengths)
            self.counter.samples += len(features)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(position_ids, dtype=torch.long),
        }

    @staticmethod
    def _row(features: Sequence[dict[str, Any]]) -> tuple[list[int], list[int], list[int]]:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for feature in features:
            ids = list(feature["input_ids"])
            input_ids.extend(ids)
            # The first label of every example is ignored: never predict across a boundary.
            labels.append(IGNORE_INDEX)
            labels.extend(list(feature["labels"])[1:])
            position_ids.extend(range(len(ids)))
        return input_ids, labels, position_ids


@dataclass
class PaddingCollator:
    pad_token_id: int
    counter: TokenCounter | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            mask[row, :n] = 1
        if self.counter is not None:
            self.counter.tokens += int(mask.sum())
            self.counter.samples += len(features)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
