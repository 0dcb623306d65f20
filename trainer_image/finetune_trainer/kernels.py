"""Which attention kernel, row layout and fused kernels a run uses on its device.

CPU (measured, bench/trainer_bench.py): SDPA over bounded packed rows of at most 512 tokens. SDPA
materialises the block-diagonal mask that keeps packed examples apart, so its cost grows with the
square of the row, and bounded rows keep it near the per-example cost.

GPU: a variable-length ("varlen") kernel that takes the example boundaries from the position ids and
never builds a dense mask — flash-attention where its wheel is installed, else FlexAttention (in torch,
transformers turns the packed position ids into a document-masked BlockMask that skips whole blocks
across examples). With such a kernel each micro-batch is ONE flattened row: transformers reads
position-id packing as packed sequences for flash kernels only at batch size 1, and on this stack a
FlexAttention batch of several packed rows does not give the padded loss either
(tests/unit/test_trainer_kernels.py shows the one-row layout does), so bounded rows with B > 1 would let
examples attend to each other. `plan` never pairs a varlen kernel with more than one row.

Liger's kernels (fused RMSNorm, RoPE, SwiGLU, and the fused linear cross-entropy that never
materialises the vocabulary-wide logits) are Triton, GPU only; with them the model computes its own loss
from the hidden states, so the logits-at-labelled-positions path of loss.py is not used.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

VARLEN_KERNELS = frozenset({"flex_attention", "flash_attention_2", "flash_attention_3"})
# The measured CPU optimum (bench/trainer_bench.py, "bounded rows").
CPU_ROW_TOKENS = 512


@dataclass(frozen=True)
class Available:
    """What the trainer image and the device offer."""

    cuda: bool
    flash_attn: bool = False
    liger: bool = False


@dataclass(frozen=True)
class KernelPlan:
    attention: str
    # Tokens per packed row; None: one flattened row per micro-batch.
    row_tokens: int | None
    # Liger's fused kernels, with the model's own (fused) loss.
    fused: bool
    # Re-split each optimizer step's examples into micro-batches of even token counts.
    balance_steps: bool

    @property
    def varlen(self) -> bool:
        return self.attention in VARLEN_KERNELS

    def describe(self) -> str:
        rows = (
            "one flattened row per micro-batch"
            if self.row_tokens is None
            else f"rows of {self.row_tokens} tokens"
        )
        fused = ", Liger fused kernels and loss" if self.fused else ""
        return f"{self.attention}, {rows}{fused}"


def available() -> Available:
    import torch

    cuda = torch.cuda.is_available()
    # flash-attention needs Ampere or newer; its wheel is optional (none on PyPI for this stack).
    flash = cuda and torch.cuda.get_device_capability()[0] >= 8 and _installed("flash_attn")
    return Available(cuda=cuda, flash_attn=flash, liger=cuda and _installed("liger_kernel"))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def plan(avail: Available, *, packing: bool, full: bool = False, lm_head_adapter: bool = False) -> KernelPlan:
    """The kernels for a run. Without packing (padded batches) the attention mask carries the padding,
    which only a dense-mask kernel reads: SDPA. flash-attention takes only half-precision inputs, and a
    full fine-tune keeps fp32 weights (run in bf16 only under the Trainer's autocast, not in evaluation):
    FlexAttention takes either. Liger's fused loss reads the LM head's base weight directly, so a LoRA
    adapter on `lm_head` would never train: no fused loss then."""
    fused = avail.liger and not lm_head_adapter
    if not avail.cuda:
        return KernelPlan("sdpa", CPU_ROW_TOKENS if packing else None, fused=False, balance_steps=False)
    if not packing:
        return KernelPlan("sdpa", None, fused=fused, balance_steps=False)
    attention = "flash_attention_2" if avail.flash_attn and not full else "flex_attention"
    return KernelPlan(attention, None, fused=fused, balance_steps=True)


def as_loaded(wanted: KernelPlan, attention: str) -> KernelPlan:
    """The plan for the attention the model was loaded with: an architecture without the varlen kernel
    (GPT-2, Falcon, ...) falls back to SDPA, and so to bounded rows cut per micro-batch."""
    if attention == wanted.attention:
        return wanted
    return KernelPlan(attention, CPU_ROW_TOKENS, fused=wanted.fused, balance_steps=False)


def apply_fused(model: Any) -> bool:
    """Liger's kernels on a loaded model (before LoRA wraps it); False where Liger has none for its type."""
    from liger_kernel.transformers.monkey_patch import (
        MODEL_TYPE_TO_APPLY_LIGER_FN,
        _apply_liger_kernel_to_instance,
    )

    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        log.info("no Liger kernels for model type %s; using the unfused path", model_type)
        return False
    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        fused_linear_cross_entropy=True,
        cross_entropy=False,
    )
    return True
