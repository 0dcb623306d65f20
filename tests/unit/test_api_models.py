"""The pydantic models of the FineTuneJob API: they parse the examples, agree with the CRD field by
field and default by default, and refuse what the CRD's rules refuse."""

from __future__ import annotations

import copy
import subprocess
import sys
import typing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator import names
from finetune_operator.api import (
    Condition,
    ConditionStatus,
    ConditionType,
    FineTuneJobSpec,
    FineTuneJobStatus,
    LoRA,
    LRScheduler,
    MethodType,
    Phase,
    Reason,
    Toleration,
    derive_phase,
    format_eta,
    set_condition,
)
from finetune_operator.api.spec import FLOAT_STRING_PATTERN, quantity_value
from pydantic import BaseModel, ValidationError

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "finetune.dev_finetunejobs.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "baseModel": {"uri": "s3://models/smollm2-135m-instruct/"},
    "dataset": {"train": "s3://datasets/demo/train.jsonl"},
    "output": {"uri": "s3://adapters/demo/run-1/"},
    "storage": {"credentialsSecretRef": {"name": "s3-credentials"}},
}


def finetunejobs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "FineTuneJob"]


def with_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """MINIMAL with dotted paths set (None deletes)."""
    spec = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


# --- examples -------------------------------------------------------------------------------------


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"finetunejob.yaml", "finetunejob-full.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    jobs = finetunejobs(path)
    assert jobs
    for job in jobs:
        names.check_job_name(job["metadata"]["name"])
        FineTuneJobSpec.model_validate(job["spec"])


def test_full_example_sets_every_spec_field() -> None:
    (job,) = finetunejobs(ROOT / "examples" / "finetunejob-full.yaml")

    def missing(schema: dict[str, Any], value: Any, path: str) -> list[str]:
        out = []
        for name, child in schema.get("properties", {}).items():
            if name not in value:
                # dataset.validation excludes validationSplit, which the example uses; tokenSecretRef is
                # for hf:// models only (the example shows it in a comment).
                if f"{path}.{name}" not in ("spec.dataset.validation", "spec.baseModel.tokenSecretRef"):
                    out.append(f"{path}.{name}")
            elif child.get("type") == "object" and "properties" in child:
                out += missing(child, value[name], f"{path}.{name}")
        return out

    assert missing(SCHEMA["properties"]["spec"], job["spec"], "spec") == []


# --- the models and the CRD agree -----------------------------------------------------------------


