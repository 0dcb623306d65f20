"""The GPU fast path's parts, checked on CPU: the kernel plan, the varlen (FlexAttention) packed layout
against padding, micro-batches re-cut by tokens within a step, and the automatic micro-batch.

FlexAttention has no CPU backward, so its equality with the padded path is checked on the forward
loss and per-example logits; the gradients of the one-row layout are checked with SDPA (same layout,
tests/unit/test_trainer_loss.py). Liger's Triton kernels need a GPU; here only their installation on a
model instance is checked.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Any

import pytest
import torch
from finetune_trainer import kernels, micro_batch
from finetune_trainer.kernels import Available, KernelPlan
from finetune_trainer.micro_batch import MicroBatch, NoMicroBatchFits
from finetune_trainer.packing import PackingCollator, PaddingCollator, TokenCounter
from finetune_trainer.step_batches import BalancedStepTrainer, balance, heaviest
from finetune_trainer.train import forward_loss, training_collator
from transformers import Trainer, TrainingArguments

from tests.unit.test_trainer_packing import EXAMPLES, assert_each_example_as_alone, tiny_llama

# --- the plan -------------------------------------------------------------------------------


def test_cpu_keeps_sdpa_over_bounded_rows() -> None:
    plan = kernels.plan(Available(cuda=False, flash_attn=True, liger=True), packing=True)
    assert plan == KernelPlan("sdpa", kernels.CPU_ROW_TOKENS, fused=False, balance_steps=False)
    assert kernels.plan(Available(cuda=False), packing=False).row_tokens is None


def test_gpu_packs_one_row_per_micro_batch_for_a_varlen_kernel() -> None:
    assert kernels.plan(Available(cuda=True), packing=True) == KernelPlan(
        "flex_attention", None, fused=False, balance_steps=True
    )
    flash = kernels.plan(Available(cuda=True, flash_attn=True, liger=True), packing=True)
    assert (flash.attention, flash.row_tokens, flash.fused) == ("flash_attention_2", None, True)
    # Padded batches carry their padding in the attention mask, which only a dense-mask kernel reads.
    assert kernels.plan(Available(cuda=True, flash_attn=True), packing=False).attention == "sdpa"


def test_a_full_fine_tune_takes_flex_and_an_lm_head_adapter_takes_no_fused_loss() -> None:
    gpu = Available(cuda=True, flash_attn=True, liger=True)
    # fp32 weights outside autocast (evaluation): flash-attention takes half precision only.
    assert kernels.plan(gpu, packing=True, full=True).attention == "flex_attention"
    # Liger's fused loss reads the LM head's base weight: a LoRA adapter there would never train.
    assert not kernels.plan(gpu, packing=True, lm_head_adapter=True).fused


def test_an_architecture_without_the_varlen_kernel_falls_back_to_bounded_rows() -> None:
    wanted = kernels.plan(Available(cuda=True, liger=True), packing=True)
    assert kernels.as_loaded(wanted, "flex_attention") is wanted
    fallback = kernels.as_loaded(wanted, "sdpa")
    assert fallback == KernelPlan("sdpa", kernels.CPU_ROW_TOKENS, fused=True, balance_steps=False)


def test_a_model_without_flex_attention_loads_with_sdpa(tmp_path: Any) -> None:
    from finetune_trainer.local_model import LocalModel
    from finetune_trainer.model_loading import load_model
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    model = load_model(LocalModel(tmp_path, None), "lora", "cpu", attention="flex_attention")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("cuda", "flash", "liger", "packing"), list(itertools.product([False, True], repeat=4))
)
def test_no_plan_gives_a_varlen_kernel_more_than_one_row(
    cuda: bool, flash: bool, liger: bool, packing: bool
) -> None:
    plan = kernels.plan(Available(cuda=cuda, flash_attn=flash, liger=liger), packing=packing)
    if plan.varlen:
        assert plan.row_tokens is None
        batch = training_collator(plan, TokenCounter(), 0, packing=packing)(EXAMPLES)
        assert batch["input_ids"].shape[0] == 1
    assert not plan.fused or cuda


def test_flex_attention_one_row_gives_the_padded_loss_and_keeps_examples_apart() -> None:
    flex = tiny_llama("flex_attention")
    sdpa = tiny_llama("sdpa")  # same seed, same weights
    padded = PaddingCollator(pad_token_id=0)(EXAMPLES)
    plan = kernels.plan(Available(cuda=True), packing=True)
    packed = PackingCollator(row_tokens=plan.row_tokens)(EXAMPLES)
    assert packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        assert flex(**packed).loss.item() == pytest.approx(sdpa(**padded).loss.item(), rel=1e-5)
        assert_each_example_as_alone(flex(**packed).logits[0], sdpa)


def test_the_fused_plan_takes_the_models_own_loss_which_equals_the_labelled_token_loss() -> None:
    model = tiny_llama("sdpa").train()
    unfused = KernelPlan("sdpa", None, fused=False, balance_steps=False)
    fused = KernelPlan("sdpa", None, fused=True, balance_steps=False)
    labelled_batch = training_collator(unfused, TokenCounter(), 0, packing=True)(EXAMPLES)
    model_batch = training_collator(fused, TokenCounter(), 0, packing=True)(EXAMPLES)
    assert "logits_to_keep" in labelled_batch
    assert "logits_to_keep" not in model_batch  # Liger's loss reads the labels, not kept logits
    # Liger's forward computes the fused loss in evaluation too (no vocabulary-wide logits).
    assert model_batch.pop("skip_logits") is True  # type: ignore[comparison-overlap]
    a = forward_loss(unfused)(model, labelled_batch)
    b = forward_loss(fused)(model, model_batch)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


LIGER_CHECK = """
import torch
from finetune_trainer import kernels
from tests.unit.test_trainer_packing import tiny_llama

