"""The CRD against the real API server: bad FineTuneJobs are refused at `kubectl apply`, with a message
that names the field; the examples are accepted; `kubectl explain` teaches; the printer columns show.

Every invalid case starts from the minimal example and changes one thing, so the refusal can only come
from that change. The cases cover each kind of mistake (missing, wrong type, out of range, bad enum,
bad URI, bad float string, bad quantity, too many items, too long, cross-field rule, unknown field,
bad name, change of an immutable field), not a list of fields.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import enforce_restricted, kubectl, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "finetune.dev_finetunejobs.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BASE: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "finetunejob.yaml").read_text())
DELETE = object()


@pytest.fixture(scope="module")
def crd(cluster: dict[str, str]) -> None:
    kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=finetune-tests", "-f", str(CRD_PATH)
    )
    kubectl("wait", "--for=condition=Established", "crd/finetunejobs.finetune.dev", "--timeout=60s")
    # The OpenAPI document that kubectl explain and field validation read is published a moment later.
    wait_for(lambda: kubectl("explain", "ftj.spec", check=False).returncode == 0, 60, "ftj in OpenAPI")


@pytest.fixture(scope="module")
def ns(crd: None) -> Iterator[str]:
    """One namespace for the whole table: the refused objects are never created, so the cases cannot
    disturb each other, and 70 namespace lifecycles would cost minutes on a small machine."""
    name = f"crd-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    enforce_restricted(name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def manifest(name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The minimal example named `name`, with dotted paths set (DELETE removes a key)."""
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = name
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return doc


def apply(doc: dict[str, Any], namespace: str, *extra: str) -> Any:
    # JSON, not YAML: a YAML writer may leave "0e0" unquoted, which the API server reads as a number.
    return kubectl("apply", "-n", namespace, *extra, "-f", "-", input=json.dumps(doc), check=False)


@dataclass(frozen=True)
class Case:
    id: str
    changes: dict[str, Any]
    field: str  # a substring of the field path in the error
    words: tuple[str, ...]  # words of the message

    def __str__(self) -> str:
        return self.id


S = "spec."
HP = "spec.hyperparameters."
RES = "spec.resources."
LORA = "spec.method.lora"
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