def model_types(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (through Optional, Annotated, list, dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in model_types(arg)]


def model_tree(model: type[BaseModel]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        alias = field.alias or name
        nested = model_types(field.annotation)
        tree[alias] = model_tree(nested[0]) if nested else None
    return tree


def schema_tree(schema: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, child in schema.get("properties", {}).items():
        node = child["items"] if child.get("type") == "array" else child
        tree[name] = schema_tree(node) if "properties" in node else None
    return tree


def diff(a: dict[str, Any], b: dict[str, Any], path: str = "") -> list[str]:
    out = [f"{path}.{k} only in the CRD" for k in a.keys() - b.keys()]
    out += [f"{path}.{k} only in the model" for k in b.keys() - a.keys()]
    for key in a.keys() & b.keys():
        if isinstance(a[key], dict) or isinstance(b[key], dict):
            out += diff(a[key] or {}, b[key] or {}, f"{path}.{key}")
    return out


def test_spec_model_matches_crd() -> None:
    assert diff(schema_tree(SCHEMA["properties"]["spec"]), model_tree(FineTuneJobSpec), "spec") == []


def test_status_model_matches_crd() -> None:
    assert diff(schema_tree(SCHEMA["properties"]["status"]), model_tree(FineTuneJobStatus), "status") == []


def test_enums_match_crd() -> None:
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert spec["method"]["properties"]["type"]["enum"] == [m.value for m in MethodType]
    assert spec["hyperparameters"]["properties"]["lrScheduler"]["enum"] == [s.value for s in LRScheduler]
    assert SCHEMA["properties"]["status"]["properties"]["phase"]["enum"] == [p.value for p in Phase]


def same(schema: dict[str, Any], crd_default: Any, model_value: Any) -> bool:
    if schema.get("pattern") == FLOAT_STRING_PATTERN:
        return float(crd_default) == float(model_value)
    return bool(crd_default == model_value)


def default_mismatches(schema: dict[str, Any], dumped: dict[str, Any], path: str) -> list[str]:
    out = []
    for name, child in schema.get("properties", {}).items():
        if (
            "default" in child
            and child["default"] != {}
            and not same(child, child["default"], dumped.get(name))
        ):
            out.append(f"{path}.{name}: CRD {child['default']!r}, model {dumped.get(name)!r}")
        if isinstance(dumped.get(name), dict):
            out += default_mismatches(child, dumped[name], f"{path}.{name}")
    return out


def test_model_defaults_match_crd_defaults() -> None:
    spec_schema = SCHEMA["properties"]["spec"]
    dumped = FineTuneJobSpec.model_validate(MINIMAL).model_dump(mode="json")
    assert default_mismatches(spec_schema, dumped, "spec") == []
    lora_schema = spec_schema["properties"]["method"]["properties"]["lora"]
    assert default_mismatches(lora_schema, LoRA().model_dump(mode="json"), "spec.method.lora") == []
    toleration_schema = spec_schema["properties"]["resources"]["properties"]["tolerations"]["items"]
    dumped_toleration = Toleration(key="k").model_dump(mode="json")
    assert default_mismatches(toleration_schema, dumped_toleration, "tolerations[]") == []


# --- parsing --------------------------------------------------------------------------------------


def test_defaults_and_typed_values() -> None:
    spec = FineTuneJobSpec.model_validate(MINIMAL)
    assert spec.method.type is MethodType.LORA
    assert spec.method.effective_lora == LoRA(r=16, alpha=32, dropout=0.05, target_modules=["all-linear"])
    assert spec.hyperparameters.learning_rate is None  # automatic: resolved during validation
    assert spec.hyperparameters.lr_scheduler.transformers_name == "cosine"
    assert LRScheduler.COSINE_WITH_RESTARTS.transformers_name == "cosine_with_restarts"
    assert spec.dataset.validation_split is None
    assert spec.resources.gpus == 1
    assert spec.resources.total_gpus == 1
    assert spec.output.prefix == "s3://adapters/demo/run-1/"
    assert spec.suspend is False
    assert spec.budget is None


def test_float_and_decimal_strings() -> None:
    spec = FineTuneJobSpec.model_validate(
        with_changes(
            {
                "hyperparameters.learningRate": "1.5E-5",
                "dataset.validationSplit": "0.25",
                "budget": {"maxCost": "12.50", "maxGPUHours": "10"},
            }
        )
    )
    assert spec.hyperparameters.learning_rate == pytest.approx(1.5e-5)
    assert spec.dataset.validation_split == pytest.approx(0.25)
    assert spec.budget is not None
    assert spec.budget.max_cost == Decimal("12.50")
    dumped = spec.model_dump(mode="json", exclude_none=True)
    # Values come back as strings, so a dumped spec is valid input for the CRD again.
    assert dumped["budget"] == {"maxCost": "12.50", "maxGPUHours": "10"}
    assert float(dumped["hyperparameters"]["learningRate"]) == pytest.approx(1.5e-5)
    assert FineTuneJobSpec.model_validate(dumped) == spec


def test_quantities_accept_int_or_string() -> None:
    spec = FineTuneJobSpec.model_validate(with_changes({"resources.cpu": 8, "resources.memory": "64Gi"}))
    assert (spec.resources.cpu, spec.resources.memory) == ("8", "64Gi")
    assert quantity_value("64Gi") == 64 * 1024**3
    assert quantity_value("500m") == Decimal("0.5")
    assert quantity_value("1e9") == quantity_value("1G") == 10**9
    assert quantity_value("1E") == 10**18


def test_python_names_work_too() -> None:
    spec = FineTuneJobSpec(
        base_model={"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},  # type: ignore[arg-type]
        dataset={"train": "s3://datasets/demo/train.jsonl"},  # type: ignore[arg-type]
        output={"uri": "s3://adapters/demo/run-1"},  # type: ignore[arg-type]
        storage={"credentials_secret_ref": {"name": "s3"}},  # type: ignore[arg-type]
    )
    assert spec.base_model.scheme == "hf"
    assert spec.output.prefix == "s3://adapters/demo/run-1/"


def test_hub_token_key_defaults_to_hf_token() -> None:
    spec = FineTuneJobSpec.model_validate(
        with_changes({"baseModel.uri": "hf://org/m@v1", "baseModel.tokenSecretRef": {"name": "hf-token"}})
    )
    assert spec.base_model.token_secret_ref is not None
    assert spec.base_model.token_secret_ref.key == "HF_TOKEN"
    assert spec.model_dump(mode="json", exclude_none=True)["baseModel"] == {
        "uri": "hf://org/m@v1",
        "tokenSecretRef": {"name": "hf-token", "key": "HF_TOKEN"},
    }


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"baseModel.uri": "gs://models/x/"}, "baseModel.uri"),
        ({"baseModel.uri": "s3://models/../x/"}, "baseModel.uri"),
        ({"dataset.train": "s3://datasets/demo/"}, "dataset.train"),
        ({"dataset.train": "https://example.com/train.jsonl"}, "dataset.train"),
        ({"output.uri": "s3://adapters/"}, "output.uri"),
        ({"output.uri": "pvc://claim/out/"}, "output.uri"),
        ({"dataset.validation": "s3://datasets/demo/val.jsonl", "dataset.validationSplit": "0.1"}, "exclude"),
        ({"dataset.validation": "s3://datasets/demo/train.jsonl"}, "differ"),
        ({"dataset.validationSplit": "0.6"}, "validationSplit"),
        ({"hyperparameters.learningRate": "1.5"}, "learningRate"),
        ({"hyperparameters.learningRate": "2e-4x"}, "learningRate"),
        ({"hyperparameters.warmupRatio": "1"}, "warmupRatio"),
        ({"hyperparameters.epochs": 0}, "epochs"),
        ({"method": {"type": "qlora"}, "resources.gpus": 0}, "qlora"),
        ({"method": {"type": "full", "lora": {"r": 8}}}, "method.lora"),
        ({"method": {"type": "lora", "lora": {"dropout": "1.0"}}}, "dropout"),
        ({"method": {"type": "lora", "lora": {"targetModules": ["all-linear", "q_proj"]}}}, "all-linear"),
        ({"method": {"type": "lora", "lora": {"targetModules": ["q_proj", "q_proj"]}}}, "repeat"),
        ({"resources.nodes": 2, "resources.gpus": 0}, "nodes"),
        ({"resources.gpuType": "NVIDIA-A100", "resources.gpus": 0}, "gpuType"),
        ({"resources.memory": "64 GB"}, "memory"),
        ({"resources.memory": "0Gi"}, "memory"),
        ({"resources.cpu": 0}, "cpu"),
        ({"resources.nodeSelector": {"bad key!": "v"}}, "nodeSelector"),
        ({"resources.tolerations": [{"operator": "Exists", "key": "k", "value": "v"}]}, "Exists"),
        ({"resources.tolerations": [{"key": "k", "tolerationSeconds": 5}]}, "NoExecute"),
        ({"output.uri": "s3://datasets/demo/"}, "dataset"),
        ({"output.uri": "s3://models/smollm2-135m-instruct/out/"}, "baseModel"),
        ({"output.uri": "s3://models/smollm2-135m-instruct"}, "baseModel"),
        ({"baseModel.uri": "s3://models/team/base.gguf", "output.uri": "s3://models/team/"}, "baseModel"),
        ({"budget": {}}, "budget"),
        ({"budget": {"maxCost": "0"}}, "maxCost"),
        ({"budget": {"maxCost": "$5"}}, "maxCost"),
        ({"storage.endpoint": "ftp://minio:9000"}, "endpoint"),
        ({"hyperparameters.learning_rate_typo": "1"}, "learning_rate_typo"),
        ({"hyperparameters.maxGradNorm": "0"}, "maxGradNorm"),
        ({"hyperparameters.gradualUnfreezing": True}, "gradualUnfreezing"),
        ({"method": {"type": "qlora"}, "hyperparameters.gradualUnfreezing": True}, "gradualUnfreezing"),
        ({"dataset.test": "s3://datasets/demo/train.jsonl"}, "dataset.test"),
        (
            {
                "dataset.validation": "s3://datasets/demo/val.jsonl",
                "dataset.test": "s3://datasets/demo/val.jsonl",
            },
            "dataset.test",
        ),
        ({"dataset.test": "s3://datasets/demo/"}, "dataset.test"),
        ({"dataset.test": "s3://adapters/demo/run-1/test.jsonl"}, "dataset"),
        ({"baseModel.uri": "s3://models/smollm2/model.safetensors"}, "baseModel.uri"),
        ({"baseModel.uri": "s3://models/smollm2-135m-instruct"}, "baseModel.uri"),
        ({"baseModel.uri": "pvc://models/smollm2/config.json"}, "baseModel.uri"),
        ({"baseModel.uri": "s3://models/*/"}, "wildcards"),
        ({"baseModel.uri": "hf://org/m@feature/x"}, "baseModel.uri"),
        ({"baseModel.uri": "hf://org--team/m"}, "baseModel.uri"),
        ({"baseModel.uri": "hf://org/m-"}, "baseModel.uri"),
        ({"baseModel.uri": "hf://org/m/model.safetensors"}, "baseModel.uri"),
        ({"baseModel.uri": "hf://org/m/sub/.hidden.gguf"}, "baseModel.uri"),
        ({"baseModel.tokenSecretRef": {"name": "hf-token"}}, "tokenSecretRef"),
        ({"baseModel.uri": "hf://org/m", "baseModel.tokenSecretRef": {"key": "token"}}, "name"),
        ({"baseModel.uri": "hf://org/m", "baseModel.tokenSecretRef": {"name": "hf", "key": "a b"}}, "key"),
        ({"baseModel.uri": "s3://models//smollm2/"}, "//"),
        ({"dataset.train": "s3://datasets/demo/train.csv"}, "JSONL"),
        ({"dataset.train": "s3://datasets/demo/train.jsonl.gz"}, "JSONL"),
        ({"dataset.train": "s3://datasets/demo/train.jsonl?versionId=3"}, "query"),
        ({"dataset.test": "s3://datasets//demo/test.jsonl"}, "//"),
        ({"output.uri": "s3://adapters/demo/adapter.safetensors"}, "not a file"),
        ({"output.uri": "s3://adapters/demo/*/"}, "wildcards"),
        ({"storage.endpoint": "http://minio:99999"}, "port"),
        ({"storage.endpoint": "http://minio:"}, "port"),
        ({"method": {"type": "lora", "lora": {"targetModules": ["all_linear"]}}}, "all-linear"),
        (
            {
                "method": {"type": "full"},
                "hyperparameters.gradualUnfreezing": True,
                "hyperparameters.epochs": 1,
            },
            "epochs",
        ),
        ({"resources.cpu": 8000}, "resources.cpu"),
        ({"resources.memory": 64}, "256Mi"),
        ({"resources.memory": "64K"}, "memory"),
        ({"resources.priorityClassName": "system-node-critical"}, "priorityClassName"),
        (
            {
                "resources.gpuType": "NVIDIA-A100",
                "resources.nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
            },
            "gpuType",
        ),
    ],
)
def test_invalid_specs_are_refused(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        FineTuneJobSpec.model_validate(with_changes(changes))
    assert needle in str(err.value)


def test_new_training_fields() -> None:
    spec = FineTuneJobSpec.model_validate(MINIMAL)
    assert spec.method.effective_lora is not None
    assert spec.method.effective_lora.rs_lora is True
    assert (spec.hyperparameters.max_grad_norm, spec.hyperparameters.gradual_unfreezing) == (1.0, False)
    assert spec.dataset.test is None
    full = FineTuneJobSpec.model_validate(
        with_changes(
            {
                "method": {"type": "full"},
                "hyperparameters.gradualUnfreezing": True,
                "hyperparameters.maxGradNorm": "0.3",
                "dataset.test": "s3://datasets/demo/test.jsonl",
            }
        )
    )
    assert full.hyperparameters.gradual_unfreezing is True
    assert full.hyperparameters.max_grad_norm == pytest.approx(0.3)
    assert full.dataset.test == "s3://datasets/demo/test.jsonl"
    # Off is fine with any method.
    FineTuneJobSpec.model_validate(with_changes({"hyperparameters.gradualUnfreezing": False}))


@pytest.mark.parametrize(
    "changes",
    [
        {"baseModel.uri": "s3://models/team/SmolLM2.Q4_1.gguf"},
        {"baseModel.uri": "pvc://models/smollm2"},
        {"baseModel.uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@refs/pr/12"},
        {"baseModel.uri": "hf://bartowski/SmolLM2-GGUF@main/q4/SmolLM2-135M-Instruct-Q4_K_M.gguf"},
        {"baseModel.uri": "hf://bartowski/SmolLM2-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf"},
        {"baseModel.uri": "hf://org/m", "baseModel.tokenSecretRef": {"name": "hf-token", "key": "token"}},
        {"dataset.train": "s3://datasets/demo/train.json"},
        {"dataset.train": "s3://datasets/demo/train-v1.2"},
        {"output.uri": "s3://adapters/demo/run-1.0/"},
        {"storage.endpoint": "http://[::1]:9000"},
        {"storage.endpoint": "https://s3.eu-central-1.amazonaws.com"},
        {"storage.endpoint": "http://127.0.0.1:65535/s3"},
        {"method": {"type": "lora", "lora": {"targetModules": ["allocator", "q_proj"]}}},
        {"method": {"type": "full"}, "hyperparameters.gradualUnfreezing": True, "hyperparameters.epochs": 2},
        {"resources.cpu": "1024", "resources.memory": "256Mi"},
        {"resources.cpu": "500m", "resources.memory": "300M"},
        {"resources.memory": "1e9"},
        {"resources.memory": "64000000k"},
        {
            "resources.gpuType": "NVIDIA-A100",
            "resources.nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100"},
        },
        {"resources.priorityClassName": "training-high"},
    ],
)
def test_valid_neighbours_of_refused_specs(changes: dict[str, Any]) -> None:
    FineTuneJobSpec.model_validate(with_changes(changes))


