"""Trainer throughput: our padding-free packed LoRA training vs a plain padded-batch baseline.

Both sides use the same model, the same tokenized rows, the same LoRA config, batch size,
optimizer and `transformers.Trainer` loop, in the same process, one after the other. Ours packs
each batch into bounded rows with per-example position ids (finetune_trainer.packing) and computes
logits only at the positions that predict a labelled token (finetune_trainer.loss); the baseline
pads every row to the longest in the batch (`DataCollatorForSeq2Seq`) and uses the model's own
loss. Throughput counts non-padding tokens only.

    python bench/trainer_bench.py [--model smollm2|tiny] [--steps N] [--write-docs]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from benchdocs import write_section
from finetune_trainer import data
from finetune_trainer.loss import KeepLabelledLogits, labelled_token_loss
from finetune_trainer.model_loading import _as_plain_model
from finetune_trainer.packing import PackingCollator, TokenCounter
from finetune_trainer.tiny_model import build_tiny_llama, smollm2_gguf, smollm2_tokenizer
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
    set_seed,
)

WORDS = [
    "the",
    "a",
    "model",
    "data",
    "train",
    "token",
    "batch",
    "pack",
    "pad",
    "loss",
    "step",
    "adapter",
    "layer",
    "weight",
    "fact",
    "answer",
    "question",
    "island",
    "harbor",
    "river",
    "city",
    "north",
    "south",
    "value",
    "system",
    "policy",
    "budget",
    "report",
    "metric",
    "latency",
]


def bench_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Chat rows with the long-tailed length spread of real SFT data (short Q&A to long answers)."""
    rng = random.Random(seed)  # noqa: S311  (reproducible data, not a secret)
    rows = []
    for i in range(n):
        q_len = rng.randint(5, 40)
        a_len = int(min(600, rng.lognormvariate(4.3, 0.8)))  # median ~75 words, long tail to 600
        question = " ".join(rng.choice(WORDS) for _ in range(q_len))
        answer = " ".join(rng.choice(WORDS) for _ in range(max(1, a_len)))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}: {question}?"},
                    {"role": "assistant", "content": answer + "."},
                ]
            }
        )
    return rows


MODEL_TITLES = {"smollm2": "SmolLM2-135M-Instruct", "tiny": "tiny random Llama (hidden 256, 4 layers)"}


def lora_config() -> LoraConfig:
    """The LoRA both benchmarks train: r=16 on all linear layers."""
    return LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def tokenized(rows: list[dict[str, Any]], tokenizer: Any, max_seq_length: int) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        ex = data.tokenize_row(row, "chat", tokenizer, max_seq_length)
        out.append({"input_ids": ex.input_ids, "labels": ex.labels})
    return out


def best_of(repeats: int, sides: list[Any], measure: Any) -> dict[Any, dict[str, Any]]:
    """Each side's best tokens/s over `repeats` rounds, the order alternating between rounds, so a noisy
    neighbour on a shared machine penalises neither side alone."""
    best: dict[Any, dict[str, Any]] = {}
    for repeat in range(repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            result = measure(side)
            if side not in best or result["tokens_per_second"] > best[side]["tokens_per_second"]:
                best[side] = result
    return best


def load(model_name: str, scratch: Path) -> tuple[Any, Any]:
    tokenizer = smollm2_tokenizer()
    if model_name == "tiny":
        path = build_tiny_llama(scratch / "tiny", tokenizer, hidden=256, layers=4)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    else:
        gguf = smollm2_gguf()
        model = _as_plain_model(
            AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        )
    model.config.use_cache = False
    return model, tokenizer


def run(
    base: Any, tokenizer: Any, features: list[dict[str, Any]], *, packed: bool, steps: int, batch: int
) -> dict[str, Any]:
    set_seed(0)
    model = copy.deepcopy(base)  # both sides start from identical weights
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        model = model.to(device=device, dtype=torch.bfloat16)
    model = get_peft_model(model, lora_config())
    counter = TokenCounter()
    collator: Any = (
        KeepLabelledLogits(PackingCollator(counter, pad_token_id=tokenizer.pad_token_id))
        if packed
        else DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=data.IGNORE_INDEX)
    )
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="trainer-bench-"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=2e-4,
        logging_steps=steps,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        # Baseline: Trainer counts the attention mask; ours: the collator counts real tokens.
        include_num_input_tokens_seen="no" if packed else "non_padding",
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        seed=0,
        data_seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=collator,
        # Ours computes logits only where a token is predicted (finetune_trainer.loss).
        compute_loss_func=labelled_token_loss if packed else None,
    )
    started = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - started
    tokens = counter.tokens if packed else trainer.state.num_input_tokens_seen
    return {"tokens": int(tokens), "seconds": elapsed, "tokens_per_second": tokens / elapsed}