INVALID = [
    # missing required fields
    Case("no-spec", {"spec": DELETE}, "spec", ("Required",)),
    Case("no-base-model", {S + "baseModel": DELETE}, "spec.baseModel", ("Required",)),
    Case("no-train", {S + "dataset.train": DELETE}, "spec.dataset.train", ("Required",)),
    Case("no-output", {S + "output": DELETE}, "spec.output", ("Required",)),
    Case(
        "no-secret-ref", {S + "storage.credentialsSecretRef": DELETE}, "credentialsSecretRef", ("Required",)
    ),
    Case("early-stopping-no-patience", {HP + "earlyStopping": {}}, "earlyStopping.patience", ("Required",)),
    # wrong types
    Case("epochs-string", {HP + "epochs": "three"}, HP + "epochs", ("integer",)),
    Case("packing-string", {HP + "packing": "yes"}, HP + "packing", ("boolean",)),
    Case("lr-number", {HP + "learningRate": 0.0002}, HP + "learningRate", ("string",)),
    Case("tolerations-string", {RES + "tolerations": "none"}, RES + "tolerations", ("array",)),
    Case("suspend-string", {S + "suspend": "no"}, "spec.suspend", ("boolean",)),
    Case("method-string", {S + "method": "lora"}, "spec.method", ("object",)),
    Case("modules-not-list", {LORA: {"targetModules": "q_proj,v_proj"}}, "targetModules", ("array",)),
    Case("retries-not-object", {S + "retries": 3}, "spec.retries", ("object",)),
    Case("deadline-duration", {S + "activeDeadlineSeconds": "24h"}, "activeDeadlineSeconds", ("integer",)),
    Case("cpu-float", {RES + "cpu": 0.5}, RES + "cpu", ("integer,string",)),
    # out of range
    Case("epochs-zero", {HP + "epochs": 0}, HP + "epochs", ("greater than or equal to 1",)),
    Case("lora-r-huge", {LORA: {"r": 2048}}, LORA + ".r", ("less than or equal to 1024",)),
    Case("gpus-17", {RES + "gpus": 17}, RES + "gpus", ("less than or equal to 16",)),
    Case("nodes-zero", {RES + "nodes": 0}, RES + "nodes", ("greater than or equal to 1",)),
    Case(
        "keep-zero", {S + "checkpointing": {"keep": 0}}, "spec.checkpointing.keep", ("greater than or equal",)
    ),
    Case(
        "retries-negative", {S + "retries": {"limit": -1}}, "spec.retries.limit", ("greater than or equal",)
    ),
    Case("deadline-zero", {S + "activeDeadlineSeconds": 0}, "spec.activeDeadlineSeconds", ("greater than",)),
    Case("seq-length-tiny", {HP + "maxSeqLength": 8}, HP + "maxSeqLength", ("greater than or equal to 16",)),
    Case("lora-alpha-zero", {LORA: {"alpha": 0}}, LORA + ".alpha", ("greater than or equal to 1",)),
    Case("max-steps-zero", {HP + "maxSteps": 0}, HP + "maxSteps", ("greater than or equal to 1",)),
    Case(
        "patience-zero",
        {HP + "earlyStopping": {"patience": 0}},
        "earlyStopping.patience",
        ("greater than or equal to 1",),
    ),
    # bad enums
    Case(
        "method-unknown",
        {S + "method": {"type": "prefix-tuning"}},
        "spec.method.type",
        ("Unsupported value",),
    ),
    Case(
        "scheduler-underscore",
        {HP + "lrScheduler": "cosine_with_restarts"},
        HP + "lrScheduler",
        ("Unsupported",),
    ),
    Case("format-csv", {S + "dataset.format": "csv"}, "spec.dataset.format", ("Unsupported value",)),
    Case(
        "toleration-operator",
        {RES + "tolerations": [{"key": "a", "operator": "In"}]},
        "tolerations[0].operator",
        ("Unsupported value",),
    ),
    # bad URIs and schemes
    Case(
        "model-gcs", {S + "baseModel.uri": "gs://models/x/"}, "spec.baseModel.uri", ("baseModel.uri must be",)
    ),
    Case("model-hf-no-name", {S + "baseModel.uri": "hf://HuggingFaceTB"}, "spec.baseModel.uri", ("hf://",)),
    Case("model-pvc-bad-claim", {S + "baseModel.uri": "pvc://My_Claim/x"}, "spec.baseModel.uri", ("pvc://",)),
    Case(
        "train-https", {S + "dataset.train": "https://x.org/t.jsonl"}, "spec.dataset.train", ("only s3://",)
    ),
    Case(
        "train-prefix", {S + "dataset.train": "s3://datasets/demo/"}, "spec.dataset.train", ("JSONL object",)
    ),
    Case(
        "bucket-uppercase", {S + "dataset.train": "s3://Datasets/t.jsonl"}, "spec.dataset.train", ("bucket",)
    ),
    Case(
        "bucket-short", {S + "dataset.validation": "s3://ab/v.jsonl"}, "spec.dataset.validation", ("bucket",)
    ),
    Case("dot-dot", {S + "dataset.train": "s3://datasets/../t.jsonl"}, "spec.dataset.train", ('".."',)),
    Case("output-pvc", {S + "output.uri": "pvc://claim/out/"}, "spec.output.uri", ("only s3://",)),
    Case(
        "output-bucket-root", {S + "output.uri": "s3://adapters/"}, "spec.output.uri", ("non-empty prefix",)
    ),
    Case("endpoint-ftp", {S + "storage.endpoint": "ftp://minio:9000"}, "spec.storage.endpoint", ("http://",)),
    Case(
        "endpoint-no-scheme",
        {S + "storage.endpoint": "minio.storage:9000"},
        "spec.storage.endpoint",
        ("http://",),
    ),
    Case(
        "endpoint-port-range",
        {S + "storage.endpoint": "http://minio:99999"},
        "spec.storage.endpoint",
        ("port",),
    ),
    Case(
        "endpoint-empty-port", {S + "storage.endpoint": "http://minio:"}, "spec.storage.endpoint", ("port",)
    ),
    Case(
        "model-hub-web-url",
        {S + "baseModel.uri": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"},
        "spec.baseModel.uri",
        ("hf://",),
    ),
    Case(
        "model-hf-branch-with-slash",
        {S + "baseModel.uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@feature/x"},
        "spec.baseModel.uri",
        ('without "/"', "refs/pr/<N>"),
    ),
    Case(
        "model-hf-double-dash",
        {S + "baseModel.uri": "hf://org--team/m"},
        "spec.baseModel.uri",
        ("Hub names",),
    ),
    Case(
        "model-hf-weights-file",
        {S + "baseModel.uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct/model.safetensors"},
        "spec.baseModel.uri",
        ("<file>.gguf",),
    ),
    Case(
        "hf-token-with-s3-model",
        {S + "baseModel.tokenSecretRef": {"name": "hf-token"}},
        "spec.baseModel.tokenSecretRef",
        ("hf://",),
    ),
    Case(
        "hf-token-no-name",
        {S + "baseModel.uri": "hf://org/m", S + "baseModel.tokenSecretRef": {"key": "token"}},
        "spec.baseModel.tokenSecretRef.name",
        ("Required",),
    ),
    Case(
        "hf-token-bad-key",
        {S + "baseModel.uri": "hf://org/m", S + "baseModel.tokenSecretRef": {"name": "hf", "key": "a token"}},
        "spec.baseModel.tokenSecretRef.key",
        ("should match",),
    ),
    Case(
        "model-weights-file",
        {S + "baseModel.uri": "s3://models/smollm2/model.safetensors"},
        "spec.baseModel.uri",
        ("directory", ".gguf"),
    ),
    Case(
        "model-dir-no-slash",
        {S + "baseModel.uri": "s3://models/smollm2-135m-instruct"},
        "spec.baseModel.uri",
        ("directory", ".gguf"),
    ),
    Case(
        "model-pvc-config-file",
        {S + "baseModel.uri": "pvc://models/smollm2/config.json"},
        "spec.baseModel.uri",
        ("PVC", ".gguf"),
    ),
    Case("model-glob", {S + "baseModel.uri": "s3://models/*/"}, "spec.baseModel.uri", ("wildcards",)),
    Case(
        "model-double-slash",
        {S + "baseModel.uri": "s3://models//smollm2/"},
        "spec.baseModel.uri",
        ("empty path segment",),
    ),
    Case(
        "train-csv", {S + "dataset.train": "s3://datasets/demo/train.csv"}, "spec.dataset.train", ("JSONL",)
    ),
    Case(
        "train-gzip",
        {S + "dataset.train": "s3://datasets/demo/train.jsonl.gz"},
        "spec.dataset.train",
        ("uncompressed",),
    ),
    Case(
        "validation-parquet",
        {S + "dataset.validation": "s3://datasets/demo/val.parquet"},
        "spec.dataset.validation",
        ("JSONL",),
    ),
    Case(
        "train-glob",
        {S + "dataset.train": "s3://datasets/demo/*.jsonl"},
        "spec.dataset.train",
        ("wildcards",),
    ),
    Case(
        "train-version-query",
        {S + "dataset.train": "s3://datasets/demo/train.jsonl?versionId=3"},
        "spec.dataset.train",
        ("query",),
    ),
    Case(
        "test-double-slash",
        {S + "dataset.test": "s3://datasets//demo/heldout.jsonl"},
        "spec.dataset.test",
        ("empty path segment",),
    ),
    Case(
        "output-file-name",
        {S + "output.uri": "s3://adapters/demo/adapter.safetensors"},
        "spec.output.uri",
        ("not a file",),
    ),
    Case("output-glob", {S + "output.uri": "s3://adapters/demo/*/"}, "spec.output.uri", ("wildcards",)),
    Case(
        "output-double-slash",
        {S + "output.uri": "s3://adapters//demo/"},
        "spec.output.uri",
        ("empty path segment",),
    ),
    Case(
        "endpoint-creds",
        {S + "storage.endpoint": "http://u:p@minio:9000"},
        "spec.storage.endpoint",
        ("credentials",),
    ),
    # bad float and decimal strings
    Case("lr-garbage", {HP + "learningRate": "2e-4x"}, HP + "learningRate", ("should match",)),
    Case("lr-too-big", {HP + "learningRate": "1.5"}, HP + "learningRate", ("less than 1",)),
    Case("lr-zero", {HP + "learningRate": "0e0"}, HP + "learningRate", ("greater than 0",)),
    Case("lr-overflow", {HP + "learningRate": "1e400"}, HP + "learningRate", ("should match",)),
    Case("warmup-negative", {HP + "warmupRatio": "-0.1"}, HP + "warmupRatio", ("should match",)),
    Case("warmup-one", {HP + "warmupRatio": "1"}, HP + "warmupRatio", ("[0, 1)",)),
    Case("weight-decay-big", {HP + "weightDecay": "2"}, HP + "weightDecay", ("[0, 1]",)),
    Case("grad-norm-zero", {HP + "maxGradNorm": "0.0"}, HP + "maxGradNorm", ("greater than 0",)),
    Case("dropout-one", {LORA: {"dropout": "1.0"}}, LORA + ".dropout", ("[0, 1)",)),
    Case(
        "split-zero",
        {S + "dataset.validation": DELETE, S + "dataset.validationSplit": "0"},
        "spec.dataset.validationSplit",
        ("(0, 0.5]",),
    ),
    Case(
        "split-too-big",
        {S + "dataset.validation": DELETE, S + "dataset.validationSplit": "0.6"},
        "spec.dataset.validationSplit",
        ("(0, 0.5]",),
    ),
    Case("cost-dollar", {S + "budget": {"maxCost": "$50"}}, "spec.budget.maxCost", ("should match",)),
    Case("cost-zero", {S + "budget": {"maxCost": "0.00"}}, "spec.budget.maxCost", ("greater than 0",)),
    Case(
        "gpu-hours-exp", {S + "budget": {"maxGPUHours": "1e3"}}, "spec.budget.maxGPUHours", ("should match",)
    ),
    Case("budget-empty", {S + "budget": {}}, "spec.budget", ("at least 1",)),
    # bad quantities and names
    Case("memory-words", {RES + "memory": "64 GB"}, RES + "memory", ("should match",)),
    Case("cpu-negative", {RES + "cpu": "-1"}, RES + "cpu", ("should match",)),
    Case("cpu-zero", {RES + "cpu": 0}, RES + "cpu", ("greater than 0",)),
    Case("memory-zero", {RES + "memory": "0Gi"}, RES + "memory", ("greater than 0",)),
    Case("memory-bytes", {RES + "memory": 64}, RES + "memory", ("at least 256Mi", "64Gi")),
    Case("memory-capital-k", {RES + "memory": "64K"}, RES + "memory", ("Ki, Mi, Gi",)),
    Case("cpu-millicores-as-cores", {RES + "cpu": 8000}, RES + "cpu", ("at most 1024", '"500m"')),
    Case(
        "priority-class-system",
        {RES + "priorityClassName": "system-node-critical"},
        RES + "priorityClassName",
        ("cluster components",),
    ),
    Case(
        "modules-all-linear-typo",
        {LORA: {"targetModules": ["all_linear"]}},
        "targetModules[0]",
        ("all-linear",),
    ),
    Case(
        "modules-all-linear-caps",
        {LORA: {"targetModules": ["ALL-LINEAR"]}},
        "targetModules[0]",
        ("all-linear",),
    ),
    Case("node-selector-key", {RES + "nodeSelector": {"bad key!": "v"}}, "nodeSelector", ("label keys",)),
    Case("gpu-type-space", {RES + "gpuType": "H100 80GB"}, RES + "gpuType", ("should match",)),
    Case(
        "secret-name",
        {S + "storage.credentialsSecretRef.name": "S3_Creds"},
        "credentialsSecretRef.name",
        ("match",),
    ),
    Case(
        "priority-class", {RES + "priorityClassName": "High_Priority"}, RES + "priorityClassName", ("match",)
    ),
    Case("queue-name", {S + "queueName": "team a"}, "spec.queueName", ("should match",)),
    Case("node-selector-value", {RES + "nodeSelector": {"pool": "a" * 64}}, "nodeSelector", ("Too long",)),
    # too many items, too long
    Case("tolerations-17", {RES + "tolerations": [TOLERATION] * 17}, RES + "tolerations", ("at most 16",)),
    Case(
        "modules-65",
        {LORA: {"targetModules": [f"m{i}" for i in range(65)]}},
        "targetModules",
        ("at most 64",),
    ),
    Case(
        "node-selector-17", {RES + "nodeSelector": {f"k{i}": "v" for i in range(17)}}, "nodeSelector", ("16",)
    ),
    Case("modules-empty", {LORA: {"targetModules": []}}, "targetModules", ("at least 1",)),
    Case(
        "modules-duplicate", {LORA: {"targetModules": ["q_proj", "q_proj"]}}, "targetModules", ("Duplicate",)
    ),
    Case(
        "train-too-long",
        {S + "dataset.train": "s3://datasets/" + "a" * 1020 + ".jsonl"},
        "dataset.train",
        ("long",),
    ),
    # cross-field rules
    Case("qlora-cpu", {S + "method": {"type": "qlora"}, RES + "gpus": 0}, RES + "gpus", ("qlora", "gpus")),
    Case(
        "validation-and-split",
        {S + "dataset.validationSplit": "0.1"},
        "spec.dataset.validationSplit",
        ("exclude each other",),
    ),
    Case(
        "validation-is-train",
        {S + "dataset.validation": "s3://datasets/demo/train.jsonl"},
        "spec.dataset.validation",
        ("must differ",),
    ),
    Case("lora-with-full", {S + "method": {"type": "full", "lora": {"r": 8}}}, "spec.method.lora", ("full",)),
    Case(
        "all-linear-plus",
        {LORA: {"targetModules": ["all-linear", "q_proj"]}},
        "targetModules",
        ("all-linear",),
    ),
    Case("multi-node-cpu", {RES + "nodes": 2, RES + "gpus": 0}, RES + "gpus", ("nodes",)),
    Case("gpu-type-cpu", {RES + "gpuType": "NVIDIA-A100", RES + "gpus": 0}, RES + "gpuType", ("gpus",)),
    Case("output-holds-dataset", {S + "output.uri": "s3://datasets/demo/"}, "spec.output.uri", ("dataset",)),
    Case(
        "test-is-train",
        {S + "dataset.test": "s3://datasets/demo/train.jsonl"},
        "spec.dataset.test",
        ("must differ",),
    ),
    Case(
        "test-is-validation",
        {S + "dataset.test": "s3://datasets/demo/val.jsonl"},
        "spec.dataset.test",
        ("must differ",),
    ),
    Case(
        "output-holds-test",
        {S + "dataset.test": "s3://adapters/demo/smollm2-facts/test.jsonl"},
        "spec.output.uri",
        ("dataset.test",),
    ),
    Case(
        "gradual-unfreezing-lora",
        {HP + "gradualUnfreezing": True},
        HP + "gradualUnfreezing",
        ("method.type full",),
    ),
    Case(
        "output-in-model",
        {
            S + "baseModel.uri": "s3://models/smollm2-135m-instruct/",
            S + "output.uri": "s3://models/smollm2-135m-instruct/out/",
        },
        "spec.output.uri",
        ("baseModel",),
    ),
    Case(
        "output-holds-model",
        {S + "baseModel.uri": "s3://adapters/demo/m.gguf", S + "output.uri": "s3://adapters/demo/"},
        "spec.output.uri",
        ("baseModel",),
    ),
    Case(
        "toleration-exists-value",
        {RES + "tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]},
        "tolerations[0].value",
        ("Exists",),
    ),
    Case(
        "toleration-seconds",
        {RES + "tolerations": [{"key": "a", "value": "b", "tolerationSeconds": 60}]},
        "tolerations[0].tolerationSeconds",
        ("NoExecute",),
    ),
    Case(
        "toleration-no-key", {RES + "tolerations": [{"value": "b"}]}, "tolerations[0].operator", ("Exists",)
    ),
    Case(
        "gpu-product-conflict",
        {
            RES + "gpuType": "NVIDIA-A100-SXM4-80GB",
            RES + "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
        },
        RES + "nodeSelector",
        ("gpuType",),
    ),
    Case(
        "gradual-unfreezing-one-epoch",
        {S + "method": {"type": "full"}, HP + "gradualUnfreezing": True, HP + "epochs": 1},
        HP + "gradualUnfreezing",
        ("epochs of 2",),
    ),
    # unknown fields (kubectl's strict field validation)
    Case(
        "unknown-field",
        {HP + "learning_rate": "2e-4"},
        "spec.hyperparameters.learning_rate",
        ("unknown field",),
    ),
    Case("misplaced-field", {S + "gpus": 1}, "spec.gpus", ("unknown field",)),
    Case(
        "inline-credentials",
        {S + "storage.accessKeyId": "AKIA"},
        "spec.storage.accessKeyId",
        ("unknown field",),
    ),
    Case(
        "secret-other-namespace",
        {S + "storage.credentialsSecretRef.namespace": "other"},
        "credentialsSecretRef.namespace",
        ("unknown field",),
    ),
    # names
    Case("name-41", {"metadata.name": "a" * 41}, "metadata.name", ("40 characters",)),
    Case("name-leading-digit", {"metadata.name": "1st-run"}, "metadata.name", ("RFC 1035",)),
    Case("name-with-dot", {"metadata.name": "run.v2"}, "metadata", ("RFC 1035",)),
]


def test_there_are_enough_distinct_cases() -> None:
    assert len(INVALID) >= 35
    assert len({c.id for c in INVALID}) == len(INVALID)


@pytest.mark.parametrize("case", INVALID, ids=str)
def test_invalid_manifest_is_refused(ns: str, case: Case) -> None:
    name = f"bad-{INVALID.index(case)}"
    doc = manifest(name, case.changes)
    if "metadata.name" not in case.changes:
        assert doc["metadata"]["name"] == name
    proc = apply(doc, ns)
    if proc.returncode == 0:
        kubectl("delete", "ftj", doc["metadata"]["name"], "-n", ns, "--wait=false", check=False)
    assert proc.returncode != 0, f"accepted: {case}"
    assert case.field in proc.stderr, proc.stderr
    for word in case.words:
        assert word in proc.stderr, proc.stderr


# Close neighbours of refused values that are fine: the rules above must not refuse them.
VALID = [
    Case("model-gguf", {S + "baseModel.uri": "s3://models/team/SmolLM2.Q4_1.gguf"}, "", ()),
    Case("model-pvc-dir", {S + "baseModel.uri": "pvc://models/smollm2"}, "", ()),
    Case(
        "model-hf-revision",
        {S + "baseModel.uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@refs/pr/1"},
        "",
        (),
    ),
    Case(
        "model-hf-gguf-file",
        {
            S
            + "baseModel.uri": "hf://bartowski/SmolLM2-135M-Instruct-GGUF@main/SmolLM2-135M-Instruct-Q4_K_M.gguf"
        },
        "",
        (),
    ),
    Case(
        "model-hf-commit-and-token",
        {
            S + "baseModel.uri": "hf://meta-llama/Llama-3.2-1B@4e20de362430cd3b72f300e6b0f18e50e7166e08",
            S + "baseModel.tokenSecretRef": {"name": "hf-token", "key": "token"},
        },
        "",
        (),
    ),
    Case("train-json", {S + "dataset.train": "s3://datasets/demo/train.json"}, "", ()),
    Case("train-no-extension", {S + "dataset.train": "s3://datasets/demo/train-v1.2"}, "", ()),
    Case("output-dotted", {S + "output.uri": "s3://adapters/demo/run-1.0/"}, "", ()),
    Case("endpoint-ipv6", {S + "storage.endpoint": "http://[::1]:9000"}, "", ()),
    Case("endpoint-aws", {S + "storage.endpoint": "https://s3.eu-central-1.amazonaws.com"}, "", ()),
    Case("endpoint-path", {S + "storage.endpoint": "http://127.0.0.1:65535/s3"}, "", ()),
    Case("modules-allocator", {LORA: {"targetModules": ["allocator", "q_proj"]}}, "", ()),
    Case(
        "unfreezing-two-epochs",
        {S + "method": {"type": "full"}, HP + "gradualUnfreezing": True, HP + "epochs": 2},
        "",
        (),
    ),
    Case("quantities-bounds", {RES + "cpu": "1024", RES + "memory": "256Mi"}, "", ()),
    Case("quantities-small", {RES + "cpu": "500m", RES + "memory": "300M"}, "", ()),
    Case("memory-int-bytes", {RES + "memory": 68719476736}, "", ()),
    Case(
        "gpu-product-same",
        {RES + "gpuType": "NVIDIA-A100", RES + "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100"}},
        "",
        (),
    ),
    Case("priority-class", {RES + "priorityClassName": "training-high"}, "", ()),
]


@pytest.mark.parametrize("case", VALID, ids=str)
def test_valid_neighbour_is_accepted(ns: str, case: Case) -> None:
    proc = apply(manifest(f"ok-{VALID.index(case)}", case.changes), ns, "--dry-run=server")
    assert proc.returncode == 0, proc.stderr


IMMUTABLE = [
    Case("base-model", {S + "baseModel.uri": "s3://models/other/"}, "spec.baseModel", ("immutable",)),
    Case(
        "dataset", {S + "dataset.validation": "s3://datasets/demo/val2.jsonl"}, "spec.dataset", ("immutable",)
    ),
    Case("output", {S + "output.uri": "s3://adapters/demo/other/"}, "spec.output", ("immutable",)),
    Case("storage", {S + "storage.credentialsSecretRef.name": "other"}, "spec.storage", ("immutable",)),
    Case("method", {S + "method": {"type": "full"}}, "spec.method", ("immutable",)),
    Case("lora-r", {LORA: {"r": 8}}, "spec.method", ("immutable",)),
    Case("epochs", {HP + "epochs": 5}, "spec.hyperparameters", ("immutable",)),
    Case("gpus", {RES + "gpus": 2}, "spec.resources", ("immutable",)),
    Case("checkpointing", {S + "checkpointing": {"everySteps": 50}}, "spec.checkpointing", ("immutable",)),
    Case("queue-added", {S + "queueName": "team-a"}, "spec.queueName", ("immutable",)),
    Case("budget-added", {S + "budget": {"maxCost": "20"}}, "spec.budget", ("immutable",)),
    Case("retries", {S + "retries": {"limit": 5}}, "spec.retries", ("immutable",)),
    Case("deadline-added", {S + "activeDeadlineSeconds": 3600}, "spec.activeDeadlineSeconds", ("immutable",)),
    Case("max-steps-added", {HP + "maxSteps": 100}, "spec.hyperparameters", ("immutable",)),
    Case("tolerations-added", {RES + "tolerations": [TOLERATION]}, "spec.resources", ("immutable",)),
]


@pytest.mark.parametrize("case", IMMUTABLE, ids=str)
def test_immutable_field_cannot_change(ns: str, case: Case) -> None:
    name = f"imm-{IMMUTABLE.index(case)}"
    created = apply(manifest(name, {}), ns)
    assert created.returncode == 0, created.stderr
    proc = apply(manifest(name, case.changes), ns)
    assert proc.returncode != 0, f"accepted: {case}"
    assert case.field in proc.stderr, proc.stderr
    for word in (*case.words, "create a new FineTuneJob"):
        assert word in proc.stderr, proc.stderr


def test_suspend_can_change(ns: str) -> None:
    assert apply(manifest("suspendable", {}), ns).returncode == 0
    for value in (True, False):
        proc = apply(manifest("suspendable", {S + "suspend": value}), ns)
        assert proc.returncode == 0, proc.stderr
        spec = json.loads(kubectl("get", "ftj", "suspendable", "-n", ns, "-o", "json").stdout)["spec"]
        assert spec["suspend"] is value


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted(ns: str, path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "FineTuneJob"]
    assert docs
    proc = kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(path), check=False)
    assert proc.returncode == 0, proc.stderr


