"""Where a CPU training run's time goes, phase by phase, on the demo's model.

SmolLM2-135M-Instruct with the trainer's LoRA (r16, all linear layers), packed batches of 8 chat rows
of the bench's long-tailed lengths, fp32 on CPU with the trainer's thread sizing. Timed with
`time.perf_counter` around each phase of a hand-written step (the same model, collator and loss as
the trainer's `transformers.Trainer` loop) and forward hooks on the attention blocks and the LM head:

- tokenization: rendering the chat template and tokenizing a row (validation and the trainer both do it);
- forward: of which attention blocks, LM head (+ the loss);
- backward;
- optimizer: AdamW over the LoRA weights;
- evaluation generation: greedy decoding of 48 tokens, per prompt.

Each step runs twice: with the LM head over every position (what a plain causal-LM loss does) and over
the labelled positions only (`finetune_trainer.loss`, what the trainer does).

    python bench/step_profile.py [--steps 3] [--write-docs]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from benchdocs import write_section
from finetune_trainer import data, threads
from finetune_trainer.loss import KeepLabelledLogits, labelled_token_loss
from finetune_trainer.packing import PackingCollator
from peft import LoraConfig, get_peft_model
from trainer_bench import bench_rows, load  # the same model and rows as the throughput bench


class Clock:
    """Seconds per phase; hooks add the time between a module's pre- and post-forward."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: dict[int, float] = {}

    def hook(self, module: torch.nn.Module, phase: str) -> None:
        def pre(*_: Any) -> None:
            self._open[id(module)] = time.perf_counter()

        def post(*_: Any) -> None:
            self.seconds[phase] += time.perf_counter() - self._open.pop(id(module))

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def profile(
    base: Any, tokenizer: Any, rows: list[dict[str, Any]], *, steps: int, keep_labelled: bool
) -> dict[str, float]:
    model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    clock = Clock()
    for name, module in model.named_modules():
        if name.endswith("self_attn"):
            clock.hook(module, "forward: attention blocks")
        elif name.endswith("lm_head"):
            clock.hook(module, "forward: LM head")
    examples = [data.tokenize_row(r, "chat", tokenizer, 1024) for r in rows]
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    packing = PackingCollator(pad_token_id=tokenizer.pad_token_id)
    collator: Any = KeepLabelledLogits(packing) if keep_labelled else packing
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    for step in range(steps + 1):  # the first step warms up the allocator and is not counted
        batch = collator(features[step * 8 : step * 8 + 8])
        labels = batch["labels"]
        if step == 1:
            clock.seconds.clear()
        t0 = time.perf_counter()
        if keep_labelled:
            out = model(**{k: v for k, v in batch.items() if k != "labels"})
            loss = labelled_token_loss(out, labels)
        else:
            loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t3 = time.perf_counter()
        clock.seconds["forward"] += t1 - t0
        clock.seconds["backward"] += t2 - t1
        clock.seconds["optimizer"] += t3 - t2
    return {k: v / steps for k, v in clock.seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/step_profile.py", description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    opts = parser.parse_args()
    count = threads.configure({})
    threads.apply_to_torch(count)
    torch.manual_seed(0)
    rows = bench_rows(8 * (opts.steps + 1), seed=0)
    base, tokenizer = load("smollm2", Path(tempfile.mkdtemp(prefix="step-profile-")))

    t0 = time.perf_counter()
    for r in rows:
        data.tokenize_row(r, "chat", tokenizer, 1024)
    tokenize = (time.perf_counter() - t0) / len(rows) * 8  # per step's 8 rows

    plain = profile(base, tokenizer, rows, steps=opts.steps, keep_labelled=False)
    kept = profile(base, tokenizer, rows, steps=opts.steps, keep_labelled=True)

    base.eval()
    prompts = [data.generation_prompt_ids(r, "chat", tokenizer) for r in rows[:4]]
    t0 = time.perf_counter()
    with torch.no_grad():
        for ids, _ in filter(None, prompts):
            base.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False, min_new_tokens=48)
    generate = (time.perf_counter() - t0) / len([p for p in prompts if p])

    phases = ["forward", "forward: attention blocks", "forward: LM head", "backward", "optimizer"]
    lines = [
        "| phase | LM head over every position (s / step) | over the labelled positions (s / step) |",
        "|---|---:|---:|",
        f"| tokenization (8 rows) | {tokenize:.3f} | {tokenize:.3f} |",
        *(f"| {p} | {plain.get(p, 0):.2f} | {kept.get(p, 0):.2f} |" for p in phases),
        f"| **step** (forward + backward + optimizer) | {sum(plain[p] for p in ('forward', 'backward', 'optimizer')):.2f} "
        f"| {sum(kept[p] for p in ('forward', 'backward', 'optimizer')):.2f} |",
        f"| evaluation generation (48 tokens, one prompt) | {generate:.2f} | {generate:.2f} |",
    ]
    text = "\n".join(lines)
    print(text)
    if opts.write_docs:
        body = (
            f"Command: `python bench/step_profile.py --steps {opts.steps} --write-docs` "
            f"(SmolLM2-135M-Instruct, LoRA r16 all-linear, fp32, {count} CPU threads, packed batches of 8 "
            "chat rows).\n\n" + text
        )
        write_section("step-profile", "Where a CPU step's time goes", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