model = tiny_llama("sdpa")
assert kernels.apply_fused(model)
assert model.forward.__module__.startswith("liger_kernel"), model.forward.__module__


class Unknown:
    config = type("C", (), {"model_type": "not-a-model"})()


assert not kernels.apply_fused(Unknown())
print("ok")
"""


def test_liger_installs_on_a_llama_instance_and_declines_an_unknown_type() -> None:
    # In a process of its own: Liger patches transformers' Llama module for the whole process, and its
    # Triton kernels cannot run on this CPU.
    done = subprocess.run(
        [sys.executable, "-c", LIGER_CHECK], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


# --- micro-batches re-cut by tokens ------------------------------------------------------------


def test_balance_spreads_tokens_evenly_and_keeps_every_example_once() -> None:
    lengths = [900, 850, 20, 30, 40, 60, 800, 10]
    groups = balance(lengths, 4)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert len(groups) == 4
    assert heaviest(groups, lengths) == 900  # the longest example alone is the floor
    # The loader's cut in sampling order puts 900 + 850 together.
    assert heaviest([[0, 1], [2, 3], [4, 5], [6, 7]], lengths) == 1750
    assert heaviest(balance([5, 5, 5, 5], 2), [5, 5, 5, 5]) == 10
    assert balance([3], 4) == [[0]]


MIXED = [
    {"input_ids": list(range(3, 3 + n)), "labels": [-100] * (n // 2) + list(range(3 + n // 2, 3 + n))}
    for n in (30, 4, 5, 28, 6, 3, 25, 7)
]


def _train(
    trainer_class: type[Trainer], tmp: Any, seen: list[int]
) -> tuple[list[float], dict[str, torch.Tensor]]:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama("sdpa").train(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    plan = KernelPlan("sdpa", None, fused=False, balance_steps=True)
    inner = training_collator(plan, TokenCounter(), 0, packing=True)

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seen.append(sum(len(f["input_ids"]) for f in features))
        return inner(features)

    from finetune_trainer.loss import labelled_token_loss

    args = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=MIXED,
        data_collator=collate,
        compute_loss_func=labelled_token_loss,
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses, weights


def test_a_re_cut_step_trains_exactly_like_the_loaders_cut(tmp_path: Any) -> None:
    plain_sizes: list[int] = []
    balanced_sizes: list[int] = []
    plain, plain_weights = _train(Trainer, tmp_path / "plain", plain_sizes)
    balanced, balanced_weights = _train(BalancedStepTrainer, tmp_path / "balanced", balanced_sizes)
    assert len(plain) == len(balanced) == 4
    assert balanced == pytest.approx(plain, rel=1e-4)
    for name, weight in plain_weights.items():
        torch.testing.assert_close(balanced_weights[name], weight, rtol=1e-4, atol=1e-6)
    # Same tokens per step, spread more evenly over its two micro-batches.
    assert sum(plain_sizes) == sum(balanced_sizes)
    assert len(balanced_sizes) == len(plain_sizes) == 8
    for step in range(4):
        pair = slice(2 * step, 2 * step + 2)
        assert max(balanced_sizes[pair]) <= max(plain_sizes[pair])
    step_spread = [abs(a - b) for a, b in zip(balanced_sizes[::2], balanced_sizes[1::2], strict=True)]
    plain_spread = [abs(a - b) for a, b in zip(plain_sizes[::2], plain_sizes[1::2], strict=True)]
    assert sum(step_spread) < sum(plain_spread)


# --- the automatic micro-batch -----------------------------------------------------------------


def test_candidates_keep_the_step_and_try_checkpointing_before_a_smaller_batch() -> None:
    assert micro_batch.candidates(4, 2) == [
        MicroBatch(4, 2, False),
        MicroBatch(4, 2, True),
        MicroBatch(2, 4, False),
        MicroBatch(2, 4, True),
        MicroBatch(1, 8, False),
        MicroBatch(1, 8, True),
    ]
    # 6 per step: only divisors, so the effective batch never changes.
    assert [(c.batch_size, c.accumulation) for c in micro_batch.candidates(3, 2) if not c.checkpointing] == [
        (3, 2),
        (2, 3),
        (1, 6),
    ]
    # QLoRA always checkpoints.
    assert all(c.checkpointing for c in micro_batch.candidates(2, 1, checkpointing=True))


def test_choose_takes_the_first_that_fits() -> None:
    # A GPU that holds 2 sequences, or 4 with checkpointing.
    def fits(c: MicroBatch) -> bool:
        return c.batch_size <= (4 if c.checkpointing else 2)

    tried: list[MicroBatch] = []

    def trying(c: MicroBatch) -> bool:
        tried.append(c)
        return fits(c)

    chosen = micro_batch.choose(micro_batch.candidates(8, 1), trying)
    assert chosen == MicroBatch(4, 2, True)
    assert tried[0] == MicroBatch(8, 1, False)


def test_nothing_fits_says_what_to_change() -> None:
    with pytest.raises(NoMicroBatchFits, match=r"maxSeqLength.*qlora.*more memory"):
        micro_batch.choose(micro_batch.candidates(2, 1), lambda c: False)


def test_probe_leaves_no_gradients_and_restores_checkpointing() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama("sdpa"), LoraConfig(r=4, target_modules=["q_proj"])).eval()
    batch = PackingCollator()(EXAMPLES)
    assert micro_batch.probe(
        model, batch, checkpointing=True, forward_loss=lambda m, b: m(**b).loss, autocast=True
    )
    assert all(p.grad is None for p in model.parameters())
    assert not model.is_activation_checkpointing
    # The embeddings' require-grads hook that checkpointing installs on a frozen base is gone again.
    assert not hasattr(model.get_base_model(), "_require_grads_hook")
    assert not model.training  # was in eval mode, left so


def test_probe_reports_out_of_memory_and_raises_anything_else() -> None:
    model = tiny_llama("sdpa")
    batch = PackingCollator()(EXAMPLES)

    def oom(m: Any, b: dict[str, Any]) -> torch.Tensor:
        m(**b).loss.backward()  # gradients exist when memory runs out mid-backward
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert not micro_batch.probe(model, batch, checkpointing=False, forward_loss=oom)
    assert all(p.grad is None for p in model.parameters())

    def broken(m: Any, b: dict[str, Any]) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        micro_batch.probe(model, batch, checkpointing=False, forward_loss=broken)