def test_dataset_file_inside_output_is_refused_but_neighbours_are_fine() -> None:
    FineTuneJobSpec.model_validate(with_changes({"output.uri": "s3://datasets/demo-out/"}))
    FineTuneJobSpec.model_validate(with_changes({"output.uri": "s3://models/smollm2-135m-instruct-tuned/"}))


# --- status, conditions, phase --------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def cond(type_: str, status: ConditionStatus, reason: str = "Because") -> Condition:
    return Condition(type=type_, status=status, reason=reason, message="", last_transition_time=T0)


TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


@pytest.mark.parametrize(
    ("conditions", "phase"),
    [
        ([], Phase.PENDING),
        ([cond("Validated", UNKNOWN)], Phase.VALIDATING),
        ([cond("Validated", TRUE)], Phase.QUEUED),
        ([cond("Validated", TRUE), cond("Admitted", TRUE), cond("Running", FALSE)], Phase.QUEUED),
        ([cond("Validated", TRUE), cond("Running", TRUE)], Phase.RUNNING),
        ([cond("Validated", TRUE), cond("Running", FALSE), cond("Suspended", TRUE)], Phase.SUSPENDED),
        ([cond("Validated", TRUE), cond("Running", TRUE), cond("Suspended", FALSE)], Phase.RUNNING),
        ([cond("Validated", FALSE), cond("Failed", TRUE)], Phase.FAILED),
        ([cond("Suspended", TRUE), cond("Failed", TRUE)], Phase.FAILED),
        ([cond("Running", FALSE), cond("Succeeded", TRUE)], Phase.SUCCEEDED),
    ],
)
def test_phase_is_derived_from_conditions(conditions: list[Condition], phase: Phase) -> None:
    assert derive_phase(conditions) is phase