def padding_share(features: list[dict[str, Any]], batch: int, seed: int) -> float:
    """Share of padding in padded batches of this data (random batching, as the baseline does)."""
    order = list(range(len(features)))
    random.Random(seed).shuffle(order)  # noqa: S311
    real = padded = 0
    for start in range(0, len(order), batch):
        lengths = [len(features[i]["input_ids"]) for i in order[start : start + batch]]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
    return 1 - real / padded


def table(results: dict[str, Any], meta: dict[str, Any]) -> str:
    ours, base = results["packed"], results["padded"]
    ratio = ours["tokens_per_second"] / base["tokens_per_second"]
    return "\n".join(
        [
            f"Model `{meta['model']}` (LoRA r=16 on all linear layers), {meta['device']}, batch {meta['batch']} rows, "
            f"{meta['steps']} optimizer steps per side (best of {meta['repeats']}), {meta['rows']} chat rows "
            f"(mean {meta['mean_len']:.0f} tokens, max {meta['max_len']}; padded batches are "
            f"{meta['padding']:.0%} padding).",
            "",
            "| trainer | batch layout | non-padding tokens/s | tokens | seconds |",
            "|---|---|---:|---:|---:|",
            f"| finetune_trainer | packed (rows ≤ 512 tokens, no cross-example attention), logits only at labelled positions | {ours['tokens_per_second']:.0f} | {ours['tokens']} "
            f"| {ours['seconds']:.1f} |",
            f"| transformers.Trainer + peft | padded | {base['tokens_per_second']:.0f} | {base['tokens']} "
            f"| {base['seconds']:.1f} |",
            "",
            f"**Speed-up: {ratio:.2f}x** non-padding tokens per second.",
        ]
    )


def write_docs(section: str, command: str) -> None:
    note = (
        "Why bounded rows: one unbounded packed row per batch (the `DataCollatorWithFlattening` layout) "
        "measured 1.01x on this bench on CPU, because SDPA/eager attention costs (row length)^2 whatever "
        "the block-diagonal mask; packing into rows of at most 512 tokens (or the longest example) keeps "
        "the attention cost near the per-example cost. On a GPU the same command runs in bf16 + SDPA."
    )
    write_section("trainer-bench", "Trainer throughput", f"    {command}\n\n{section}\n\n{note}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODEL_TITLES), default="smollm2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--write-docs", action="store_true", help="update the section in docs/benchmarks.md")
    opts = parser.parse_args()

    tokenizer = smollm2_tokenizer()
    rows = bench_rows(opts.steps * opts.batch, seed=1)
    features = tokenized(rows, tokenizer, opts.max_seq_length)
    lengths = [len(f["input_ids"]) for f in features]
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.machine()}, " + (f"{torch.get_num_threads()} threads)")
    )
    meta = {
        "model": MODEL_TITLES[opts.model],
        "device": device,
        "batch": opts.batch,
        "steps": opts.steps,
        "repeats": opts.repeats,
        "rows": len(rows),
        "mean_len": sum(lengths) / len(lengths),
        "max_len": max(lengths),
        "padding": padding_share(features, opts.batch, seed=0),
    }
    base, tokenizer = load(opts.model, Path(tempfile.mkdtemp(prefix="trainer-bench-")))
    # Warm-up (lazy kernel initialisation, allocator), then the sides alternate (best_of).
    run(base, tokenizer, features[: opts.batch], packed=True, steps=1, batch=opts.batch)
    best = best_of(
        opts.repeats,
        [True, False],
        lambda packed: run(base, tokenizer, features, packed=packed, steps=opts.steps, batch=opts.batch),
    )
    results = {"packed" if packed else "padded": result for packed, result in best.items()}
    section = table(results, meta)
    print(section)
    print(json.dumps({"meta": meta, "results": results}, default=str), file=sys.stderr)
    if opts.write_docs:
        args = " ".join(a for a in sys.argv[1:] if a != "--write-docs")
        write_docs(
            section, f"python bench/trainer_bench.py {args}".strip() + "   # make bench-trainer: the defaults"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
