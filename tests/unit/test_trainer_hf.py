"""hf:// base models in the trainer: URI parsing (the same language as the CRD), the trainer config,
the settings behind HF_ENDPOINT, and which files of a repository are fetched (pure functions; the
downloads themselves run against a local Hub in tests/integration/test_trainer_hf.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from finetune_contract.config import TrainerBaseModel as BaseModelSpec
from finetune_contract.uris import HF_URI, HfUri, parse_hf_uri
from finetune_operator.settings import OperatorSettings
from finetune_trainer.exitcodes import InvalidInputError
from finetune_trainer.hf_hub import small_files, weight_files
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"

GOOD = [
    ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", HfUri("HuggingFaceTB/SmolLM2-135M-Instruct")),
    (f"hf://org/tiny@{COMMIT}", HfUri("org/tiny", COMMIT)),
    ("hf://meta-llama/Llama-3.1-8B@v1.0", HfUri("meta-llama/Llama-3.1-8B", "v1.0")),
    ("hf://org/tiny@refs/pr/12", HfUri("org/tiny", "refs/pr/12")),
    ("hf://org/tiny-GGUF/tiny.Q4_K_M.gguf", HfUri("org/tiny-GGUF", None, "tiny.Q4_K_M.gguf")),
    ("hf://org/tiny-GGUF@main/q4/tiny.Q4_K_M.gguf", HfUri("org/tiny-GGUF", "main", "q4/tiny.Q4_K_M.gguf")),
    ("hf://org/tiny@refs/pr/3/x.gguf", HfUri("org/tiny", "refs/pr/3", "x.gguf")),
    ("hf://o/m_", HfUri("o/m_")),
]
BAD = [
    "hf://HuggingFaceTB",  # no name
    "hf://org/tiny@feature/x",  # a branch with "/" cannot be told from a path
    "hf://org/tiny/model.safetensors",  # only one .gguf file may be named
    "hf://org/tiny@main/",  # empty path
    "hf://org/tiny/sub/.hidden.gguf",  # hidden or "." segment
    "hf://org/tiny/./x.gguf",
    "hf://org/tiny/x.GGUF",  # lowercase .gguf, like s3://
    "hf://org--team/tiny",  # the Hub's name rules
    "hf://org/tiny-",
    "hf://.org/tiny",
    "hf://org/ti..ny",
    "hf://org/tiny@",
    "hf://org/tiny@a b",
    "https://huggingface.co/org/tiny",
]


@pytest.mark.parametrize(("uri", "parsed"), GOOD, ids=[u for u, _ in GOOD])
def test_parse(uri: str, parsed: HfUri) -> None:
    assert parse_hf_uri(uri) == parsed
    assert str(parsed) == uri
    assert re.fullmatch(HF_URI, uri), "the CRD would refuse what the trainer accepts"
    assert BaseModelSpec(uri=uri).uri == uri


@pytest.mark.parametrize("uri", BAD)
def test_refused_everywhere(uri: str) -> None:
    with pytest.raises(ValueError, match="hf://<org>/<name>"):
        parse_hf_uri(uri)
    with pytest.raises(ValidationError):
        BaseModelSpec(uri=uri)
    assert ".." in uri or not re.fullmatch(HF_URI, uri), "the CRD would accept what the trainer refuses"


def test_default_revision_is_main() -> None:
    assert parse_hf_uri("hf://org/tiny").ref == "main"
    assert parse_hf_uri("hf://org/tiny@v2").ref == "v2"


def test_crd_checks_the_same_pattern() -> None:
    crd = (ROOT / "crds" / "finetune.dev_finetunejobs.yaml").read_text()
    assert f"self.matches(r'{HF_URI}')" in crd
    doc = yaml.safe_load(crd)
    base = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "baseModel"
    ]
    assert base["properties"]["tokenSecretRef"]["properties"]["key"]["default"] == "HF_TOKEN"
    assert any(
        "tokenSecretRef" in r["rule"] and "hf://" in r["rule"] for r in base["x-kubernetes-validations"]
    )


# --- which files ---------------------------------------------------------------------------------

SRC = HfUri("org/m")
MODEL = [
    ".gitattributes",
    "README.md",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "additional_chat_templates/tool_use.jinja",
    "model.safetensors",
    "pytorch_model.bin",
    "original/consolidated.pth",
    "original/params.json",
    "onnx/model.onnx",
]


def test_small_files_are_the_top_level_config_tokenizer_and_templates() -> None:
    assert small_files(SRC, MODEL) == [
        "additional_chat_templates/tool_use.jinja",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert weight_files(SRC, MODEL, None) == ["model.safetensors"]


def test_sharded_weights_come_from_the_index() -> None:
    names = [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "consolidated.safetensors",  # a second copy in another layout (Mistral): never fetched
    ]
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors",
        }
    }
    assert "model.safetensors.index.json" in small_files(SRC, names)
    assert weight_files(SRC, names, index) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    with pytest.raises(InvalidInputError, match=r"model-00003-of-00003\.safetensors"):
        weight_files(SRC, names, {"weight_map": {"a": "model-00003-of-00003.safetensors"}})
    with pytest.raises(InvalidInputError, match="weight_map"):
        weight_files(SRC, names, {"metadata": {}})


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["config.json", "pytorch_model.bin", "tokenizer.json"], "only pickle weights (pytorch_model.bin)"),
        (["README.md", "m.Q4_K_M.gguf", "m.Q8_0.gguf"], "name one of them: hf://org/m@main/m.Q4_K_M.gguf"),
        (["adapter_config.json", "adapter_model.safetensors"], "has no config.json"),
        (["config.json", "tokenizer.json"], "has no .safetensors weights"),
        (["config.json", "original/model.safetensors"], "has no .safetensors weights"),
    ],
    ids=["pickle-only", "gguf-only", "adapter", "no-weights", "weights-in-a-subfolder"],
)
def test_repositories_that_cannot_be_a_base_model(names: list[str], message: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(message)) as err:
        small_files(SRC, names)
    assert str(err.value).startswith("baseModel.uri hf://org/m: org/m at revision main ")


def test_safetensors_without_model_file_or_index() -> None:
    names = ["config.json", "consolidated.safetensors"]
    small_files(SRC, names)
    with pytest.raises(InvalidInputError, match=r"neither model\.safetensors nor"):
        weight_files(SRC, names, None)


# --- the operator's Hub endpoint -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("", ""),
        ("https://hf-mirror.internal/", "https://hf-mirror.internal"),
        ("http://10.0.0.5:8080/hf", "http://10.0.0.5:8080/hf"),
    ],
)
def test_hub_endpoint_setting(raw: str, value: str) -> None:
    assert OperatorSettings.from_env({"FTO_HF_ENDPOINT": raw}).hf_endpoint == value


@pytest.mark.parametrize(
    "raw", ["hf-mirror.internal", "ftp://mirror", "https://u:p@mirror", "https://m/?x=1"]
)
def test_bad_hub_endpoint_stops_the_operator(raw: str) -> None:
    with pytest.raises(ValueError, match="FTO_HF_ENDPOINT"):
        OperatorSettings.from_env({"FTO_HF_ENDPOINT": raw})
