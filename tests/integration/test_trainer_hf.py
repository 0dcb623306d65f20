"""hf:// base models: the real trainer CLI against a local Hub-compatible server (tests/support/
hub_server.py, reached through HF_ENDPOINT as an on-prem mirror would be) and the real local S3.

Nothing here reaches the network: the server holds a tiny random Llama saved with save_pretrained,
a private and a gated copy of it, a pickle-only repository and SmolLM2 as a GGUF-only repository.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from finetune_contract.outcomes import parse_summary
from finetune_operator.failures import classify_exit
from finetune_trainer.tiny_model import smollm2_gguf

from tests.integration.test_trainer_support import (
    TrainerRun,
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
from tests.support.hub_server import HubServer
from tests.support.operator import s3_client

TOKEN = "hf_test_token_0123456789"
# The files a transformers model needs: exactly what an hf:// job may download.
MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "model.safetensors",
}
# What a real repository carries besides: never downloaded.
EXTRAS: dict[str, bytes | Path] = {
    "README.md": b"# tiny\n",
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    "pytorch_model.bin": b"\x80\x02not really a pickle",
    "original/consolidated.pth": b"\x80\x02not really a pickle either",
    "onnx/model.onnx": b"onnx",
}


@pytest.fixture(scope="module")
def hub(tiny_model_dir: Path) -> Iterator[HubServer]:  # noqa: F811
    server = HubServer()
    model: dict[str, bytes | Path] = {p.name: p for p in tiny_model_dir.iterdir() if p.is_file()}
    assert set(model) == MODEL_FILES  # what save_pretrained wrote
    server.add_repo("org/tiny", {**model, **EXTRAS}, tags=("v1.0",))
    server.add_repo("org/private-tiny", model, token=TOKEN)
    server.add_repo("org/gated-tiny", model, token=TOKEN, gated=True)
    pickled = {k: v for k, v in model.items() if k != "model.safetensors"}
    server.add_repo("org/pickle-only", {**pickled, "pytorch_model.bin": b"\x80\x02pickle"})
    # A listing with a file name that would be written outside the download directory.
    server.add_repo("org/escaping", {**model, "../../escape.json": b"{}"})
    gguf = smollm2_gguf()
    server.add_repo("org/smollm2-gguf", {"README.md": b"# gguf\n", gguf.name: gguf})
    with server.running():
        yield server


def hf_env(hub: HubServer, **more: str) -> dict[str, str]:
    """What the operator sets on the pods of an hf:// job (HF_TOKEN from tokenSecretRef)."""
    return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, **more}


def config(bucket: str, model_uri: str, train: str, out: str, epochs: int = 1) -> dict[str, Any]:
    return lora_config(
        bucket,
        model_uri,
        train,
        out,
        validation_split="0.25",
        epochs=epochs,
        batch_size=6,
        keep=1,
        max_examples=4,
    )


@dataclass
class Case:
    """One test's Hub, bucket (with a small chat dataset) and scratch space."""

    hub: HubServer
    s3_env: dict[str, str]
    bucket: str
    train: str
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch

    def validate(self, uri: str, **env: str) -> TrainerRun:
        cfg = write_config(self.tmp_path / "config.json", config(self.bucket, uri, self.train, "v"))
        return run_in_process(
            "validate",
            cfg,
            self.s3_env,
            self.tmp_path / "scratch",
            self.monkeypatch,
            extra_env=hf_env(self.hub, **env),
        )

    def report(self, key: str = "v/reports/validation.json") -> Any:
        return get_json(s3_client(self.s3_env), self.bucket, key)