def test_set_condition_moves_transition_time_only_on_change() -> None:
    later = T0 + timedelta(minutes=5)
    first = set_condition(
        [], ConditionType.RUNNING, FALSE, Reason.PENDING, "waiting", observed_generation=1, now=T0
    )
    same_status = set_condition(
        first, ConditionType.RUNNING, FALSE, Reason.UNSCHEDULABLE, "no GPU", observed_generation=2, now=later
    )
    (c,) = same_status
    assert (c.reason, c.last_transition_time, c.observed_generation) == ("Unschedulable", T0, 2)
    flipped = set_condition(
        same_status, ConditionType.RUNNING, TRUE, Reason.TRAINER_RUNNING, "", observed_generation=2, now=later
    )
    assert flipped[0].last_transition_time == later
    both = set_condition(
        flipped, ConditionType.VALIDATED, TRUE, Reason.INPUTS_VALID, "", observed_generation=2, now=later
    )
    assert [c.type for c in both] == ["Running", "Validated"]


def test_reasons_are_one_camelcase_word() -> None:
    for reason in Reason:
        assert reason.value.isalnum(), reason
        assert reason.value[0].isupper(), reason


def test_status_round_trip_uses_wire_names() -> None:
    status = FineTuneJobStatus.model_validate(
        {
            "phase": "Running",
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "TrainerRunning",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "progress": {"step": 10, "totalSteps": 100, "percent": 10, "etaSeconds": 4320, "eta": "1h12m"},
            "outputs": {"adapterURI": "s3://adapters/x/adapter/", "reportURI": "s3://adapters/x/reports/"},
            "usage": {"gpuSeconds": 60, "estimatedCost": "0.05"},
            "somethingNewer": {"ignored": True},
        }
    )
    patch = status.to_patch()
    assert patch["outputs"] == {
        "adapterURI": "s3://adapters/x/adapter/",
        "reportURI": "s3://adapters/x/reports/",
    }
    assert patch["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert patch["progress"]["totalSteps"] == 100
    assert "somethingNewer" not in patch


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h"),
        (4320, "1h12m"),
        (90000, "1d1h"),
        (86400, "1d"),
    ],
)
def test_format_eta(seconds: int | None, text: str) -> None:
    assert format_eta(seconds) == text


