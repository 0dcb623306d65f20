"""Helpers for the trainer integration tests (no tests here): run the real trainer CLI
against the real local S3 (SeaweedFS) with a tiny random Llama or SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.tiny_model import build_tiny_llama, smollm2_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 random Llama with SmolLM2's real tokenizer and chat template."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_tokenizer())


def upload_dir(client: Any, local: Path, bucket: str, prefix: str) -> str:
    for path in sorted(local.iterdir()):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}/"


def put_jsonl(client: Any, bucket: str, key: str, rows: list[Any] | str) -> str:
    body = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
    client.put_object(Bucket=bucket, Key=key, Body=body.encode())
    return f"s3://{bucket}/{key}"


def chat_rows(n: int, offset: int = 0, color_shift: int = 0) -> list[dict[str, Any]]:
    """Simple, learnable chat rows: the answer is a fixed function of the question (with a color_shift,
    another function: rows that contradict the unshifted ones)."""
    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    rows = []
    for i in range(offset, offset + n):
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What color is item {i}?"},
                    {
                        "role": "assistant",
                        "content": f"Item {i} is {colors[(i + color_shift) % len(colors)]}.",
                    },
                ]
            }
        )
    return rows


@dataclass
class TrainerRun:
    returncode: int
    termination: dict[str, Any]
    stderr: str
    scratch: Path


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))
    return path


def trainer_env(s3_env: dict[str, str], scratch: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The pod's environment; `extra` comes last (an hf:// job: HF_HUB_OFFLINE=0, HF_ENDPOINT, HF_TOKEN)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_env)
    env.update(
        {
            "SCRATCH_DIR": str(scratch),
            "TERMINATION_MESSAGE_PATH": str(scratch / "termination-log"),
            "METRICS_PORT": "0",
            "POD_IP": "127.0.0.1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            # The CPU limit the operator passes through the downward API (millicores): one CPU, as a
            # test's trainer pod asks for (tests.support.operator.TRAINER_CPU); the threads follow it.
            "FTO_CPU_LIMIT": "1000",
        }
    )
    env.update(extra or {})
    return env


def start_trainer(
    mode: str, config: Path, s3_env: dict[str, str], scratch: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    scratch.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer", mode, "--config", str(config)],
        env=trainer_env(s3_env, scratch, extra_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], scratch: Path, timeout: float = 240) -> TrainerRun:
    _, stderr = proc.communicate(timeout=timeout)
    term_path = scratch / "termination-log"
    termination = json.loads(term_path.read_text()) if term_path.exists() else {}
    return TrainerRun(proc.returncode, termination, stderr, scratch)


def run_trainer(
    mode: str,
    config: Path,
    s3_env: dict[str, str],
    scratch: Path,
    timeout: float = 240,
    *,
    extra_env: dict[str, str] | None = None,
) -> TrainerRun:
    return finish(start_trainer(mode, config, s3_env, scratch, extra_env), scratch, timeout)


def run_in_process(
    mode: str,
    config: Path,
    s3_env: dict[str, str],
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    extra_env: dict[str, str] | None = None,
) -> TrainerRun:
    """The same CLI entry point, called in this process: no second interpreter start-up or
    transformers import per case (validate-only cases run in about a second this way)."""
    from finetune_trainer.__main__ import main

    scratch.mkdir(parents=True, exist_ok=True)
    for key, value in trainer_env(s3_env, scratch, extra_env).items():
        if key.startswith(("AWS_", "SCRATCH_DIR", "TERMINATION_", "METRICS_", "POD_IP", "HF_HUB")) or (
            key in (extra_env or {})
        ):
            monkeypatch.setenv(key, value)
    code = main([mode, "--config", str(config)])
    term_path = scratch / "termination-log"
    termination = json.loads(term_path.read_text()) if term_path.exists() else {}
    return TrainerRun(code, termination, "", scratch)


def get_json(client: Any, bucket: str, key: str) -> Any:
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return out


def lora_config(
    bucket: str,
    model_uri: str,
    train: str,
    out: str,
    *,
    validation: str | None = None,
    validation_split: str | None = None,
    epochs: int = 2,
    batch_size: int = 8,
    keep: int = 2,
    max_examples: int = 6,
) -> dict[str, Any]:
    """A trainer config for the tiny models: a small LoRA, a high learning rate, few steps."""
    dataset: dict[str, Any] = {"train": train}
    if validation:
        dataset["validation"] = validation
    if validation_split:
        dataset["validationSplit"] = validation_split
    return {
        "baseModel": {"uri": model_uri},
        "dataset": dataset,
        "output": {"uri": f"s3://{bucket}/{out}/"},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": "0.0"}},
        "hyperparameters": {
            "epochs": epochs,
            "learningRate": "3e-3",
            "batchSize": batch_size,
            "maxSeqLength": 128,
            "warmupRatio": "0",
        },
        "checkpointing": {"everySteps": 4, "keep": keep},
        "job": {"namespace": "test", "name": out},
        "eval": {"maxExamples": max_examples, "maxNewTokens": 8},
    }