@pytest.fixture
def case(
    hub: HubServer, s3_env: dict[str, str], s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Case:
    train = put_jsonl(s3_client(s3_env), s3_bucket, "data/train.jsonl", chat_rows(24))
    return Case(hub, s3_env, s3_bucket, train, tmp_path, monkeypatch)


def test_train_from_the_hub_through_the_endpoint(case: Case) -> None:
    """hf://org/tiny@<commit> through HF_ENDPOINT -> an adapter on S3; only the model's files move."""
    hub = case.hub
    commit = hub.repos["org/tiny"].commit
    uri = f"hf://org/tiny@{commit}"
    cfg = write_config(case.tmp_path / "config.json", config(case.bucket, uri, case.train, "hub", epochs=2))
    before = len(hub.requests)

    run = run_trainer("train", cfg, case.s3_env, case.tmp_path / "scratch", extra_env=hf_env(hub))

    assert run.returncode == 0, run.stderr[-3000:]
    assert run.termination["result"] == "Succeeded"
    assert run.termination["step"] == run.termination["totalSteps"] == 6  # 18 rows / 6 * 2 epochs
    assert f"org/tiny revision {commit} is commit {commit}" in run.stderr
    # Each model file once, nothing else: no README, no pickles, no subfolders.
    assert sorted(hub.downloads("org/tiny", before)) == sorted(MODEL_FILES)
    assert all(f"/resolve/{commit}/" in r.path for r in hub.requests[before:] if "/resolve/" in r.path)
    assert all(r.authorization is None for r in hub.requests[before:])  # no token was configured

    keys = set(list_keys(s3_client(case.s3_env), case.bucket, "hub/"))
    assert {"hub/adapter/adapter_model.safetensors", "hub/adapter/adapter_config.json"} <= keys
    assert case.report("hub/adapter/adapter_config.json")["base_model_name_or_path"] == uri
    assert case.report("hub/reports/validation.json")["baseModel"]["loadable"] is True


def test_validate_checks_the_repository_without_downloading_weights(case: Case) -> None:
    hub = case.hub
    before = len(hub.requests)
    run = case.validate("hf://org/tiny@v1.0")

    assert run.returncode == 0, run.termination
    report = case.report()
    assert report["baseModel"]["uri"] == "hf://org/tiny@v1.0"
    assert report["baseModel"]["loadable"] is True
    assert report["baseModel"]["architecture"] == "LlamaForCausalLM"
    requests = hub.requests[before:]
    assert sorted(hub.downloads("org/tiny", before)) == sorted(MODEL_FILES - {"model.safetensors"})
    weights = [r for r in requests if r.path.endswith("/model.safetensors") and r.method == "GET"]
    assert weights, "the safetensors header was not read"
    assert all(r.range is not None and r.range.startswith("bytes=0-") for r in weights)
    assert not [r for r in requests if r.path.endswith((".bin", ".pth", ".onnx", "README.md"))]
    assert not (case.tmp_path / "scratch" / "model" / "model.safetensors").exists()
    # The process (tokenizer, config, everything after the download) is offline again.
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is True


@pytest.mark.parametrize(
    ("uri", "env", "needle", "reason"),
    [
        ("hf://org/no-such-model", {}, "no repository org/no-such-model on ", "InvalidModel"),
        ("hf://org/tiny@v9", {}, "org/tiny on {url} has no revision 'v9'", "InvalidModel"),
        (
            "hf://org/private-tiny",
            {},
            "set baseModel.tokenSecretRef to a Secret with a read token",
            "InvalidModel",
        ),
        (
            "hf://org/private-tiny",
            {"HF_TOKEN": "hf_wrong"},
            "access denied: org/private-tiny on {url} rejected",
            "AccessDenied",
        ),
        ("hf://org/gated-tiny", {}, "access denied: org/gated-tiny on {url} is gated", "AccessDenied"),
        ("hf://org/gated-tiny", {"HF_TOKEN": "hf_wrong"}, "org/gated-tiny on {url} is gated", "AccessDenied"),
        (
            "hf://org/pickle-only",
            {},
            "org/pickle-only at revision main has only pickle weights",
            "InvalidModel",
        ),
        (
            "hf://org/smollm2-gguf",
            {},
            "only GGUF files; name one of them: hf://org/smollm2-gguf@main/",
            "InvalidModel",
        ),
        (
            "hf://org/tiny/missing.gguf",
            {},
            "org/tiny at revision main has no file missing.gguf",
            "InvalidModel",
        ),
        (
            "hf://org/escaping",
            {},
            "org/escaping lists files whose names leave the repository (../../escape.json)",
            "InvalidModel",
        ),
    ],
    ids=[
        "missing-repo",
        "missing-revision",
        "private-no-token",
        "private-wrong-token",
        "gated-no-token",
        "gated-not-granted",
        "pickle-only",
        "gguf-only",
        "missing-file",
        "escaping-name",
    ],
)
def test_hub_problems_are_permanent_and_say_what_to_do(
    case: Case, uri: str, env: dict[str, str], needle: str, reason: str
) -> None:
    hub = case.hub
    before = len(hub.requests)
    run = case.validate(uri, **env)

    assert run.returncode == 42, run.termination
    # The trainer states the reason itself (typed); the operator copies it.
    assert run.termination["reason"] == reason
    assert run.termination["file"] == "baseModel"
    message = run.termination["message"]
    assert message.startswith(f"invalid input: baseModel: baseModel.uri {uri}: "), message
    assert needle.format(url=hub.url) in message
    assert "hf_wrong" not in message
    # What the operator makes of it: a permanent failure with the reason a user can act on.
    failure = classify_exit(42, parse_summary(json.dumps(run.termination)))
    assert (failure.permanent, failure.reason) == (True, reason)
    assert case.report()["baseModel"] == {"uri": uri, "loadable": False}
    # Refused before any weights moved.
    assert not [r for r in hub.requests[before:] if r.path.endswith((".bin", ".safetensors", ".gguf"))]


@pytest.mark.parametrize("repo", ["org/private-tiny", "org/gated-tiny"])
def test_a_token_opens_private_and_gated_repositories(case: Case, repo: str) -> None:
    hub = case.hub
    before = len(hub.requests)
    run = case.validate(f"hf://{repo}", HF_TOKEN=TOKEN)

    assert run.returncode == 0, run.termination
    requests = hub.requests[before:]
    assert requests
    assert {r.authorization for r in requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in json.dumps(case.report()) + json.dumps(run.termination)


def test_one_gguf_file_of_a_repository(case: Case) -> None:
    name = smollm2_gguf().name
    before = len(case.hub.requests)
    run = case.validate(f"hf://org/smollm2-gguf@main/{name}")

    assert run.returncode == 0, run.termination
    report = case.report()
    assert report["baseModel"]["format"] == "gguf"
    assert report["baseModel"]["architecture"] == "llama"
    assert case.hub.downloads("org/smollm2-gguf", before) == [name]


def test_unreachable_hub_is_transient(case: Case) -> None:
    run = case.validate("hf://org/tiny", HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens there

    assert run.returncode == 75, run.termination
    assert run.termination["reason"] == "TransientError"
    assert "http://127.0.0.1:9" in run.termination["message"]


def test_an_offline_pod_never_reaches_the_hub(case: Case) -> None:
    hub = case.hub
    before = len(hub.requests)
    run = case.validate("hf://org/tiny", HF_HUB_OFFLINE="1")

    assert run.returncode == 42, run.termination
    assert "this pod is offline (HF_HUB_OFFLINE=1)" in run.termination["message"]
    assert hub.requests[before:] == []