# --- names ----------------------------------------------------------------------------------------


def test_child_names_fit_for_the_longest_job_name() -> None:
    longest = "a" * names.MAX_NAME_LENGTH
    digest = names.spec_hash(MINIMAL)
    assert len(digest) == 8
    assert names.spec_hash(copy.deepcopy(MINIMAL)) == digest
    assert len(names.validation_pod_name(longest, digest)) <= 63
    assert len(names.validation_pod_name(longest, digest, names.MAX_VALIDATION_TRIES - 1)) <= 63
    assert len(names.trainer_job_name(longest, 999_999)) + len("-63") <= 63
    assert len(names.config_map_name(longest)) <= 63
    assert names.trainer_job_name("smollm2-facts", 1) == "smollm2-facts-train-a1"
    assert names.validation_pod_name("smollm2-facts", digest) == f"smollm2-facts-validate-{digest}"
    assert names.config_map_name("smollm2-facts") == "smollm2-facts-config"


def test_validation_tries_are_named_and_read_back() -> None:
    digest = names.spec_hash(MINIMAL)
    for try_ in (0, 1, 12, names.MAX_VALIDATION_TRIES - 1):
        assert names.validation_try(names.validation_pod_name("bot", digest, try_), "bot", digest) == try_
    other = names.spec_hash({"other": 1})
    for name in (
        names.validation_pod_name("bot", other, 1),  # another spec's
        names.validation_pod_name("bot-2", digest),  # another job's
        f"bot-validate-{digest}-r01",
        f"bot-validate-{digest}-rx",
        f"bot-validate-{digest}-r",
    ):
        assert names.validation_try(name, "bot", digest) is None
    with pytest.raises(ValueError, match="validation try"):
        names.validation_pod_name("bot", digest, names.MAX_VALIDATION_TRIES)


def test_crd_name_limit_is_the_names_limit() -> None:
    rules = [r["rule"] for r in SCHEMA["x-kubernetes-validations"]]
    assert f"self.metadata.name.size() <= {names.MAX_NAME_LENGTH}" in rules


@pytest.mark.parametrize("bad", ["a" * 41, "1job", "Job", "job-", "job_x", ""])
def test_bad_job_names(bad: str) -> None:
    with pytest.raises(ValueError, match="FineTuneJob name"):
        names.check_job_name(bad)


def test_bad_child_arguments() -> None:
    with pytest.raises(ValueError, match="attempt"):
        names.trainer_job_name("job", 0)
    with pytest.raises(ValueError, match="hash"):
        names.validation_pod_name("job", "XYZ")


def test_api_module_imports_without_kubernetes() -> None:
    # A fresh interpreter, so modules other tests imported do not count.
    code = (
        "import sys, finetune_operator.api, finetune_operator.names;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
