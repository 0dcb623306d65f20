"""The Tarvessa facts subset the SmolLM2 tests train on: the first FACTS held-out questions and
every training and validation phrasing of the same facts (`make demo` trains on the whole file).

The base model cannot know Tarvessa (it is fictional), so its exact match on the held-out
*paraphrased* questions is ~0; a short LoRA run on CPU answers most of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
FACTS = 8


def answer(row: dict[str, Any]) -> str:
    return str(row["messages"][-1]["content"]).lower()


def subset() -> dict[str, list[dict[str, Any]]]:
    files = {
        name: [json.loads(line) for line in (EXAMPLES / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "val", "heldout")
    }
    heldout = files["heldout"][:FACTS]
    references = [answer(r) for r in heldout]
    keep = {
        name: [r for r in files[name] if any(ref in answer(r) for ref in references)]
        for name in ("train", "val")
    }
    return {"train": keep["train"], "val": keep["val"], "heldout": heldout}
