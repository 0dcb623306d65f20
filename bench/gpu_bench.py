"""Single-GPU LoRA throughput: our trainer's GPU path vs plain transformers.Trainer + peft, side by side.

Same run, same random-weight model built from a config (no download), same data (random token ids with
a mixed length spread, half of each example a prompt without labels), same LoRA (r16, alpha 32, all
linear layers, no dropout), same optimizer, examples per step and learning rate. Each side runs in a
process of its own (Liger patches transformers for the whole process):

- ours: finetune_trainer's kernel plan for the device (kernels.py: one flattened row per micro-batch
  over a varlen kernel, Liger's fused kernels and loss when installed), each step re-cut by tokens
  (step_batches.py), the micro-batch chosen from GPU memory (micro_batch.py);
- hf-padded: batches padded to the longest with an attention mask (as `DataCollatorForSeq2Seq` pads),
  SDPA, the model's own loss;
- hf-grouped: the same with `train_sampling_strategy="group_by_length"` (transformers 5's form of
  `group_by_length=True`: batches of similar lengths, less padding).

Reported per side: tokens/s (real tokens only; the first `--warmup` steps excluded), MFU by the LoRA FLOP
count 4·N_frozen + 6·N_lora + attention (6·layers·hidden·Σ len² over the examples, causal) against
`--peak-tflops` (H100/H200 dense bf16: 989), peak memory, and the loss of the same first batch through
each side's collator and loss before training, which must agree.

    python bench/gpu_bench.py --shape llama-3.1-8b           # on the GPU machine
    python bench/gpu_bench.py --shape llama-3.2-1b
    python bench/gpu_bench.py --shape cpu-tiny [--write-docs] # the CPU mode, same code path
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B / Llama-3.1-8B configs (random weights); the length spreads of the targets.
    "llama-3.2-1b": {
        "config": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
        "lengths": "mixed", "max_len": 2048, "batch": 16, "accum": 2, "steps": 30, "warmup": 5, "rows": 2048,
    },
    "llama-3.1-8b": {
        "config": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
        "lengths": "fixed", "max_len": 4096, "batch": 2, "accum": 4, "steps": 20, "warmup": 4, "rows": 512,
    },
    "cpu-tiny": {
        "config": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=True),
        "lengths": "mixed", "max_len": 512, "batch": 8, "accum": 2, "steps": 8, "warmup": 2, "rows": 256,
    },
}  # fmt: skip
SIDES = ["ours", "hf-padded", "hf-grouped"]


def rows(shape: dict[str, Any], vocab: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Random token rows; "mixed": the long-tailed spread of chat SFT data (median ~1/6 of the max)."""
    rng = random.Random(seed)  # noqa: S311  (reproducible data, not a secret)
    out = []
    for _ in range(shape["rows"]):
        if shape["lengths"] == "fixed":
            n = shape["max_len"]
        else:
            n = max(16, min(shape["max_len"], int(rng.lognormvariate(5.6, 0.9) * shape["max_len"] / 2048)))
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        prompt = n // 2
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def flops_per_example_set(model: Any, lengths: list[int]) -> float:
    """4·N_frozen + 6·N_lora per token, plus causal attention, for examples of these lengths."""
    import torch

    frozen = lora = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n = module.weight.numel()
            if module.weight.requires_grad:
                lora += n
            else:
                frozen += n
    cfg = model.config
    tokens = sum(lengths)
    attention = 6 * cfg.num_hidden_layers * cfg.hidden_size * sum(n * n for n in lengths)
    return float((4 * frozen + 6 * lora) * tokens + attention)