def test_defaults_are_filled_in(ns: str) -> None:
    assert apply(manifest("defaults", {}), ns).returncode == 0
    spec = json.loads(kubectl("get", "ftj", "defaults", "-n", ns, "-o", "json").stdout)["spec"]
    assert spec["method"] == {"type": "lora"}
    # The data-dependent ones stay unset: validation chooses them (status.resolved.hyperparameters).
    for name in ("epochs", "learningRate", "batchSize", "gradientAccumulationSteps", "warmupRatio"):
        assert name not in spec["hyperparameters"], spec["hyperparameters"]
    assert spec["hyperparameters"]["lrScheduler"] == "cosine"
    assert spec["checkpointing"] == {"everySteps": 200, "keep": 3}
    assert spec["retries"] == {"limit": 3}
    assert spec["suspend"] is False
    assert spec["storage"]["region"] == "us-east-1"


def test_hub_token_key_defaults_to_hf_token(ns: str) -> None:
    changes = {S + "baseModel.uri": "hf://org/m", S + "baseModel.tokenSecretRef": {"name": "hf-token"}}
    proc = apply(manifest("hub-token", changes), ns, "--dry-run=server", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["spec"]["baseModel"]["tokenSecretRef"] == {
        "name": "hf-token",
        "key": "HF_TOKEN",
    }


def test_explain_teaches_the_hyperparameters(crd: None) -> None:
    out = kubectl("explain", "ftj.spec.hyperparameters").stdout
    for text in ("learningRate", "Peak learning rate", "warmupRatio", "batchSize", "chosen from the data"):
        assert text in out, out
    field = kubectl("explain", "ftj.spec.hyperparameters.learningRate").stdout
    assert '"2e-4"' in field, field
    assert "full" in field, field  # the automatic rate differs by method


def test_printer_columns_show_progress(ns: str) -> None:
    assert apply(manifest("columns", {}), ns).returncode == 0
    status = {
        "status": {
            "phase": "Running",
            "progress": {"step": 84, "totalSteps": 200, "percent": 42, "etaSeconds": 720, "eta": "12m"},
            "metrics": {"trainLoss": "0.8123"},
            "usage": {"gpuSeconds": 3600, "estimatedCost": "1.23"},
        }
    }
    kubectl(
        "patch", "ftj", "columns", "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    header, row = kubectl("get", "ftj", "columns", "-n", ns).stdout.splitlines()
    assert header.split() == ["NAME", "STATUS", "PROGRESS", "LOSS", "ETA", "COST", "AGE"]
    assert row.split()[:6] == ["columns", "Running", "42", "0.8123", "12m", "1.23"]
    assert "columns" in kubectl("get", "finetune", "-n", ns).stdout, "the finetune category lists the job"


def test_status_is_a_subresource(ns: str) -> None:
    """A spec write cannot set status (only the operator, through /status, can)."""
    doc = manifest("subresource", {})
    doc["status"] = {"phase": "Succeeded"}
    assert apply(doc, ns).returncode == 0
    got = json.loads(kubectl("get", "ftj", "subresource", "-n", ns, "-o", "json").stdout)
    assert "phase" not in got.get("status", {})
