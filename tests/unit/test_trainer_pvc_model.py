"""A pvc:// base model on the trainer's side: where the URI points in the pod, and the checks that a
mounted directory or .gguf file is a model, used in place (nothing copied, no S3 call)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from finetune_contract.config import TrainerBaseModel as BaseModelSpec
from finetune_contract.config import TrainerConfig
from finetune_contract.uris import PVC_MOUNT_PATH, parse_pvc_uri
from finetune_trainer.exitcodes import InvalidInputError
from finetune_trainer.model_loading import check_loadable, fetch_model, local_model
from finetune_trainer.s3io import S3
from pydantic import ValidationError
from safetensors.numpy import save_file


@pytest.mark.parametrize(
    ("uri", "claim", "path"),
    [
        ("pvc://models", "models", ""),
        ("pvc://models/", "models", ""),
        ("pvc://models/smollm2", "models", "smollm2"),
        ("pvc://models/smollm2/", "models", "smollm2"),
        ("pvc://m-1/a/b/model.Q4_1.gguf", "m-1", "a/b/model.Q4_1.gguf"),
    ],
)
def test_pvc_uris_map_to_the_mount(uri: str, claim: str, path: str) -> None:
    assert parse_pvc_uri(uri) == (claim, path)
    spec = BaseModelSpec(uri=uri)
    assert spec.local_path == (Path(PVC_MOUNT_PATH) / path if path else Path(PVC_MOUNT_PATH))
    assert BaseModelSpec.model_validate({"uri": uri, "mountPath": "/elsewhere"}).local_path == (
        Path("/elsewhere", path) if path else Path("/elsewhere")
    )


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("pvc://Models/x", "baseModel.uri must be"),
        ("pvc:///x", "baseModel.uri must be"),
        ("pvc://m/../etc", "baseModel.uri must be"),
        ("pvc://m/./x", "'.'"),
        ("pvc://m//x", "empty"),
        # a single file of a model directory is refused by the config, as by the CRD at apply time
        ("pvc://models/llm/tiny/tokenizer.json", "on a PVC must be the model directory or one .gguf file"),
        ("file:///models/x", "baseModel.uri must be"),
    ],
)
def test_bad_pvc_uris_are_refused(uri: str, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        BaseModelSpec(uri=uri)


def test_mount_path_must_be_absolute_and_s3_models_have_no_local_path() -> None:
    with pytest.raises(ValidationError, match="absolute"):
        BaseModelSpec.model_validate({"uri": "pvc://m/x", "mountPath": "mnt"})
    cfg = TrainerConfig.model_validate(
        {
            "baseModel": {"uri": "s3://models/m/"},
            "dataset": {"train": "s3://data/t.jsonl"},
            "output": {"uri": "s3://out/x/"},
        }
    )
    assert cfg.base_model.local_path is None


def hf_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    save_file({"w": np.zeros((2, 3), dtype=np.float32)}, str(root / "model.safetensors"))
    return root


def test_a_mounted_hf_directory_is_used_in_place(tmp_path: Path) -> None:
    model_dir = hf_dir(tmp_path / "mnt" / "smollm2")
    before = sorted(p.name for p in model_dir.iterdir())
    model = local_model(model_dir, "pvc://models/smollm2")
    assert model.directory == model_dir
    assert model.gguf_file is None
    assert check_loadable(model) == {"format": "hf", "architecture": "LlamaForCausalLM", "tensors": 1}
    assert sorted(p.name for p in model_dir.iterdir()) == before
    # What the operator sizes the trainer's scratch from: the weight files' bytes.
    assert model.weight_bytes == (model_dir / "model.safetensors").stat().st_size


def test_fetch_model_resolves_pvc_under_the_mount_without_s3_or_copies(tmp_path: Path) -> None:
    hf_dir(tmp_path / "mnt" / "llm" / "tiny")
    dest = tmp_path / "scratch" / "model"
    # Nothing listens on port 9: any S3 call would fail.
    s3 = S3("http://127.0.0.1:9", "us-east-1", attempts=1)
    source = BaseModelSpec(uri="pvc://models/llm/tiny", mount_path=str(tmp_path / "mnt"))
    model = fetch_model(s3, source, dest, weights=True)
    assert model.directory == tmp_path / "mnt" / "llm" / "tiny"
    assert not dest.exists()


def test_a_mounted_gguf_file(tmp_path: Path) -> None:
    gguf = tmp_path / "smollm2.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 16)
    model = local_model(gguf, "pvc://models/smollm2.Q4_1.gguf")
    assert (model.directory, model.gguf_file) == (tmp_path, "smollm2.Q4_1.gguf")
    assert model.kwargs == {"gguf_file": "smollm2.Q4_1.gguf"}
    assert model.weight_bytes == 24


@pytest.mark.parametrize(
    ("layout", "target", "needle"),
    [
        ({}, "absent", "does not exist"),
        ({"README.md": b"hello"}, "", "has no config.json"),
        ({"model.Q8_0.gguf": b"GGUF...."}, "", "point baseModel.uri at that file"),
        ({"config.json": b"{}", "pytorch_model.bin": b"x"}, "", "no .safetensors weights"),
        ({"config.json": b"{}", "model.safetensors": b"not a safetensors file"}, "", "model.safetensors"),
        ({"weights.bin": b"x"}, "weights.bin", "not a .gguf file"),
        ({"model.gguf": b"PK\x03\x04 a zip"}, "model.gguf", "not a GGUF file"),
    ],
    ids=["missing", "no-config", "gguf-in-dir", "pickle-only", "bad-safetensors", "other-file", "bad-gguf"],
)
def test_what_is_not_a_model_is_invalid_input_naming_the_path(
    tmp_path: Path, layout: dict[str, bytes], target: str, needle: str
) -> None:
    root = tmp_path / "mnt"
    root.mkdir()
    for name, data in layout.items():
        (root / name).write_bytes(data)
    path = root / target if target else root
    with pytest.raises(InvalidInputError, match=needle) as err:
        local_model(path, "pvc://models/x")
    assert str(path) in str(err.value)
    assert "pvc://models/x" in str(err.value)
    assert err.value.exit_code == 42


def test_symlinks_out_of_the_claim_or_the_model_directory_are_refused(tmp_path: Path) -> None:
    claim = tmp_path / "mnt"
    secret = tmp_path / "elsewhere"
    hf_dir(secret / "model")
    (secret / "token").write_text("not the trainer's to read")
    # The model path itself links out of the claim.
    claim.mkdir()
    (claim / "linked").symlink_to(secret / "model")
    with pytest.raises(InvalidInputError, match="outside the claim"):
        local_model(claim / "linked", "pvc://models/linked", root=claim)
    # A file of the model links out of the model directory.
    model = hf_dir(claim / "model")
    (model / "tokenizer.json").symlink_to(secret / "token")
    with pytest.raises(InvalidInputError, match=r"tokenizer\.json link outside the model directory"):
        local_model(model, "pvc://models/model", root=claim)
    # Links inside the model directory are fine (sharded layouts use them).
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(model / "config.json")
    assert local_model(model, "pvc://models/model", root=claim).directory == model