def side_process(opts: argparse.Namespace) -> dict[str, Any]:
    import torch
    from finetune_trainer import kernels
    from finetune_trainer.loss import labelled_token_loss
    from finetune_trainer.micro_batch import MicroBatch, candidates, choose, probe
    from finetune_trainer.packing import PaddingCollator, TokenCounter
    from finetune_trainer.step_batches import BalancedStepTrainer
    from finetune_trainer.train import forward_loss, training_collator
    from peft import LoraConfig, get_peft_model
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    shape = SHAPES[opts.shape]
    cuda = torch.cuda.is_available()
    set_seed(0)
    data = rows(shape, shape["config"]["vocab_size"])
    ours = opts.side == "ours"
    plan = (
        kernels.plan(kernels.available(), packing=True)
        if ours
        else kernels.KernelPlan("sdpa", None, fused=False, balance_steps=False)
    )
    attention: dict[str, Any] = {"attn_implementation": plan.attention}  # a PretrainedConfig **kwarg
    config: Any = LlamaConfig(**shape["config"], **attention)
    with torch.device("cuda" if cuda else "cpu"):
        model: Any = LlamaForCausalLM(config)
        model = model.to(torch.bfloat16 if cuda else torch.float32)
    model.config.use_cache = False
    if plan.fused and not kernels.apply_fused(model):
        plan = kernels.KernelPlan(
            plan.attention, plan.row_tokens, fused=False, balance_steps=plan.balance_steps
        )
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)

    counter = TokenCounter()
    if ours:
        collator: Any = training_collator(plan, counter, 0, packing=True)
        loss_of = forward_loss(plan)
    else:
        # Padding to the longest in the batch with an attention mask, as DataCollatorForSeq2Seq pads.
        collator = PaddingCollator(0, counter)

        def loss_of(m: Any, batch: dict[str, Any]) -> Any:
            return m(**{k: v.to(m.device) for k, v in batch.items()}).loss

    # The same first batch through this side's collator and loss, before any training.
    first = data[: shape["batch"]]
    with torch.no_grad():
        first_loss = float(loss_of(model, collator(first)))
    counter.tokens = 0

    micro = MicroBatch(shape["batch"], shape["accum"], checkpointing=False)
    if ours and cuda:
        longest = max(data, key=lambda f: len(f["input_ids"]))
        micro = choose(
            candidates(shape["batch"], shape["accum"]),
            lambda c: probe(
                model, collator([longest] * c.batch_size), checkpointing=c.checkpointing, forward_loss=loss_of
            ),
        )
    timing: dict[str, Any] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            if state.global_step == opts.warmup:
                timing["start"], timing["tokens"] = time.perf_counter(), counter.tokens

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="gpu-bench-"),
        per_device_train_batch_size=micro.batch_size,
        gradient_accumulation_steps=micro.accumulation,
        gradient_checkpointing=micro.checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if micro.checkpointing else None,
        train_sampling_strategy="group_by_length" if opts.side == "hf-grouped" else "random",
        max_steps=opts.steps,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        bf16=cuda,
        use_cpu=not cuda,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
    )
    trainer_class = BalancedStepTrainer if plan.balance_steps else Trainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=collator,
        compute_loss_func=labelled_token_loss if ours and not plan.fused else None,
        callbacks=[Clock()],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = time.perf_counter() - timing["start"]
    tokens = counter.tokens - timing["tokens"]
    # The FLOPs of the timed tokens, at the data's length mix (real tokens only).
    lengths = [len(f["input_ids"]) for f in data]
    flops_per_token = flops_per_example_set(model, lengths) / sum(lengths)
    tps = tokens / seconds
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "side": opts.side,
        "kernels": plan.describe()
        if ours
        else "sdpa, padded batches" + (", group_by_length" if opts.side == "hf-grouped" else ""),
        "micro_batch": micro.describe(),
        "tokens_per_second": tps,
        "mfu": tps * flops_per_token / (opts.peak_tflops * 1e12),
        "peak_memory_gib": peak / 2**30,
        "first_loss": first_loss,
        "timed_steps": opts.steps - opts.warmup,
        "timed_tokens": tokens,
    }


def run_side(opts: argparse.Namespace, side: str) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="gpu-bench-")) / f"{side}.json"
    cmd = [
        sys.executable, __file__, "--side", side, "--shape", opts.shape, "--steps", str(opts.steps),
        "--warmup", str(opts.warmup), "--peak-tflops", str(opts.peak_tflops), "--result", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def table(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    base = results["hf-padded"]["tokens_per_second"]
    lines = [
        f"{meta['shape']} on {meta['device']}: {meta['timed_steps']} timed steps after {meta['warmup']} warm-up, "
        f"{meta['rows']} rows of {meta['lengths']} length up to {meta['max_len']} tokens, "
        f"{meta['batch']} x {meta['accum']} examples per step. Command: `{meta['command']}`",
        "",
        "| side | kernels | micro-batch | tokens/s | vs hf-padded | MFU | peak memory | first-batch loss |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for side in SIDES:
        r = results[side]
        lines.append(
            f"| {side} | {r['kernels']} | {r['micro_batch']} | {r['tokens_per_second']:,.0f} | "
            f"{r['tokens_per_second'] / base:.2f}x | {100 * r['mfu']:.1f}% | {r['peak_memory_gib']:.1f} GiB | "
            f"{r['first_loss']:.4f} |"
        )
    if meta["device"].startswith("CPU"):
        lines += [
            "",
            "CPU mode: the same code path on this machine's cores; MFU is against the GPU peak and means "
            "nothing here; peak memory is the process's resident set. Only the ratios and the loss "
            "agreement are meaningful on CPU.",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the shape's)")
    parser.add_argument("--warmup", type=int, help="steps excluded from the timing (default: the shape's)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU")
    parser.add_argument("--write-docs", action="store_true", help="update the section in docs/benchmarks.md")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    shape = SHAPES[opts.shape]
    opts.steps = opts.steps or shape["steps"]
    opts.warmup = opts.warmup if opts.warmup is not None else shape["warmup"]
    if opts.side:
        Path(opts.result).write_text(json.dumps(side_process(opts)))
        return 0

    import torch

    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    )
    results = {side: run_side(opts, side) for side in SIDES}
    losses = [r["first_loss"] for r in results.values()]
    meta = {
        "shape": opts.shape, "device": device, "timed_steps": opts.steps - opts.warmup, "warmup": opts.warmup,
        "rows": shape["rows"], "lengths": shape["lengths"], "max_len": shape["max_len"], "batch": shape["batch"],
        "accum": shape["accum"], "command": "python bench/gpu_bench.py " + " ".join(sys.argv[1:]).replace(" --write-docs", ""),
    }  # fmt: skip
    text = table(results, meta)
    print(text)
    agree = max(losses) - min(losses) <= 1e-2 * max(abs(x) for x in losses)
    print(f"first-batch losses {'agree' if agree else 'DIFFER'}: {losses}")
    if opts.write_docs:
        from benchdocs import write_section

        write_section(
            f"gpu-bench-{opts.shape}", f"Single-GPU LoRA path vs transformers + peft ({opts.shape})", text
        )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
