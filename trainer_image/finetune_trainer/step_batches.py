"""Micro-batches cut by tokens from a whole optimizer step, not by example count.

An optimizer step trains on `batch_size x accumulation` examples; transformers' Trainer cuts them into
`accumulation` micro-batches of `batch_size` examples each, in sampling order, so on mixed-length data
one micro-batch may hold several times the tokens of another: the longest decides the memory and the
others leave the GPU idle. Here the training loader hands over the step's examples uncollated and each
step is re-cut into the same number of micro-batches with even token counts (longest example first
into the lightest micro-batch). The step's examples, its loss normalisation (labelled tokens of the
whole step) and so its gradient are unchanged; only which forward pass computes which example moves.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer

Collator = Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]


def balance(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """`parts` groups of indices with token sums as even as the greedy longest-first rule makes them
    (never empty while there are at least `parts` items); dataset order inside a group."""
    parts = max(1, min(parts, len(lengths))) if lengths else 1
    heap = [(0, p) for p in range(parts)]
    groups: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, p = heapq.heappop(heap)
        groups[p].append(index)
        heapq.heappush(heap, (load + lengths[index], p))
    return [sorted(g) for g in groups if g] or [[]]


def heaviest(groups: Sequence[Sequence[int]], lengths: Sequence[int]) -> int:
    return max((sum(lengths[i] for i in g) for g in groups), default=0)


@dataclass
class Uncollated:
    """A loader batch left as features: not a list or dict, so accelerate moves nothing to a device."""

    features: list[dict[str, Any]] = field(default_factory=list)


def uncollated(features: Sequence[dict[str, Any]]) -> Uncollated:
    return Uncollated(list(features))


class BalancedStepTrainer(Trainer):
    """transformers' Trainer with each optimizer step's micro-batches re-cut by tokens (module docstring).
    Evaluation batches go through the collator as usual."""

    def get_train_dataloader(self) -> Any:
        collator = self.data_collator
        # The training loader alone yields uncollated features; get_batch_samples collates them.
        self.data_collator = uncollated  # type: ignore[assignment]
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    def get_batch_samples(
        self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device
    ) -> tuple[list[Any], torch.Tensor | int | None]:
        loaded: list[Uncollated] = []
        for _ in range(num_batches):
            try:
                loaded.append(next(epoch_iterator))
            except StopIteration:
                break
        features = [f for batch in loaded for f in batch.features]
        lengths = [len(f["input_ids"]) for f in features]
        groups = balance(lengths, len(loaded))
        loader_cut, start = [], 0
        for batch in loaded:
            loader_cut.append(list(range(start, start + len(batch.features))))
            start += len(batch.features)
        # Never heavier than the loader's own cut: the micro-batch probe (micro_batch.py) sized memory
        # for that one's worst case.
        if heaviest(groups, lengths) > heaviest(loader_cut, lengths):
            groups = loader_cut
        collate: Collator = self.data_collator  # type: ignore[assignment]
        batches = [collate([features[i] for i in group]) for group in groups] if features else []
        return batches, self._get_num_items_in_batch(batches, device)
