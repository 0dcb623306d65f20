"""The micro-batch a GPU can hold, chosen by trying it, with the effective batch kept.

The resolved hyperparameters fix the examples per optimizer step (micro-batch x accumulation steps);
how those examples are split into forward passes is free, and only the GPU's memory decides it. Before
training, one forward and backward pass over the worst micro-batch (the longest examples) is tried for
each candidate in order; the first that does not run out of memory is used. The order keeps the
largest micro-batch first: at each size, without gradient checkpointing and then with it (one extra
forward per step, ~a third more compute, but the activations of only one layer held at a time), then
the next smaller divisor of the per-process batch, with the accumulation steps raised to match.

On CPU nothing is probed: running out of host memory ends in the kernel's OOM kill, not an exception,
and the resolved batch is already bounded by tokens (TOKENS_PER_MICRO_BATCH).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MicroBatch:
    batch_size: int
    accumulation: int
    checkpointing: bool

    def describe(self) -> str:
        ckpt = ", gradient checkpointing" if self.checkpointing else ""
        return f"micro-batch {self.batch_size} x {self.accumulation} accumulation steps{ckpt}"


class NoMicroBatchFits(Exception):
    pass


def candidates(batch_size: int, accumulation: int, *, checkpointing: bool = False) -> list[MicroBatch]:
    """Every split of the per-process step (batch_size x accumulation examples) into micro-batches no
    larger than `batch_size`, largest first; `checkpointing` when the method always uses it (QLoRA)."""
    per_step = batch_size * accumulation
    sizes = [b for b in range(batch_size, 0, -1) if per_step % b == 0]
    out: list[MicroBatch] = []
    for b in sizes:
        for ckpt in (True,) if checkpointing else (False, True):
            out.append(MicroBatch(b, per_step // b, ckpt))
    return out


def choose(options: list[MicroBatch], fits: Callable[[MicroBatch], bool]) -> MicroBatch:
    for option in options:
        if fits(option):
            return option
        log.info("%s runs out of GPU memory; trying a smaller one", option.describe())
    smallest = options[-1] if options else None
    raise NoMicroBatchFits(
        "one example of the longest length does not fit in GPU memory even with gradient checkpointing"
        + (f" ({smallest.describe()})" if smallest else "")
        + "; lower data.maxSeqLength, use method.type qlora, or request a GPU with more memory"
    )


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def probe(
    model: Any,
    batch: dict[str, Any],
    *,
    checkpointing: bool,
    forward_loss: Callable[[Any, dict[str, Any]], Any],
    autocast: bool = False,
) -> bool:
    """One forward and backward pass of `batch` as training runs it (bf16 autocast on a GPU), beside
    room for what the first optimizer step adds (AdamW's two fp32 moments per trainable parameter);
    False if it runs out of GPU memory. Gradients, the reserve and the cache are released either way,
    so the probe leaves nothing behind for training."""
    import torch

    was_training = model.training
    model.train()
    toggled = _set_checkpointing(model, checkpointing)
    reserve: list[Any] = []
    try:
        for param in model.parameters():
            if param.requires_grad:
                reserve.append(torch.empty(2 * param.numel(), dtype=torch.float32, device=param.device))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and torch.cuda.is_available()):
            loss = forward_loss(model, batch)
        loss.backward()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return True
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        return False
    finally:
        reserve.clear()
        model.zero_grad(set_to_none=True)
        if toggled:
            _set_checkpointing(model, not checkpointing)
        model.train(was_training)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _set_checkpointing(model: Any, on: bool) -> bool:
    """Turn gradient checkpointing on or off; True if that changed it."""
    if bool(getattr(model, "is_activation_checkpointing", False)) == on:
        return False
    if on:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()
        # Enabling hooked the embeddings to require gradients (for a frozen base); disabling leaves
        # the hook on a peft model, which would then back-propagate into the embeddings for nothing.
        with contextlib.suppress(AttributeError):
            model.disable_input_require_grads()
    return True
