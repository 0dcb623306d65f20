"""The trainer with a pvc:// base model: the model is a local directory (or .gguf file) standing in for
the claim the operator mounts at baseModel.mountPath; it is loaded where it is, never copied. Data and
outputs go through the real local S3, as in test_trainer_tiny.py."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.tiny_model import smollm2_gguf

from tests.integration.test_trainer_support import (
    chat_rows,
    get_json,
    list_keys,
    lora_config,
    put_jsonl,
    run_in_process,
    run_trainer,
    tiny_model_dir,  # noqa: F401  (fixture)
    write_config,
)
from tests.support.operator import s3_client


def pvc_config(bucket: str, uri: str, mount: Path, train: str, out: str) -> dict[str, Any]:
    config = lora_config(bucket, uri, train, out, validation_split="0.2", keep=1, max_examples=4)
    config["baseModel"]["mountPath"] = str(mount)
    return config


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def mount(tmp_path: Path, tiny_model_dir: Path) -> Path:  # noqa: F811
    """The claim's root as the pod would see it: the tiny Llama at llm/tiny."""
    root = tmp_path / "mnt" / "base-model"
    shutil.copytree(tiny_model_dir, root / "llm" / "tiny")
    return root


def test_lora_trains_from_the_mounted_directory_in_place(
    s3_env: dict[str, str], s3_bucket: str, mount: Path, tmp_path: Path
) -> None:
    client = s3_client(s3_env)
    train = put_jsonl(client, s3_bucket, "data/train.jsonl", chat_rows(40))
    uri = "pvc://models/llm/tiny"
    config = write_config(tmp_path / "config.json", pvc_config(s3_bucket, uri, mount, train, "pvc"))
    before = digest_tree(mount)

    run = run_trainer("train", config, s3_env, tmp_path / "scratch")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = run.termination
    assert summary["result"] == "Succeeded"
    assert summary["step"] == summary["totalSteps"] == 8  # 32 train rows / 8 per batch * 2 epochs
    assert summary["evalLoss"] < summary["baseEvalLoss"]
    # Loaded where it is: nothing fetched into scratch, nothing written next to the model.
    assert not (tmp_path / "scratch" / "model").exists()
    assert digest_tree(mount) == before

    keys = set(list_keys(client, s3_bucket, "pvc/"))
    assert {"pvc/adapter/adapter_model.safetensors", "pvc/reports/result.json"} <= keys
    validation = get_json(client, s3_bucket, "pvc/reports/validation.json")
    assert validation["baseModel"] == {
        "uri": uri,
        "loadable": True,
        "format": "hf",
        "architecture": "LlamaForCausalLM",
        "tensors": validation["baseModel"]["tensors"],
    }
    assert validation["baseModel"]["tensors"] > 0
    card = client.get_object(Bucket=s3_bucket, Key="pvc/adapter/README.md")["Body"].read().decode()
    assert uri in card


def test_validate_accepts_a_mounted_gguf_file(
    s3_env: dict[str, str],
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = s3_client(s3_env)
    gguf = smollm2_gguf()
    root = tmp_path / "mnt"
    (root / "gguf").mkdir(parents=True)
    # A copy, as on a real claim: a symlink out of the claim is refused (tests/unit/test_trainer_pvc_model.py).
    shutil.copyfile(gguf, root / "gguf" / gguf.name)
    train = put_jsonl(client, s3_bucket, "data/train.jsonl", chat_rows(10))
    uri = f"pvc://models/gguf/{gguf.name}"
    config = write_config(tmp_path / "config.json", pvc_config(s3_bucket, uri, root, train, "gguf"))
    run = run_in_process("validate", config, s3_env, tmp_path / "scratch", monkeypatch)
    assert run.returncode == 0, run.termination
    report = get_json(client, s3_bucket, "gguf/reports/validation.json")
    assert report["valid"] is True
    assert report["baseModel"]["format"] == "gguf"
    assert report["baseModel"]["architecture"] == "llama"
    assert not (tmp_path / "scratch" / "model").exists()


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("pvc://models/llm/absent", "does not exist"),
        ("pvc://models/llm", "has no config.json"),
        ("pvc://models/llm/tiny/config.json.gguf", "does not exist"),
    ],
    ids=["missing", "not-a-model", "missing-gguf"],
)
def test_validate_names_the_path_when_it_is_not_a_model(
    s3_env: dict[str, str],
    s3_bucket: str,
    mount: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    uri: str,
    needle: str,
) -> None:
    client = s3_client(s3_env)
    train = put_jsonl(client, s3_bucket, "data/train.jsonl", chat_rows(10))
    config = write_config(tmp_path / "config.json", pvc_config(s3_bucket, uri, mount, train, "bad"))
    run = run_in_process("validate", config, s3_env, tmp_path / "scratch", monkeypatch)
    assert run.returncode == 42
    assert run.termination["reason"] == "InvalidModel"
    path = str(mount / uri.removeprefix("pvc://models/"))
    assert path in run.termination["message"]
    assert needle in run.termination["message"]
    report = get_json(client, s3_bucket, "bad/reports/validation.json")
    assert report["baseModel"] == {"uri": uri, "loadable": False}
    assert [e["file"] for e in report["errors"]] == ["baseModel"]
