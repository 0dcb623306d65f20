"""Evaluation: validation loss, exact-match of greedy answers, generation latency.

Exact match is lenient on purpose, and the report says so: both strings are normalised
(lower case, punctuation dropped, whitespace collapsed) and a generation counts when the
normalised reference is contained in the normalised first line of the generation, because
chat models wrap short answers in a sentence ("The capital is Paris."). Strict match, reported
next to it, counts a generation only when its normalised first line is the reference and nothing
else: the measure for labels and fixed output formats.
"""

from __future__ import annotations

import re
import time
import unicodedata
from typing import Any

import torch

from . import data
from .packing import PaddingCollator

MATCH_RULE = (
    "normalised (lower case, punctuation and symbols removed, whitespace collapsed) reference contained in "
    "the normalised first non-empty line of the greedy generation; strictMatch: that line equal to the "
    "normalised reference"
)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    # Punctuation and symbols both go: "+419" and "419", "$5" and "5" are the same answer.
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line
    return ""


def is_match(generation: str, reference: str) -> bool:
    ref = normalize(reference)
    if not ref:
        return False
    gen = normalize(first_line(generation))
    return re.search(rf"(^| ){re.escape(ref)}($| )", gen) is not None


def is_strict_match(generation: str, reference: str) -> bool:
    ref = normalize(reference)
    return bool(ref) and normalize(first_line(generation)) == ref


@torch.no_grad()
def eval_loss(
    model: Any, examples: list[data.Example], pad_token_id: int, batch_size: int = 8
) -> float | None:
    """Mean loss per trained token over all examples (not a mean of batch means)."""
    if not examples:
        return None
    model.eval()
    device = next(model.parameters()).device
    collate = PaddingCollator(pad_token_id)
    total, count = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))  # less padding
    for start in range(0, len(ordered), batch_size):
        batch = collate(
            [{"input_ids": e.input_ids, "labels": e.labels} for e in ordered[start : start + batch_size]]
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
        shift_labels = batch["labels"][:, 1:].reshape(-1)
        loss = torch.nn.functional.cross_entropy(
            shift_logits, shift_labels, ignore_index=data.IGNORE_INDEX, reduction="sum"
        )
        total += float(loss)
        count += int((shift_labels != data.IGNORE_INDEX).sum())
    return total / count if count else None


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> tuple[list[str], float]:
    """Greedy generations and the latency per decoding step in ms (batched, left-padded)."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs: list[str] = []
    step_ms: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, prompt in enumerate(chunk):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        started = time.perf_counter()
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        elapsed = time.perf_counter() - started
        new = out[:, width:]
        steps = max(1, new.size(1))
        step_ms.append(elapsed * 1000 / steps)
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    latency = sum(step_ms) / len(step_ms) if step_ms else 0.0
    return outputs, latency


def reference_prompts(
    rows: list[data.Row], fmt: data.Format, tokenizer: Any, limit: int
) -> list[tuple[list[int], str]]:
    pairs = []
    for row in rows:
        pair = data.generation_prompt_ids(row.data, fmt, tokenizer)
        if pair is not None:
            pairs.append(pair)
        if len(pairs) >= limit:
            break
    return pairs


def exact_match(
    model: Any, tokenizer: Any, pairs: list[tuple[list[int], str]], max_new_tokens: int
) -> dict[str, Any]:
    if not pairs:
        return {"rows": 0}
    generations, ms_per_token = generate_answers(model, tokenizer, [p for p, _ in pairs], max_new_tokens)
    matches = [is_match(g, ref) for g, (_, ref) in zip(generations, pairs, strict=True)]
    strict = [is_strict_match(g, ref) for g, (_, ref) in zip(generations, pairs, strict=True)]
    return {
        "rows": len(pairs),
        "exactMatch": round(sum(matches) / len(matches), 4),
        "strictMatch": round(sum(strict) / len(strict), 4),
        "msPerToken": round(ms_per_token, 2),
        "samples": [
            {"reference": ref, "generation": first_line(g)[:200], "match": m}
            for g, (_, ref), m in list(zip(generations, pairs, matches, strict=True))[:5]
        ],
    }
