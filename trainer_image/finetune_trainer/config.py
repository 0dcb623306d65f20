"""The one JSON document the operator renders for the trainer (`TrainerConfig`).

Keys are camelCase and mirror the FineTuneJob spec so the operator can copy fields across
unchanged. This module imports only pydantic (and `hf_hub`'s standard-library URI parser): the
operator imports it to render configs and must not pull in torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .hf_hub import parse_hf_uri


def _float_from_str(value: object) -> object:
    # The CRD stores floats as strings ("2e-4") so they survive YAML and CEL untouched.
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError as exc:
            raise ValueError(f"expected a number such as '2e-4', got {value!r}") from exc
    return value


Float = Annotated[float, BeforeValidator(_float_from_str)]


class _Model(BaseModel):
    # extra="ignore": an operator newer than this image may render keys it does not know yet.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


# Where the operator mounts the claim of a pvc:// base model (read-only) in the validation and trainer
# pods. The operator uses this constant for the volumeMount and renders it as baseModel.mountPath, so
# the path is defined here only.
PVC_MOUNT_PATH: Final = "/mnt/base-model"
_PVC_URI: Final = re.compile(r"pvc://([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)(/.*)?")


def parse_pvc_uri(uri: str) -> tuple[str, str]:
    """`pvc://<claim>/<path>` -> (claim, path inside the claim; "" for its root)."""
    m = _PVC_URI.fullmatch(uri)
    if m is None:
        raise ValueError(
            f"baseModel.uri {uri!r} must be pvc://<claim>/<path> with the claim's name a DNS label "
            "(lowercase letters, digits and '-')"
        )
    rest = (m.group(2) or "/")[1:]
    rest = rest.removesuffix("/")
    parts = rest.split("/") if rest else []
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"baseModel.uri {uri!r}: the path must not contain empty, '.' or '..' segments")
    return m.group(1), "/".join(parts)


class BaseModelSpec(_Model):
    uri: str = Field(
        description="s3://bucket/prefix/ in Hugging Face format, s3://bucket/model.gguf, pvc://claim/path, "
        "or hf://org/name[@revision][/file.gguf]"
    )
    # pvc:// only: where the pod has the claim mounted (unset: PVC_MOUNT_PATH); the model is at
    # <mountPath>/<path>.
    mount_path: str | None = None

    @model_validator(mode="after")
    def _check_uri(self) -> BaseModelSpec:
        if self.uri.startswith("pvc://"):
            parse_pvc_uri(self.uri)
            if self.mount_path is not None and not self.mount_path.startswith("/"):
                raise ValueError(f"baseModel.mountPath must be an absolute path (got {self.mount_path!r})")
            return self
        if self.uri.startswith("hf://"):
            parse_hf_uri(self.uri)  # downloaded by hf_hub.fetch_hf_model
            return self
        if not self.uri.startswith("s3://"):
            raise ValueError(f"baseModel.uri must start with s3://, pvc:// or hf:// (got {self.uri!r})")
        return self

    @property
    def local_path(self) -> Path | None:
        """Where a pvc:// model is in this pod (<mountPath>/<path>); None for a model that is fetched."""
        if not self.uri.startswith("pvc://"):
            return None
        _, path = parse_pvc_uri(self.uri)
        root = Path(self.mount_path or PVC_MOUNT_PATH)
        return root / path if path else root


class DatasetSpec(_Model):
    train: str
    validation: str | None = None
    validation_split: Float = Field(default=0.1, ge=0.0, lt=1.0)
    format: Literal["auto", "chat", "prompt_completion", "text"] = "auto"

    @model_validator(mode="after")
    def _check_uris(self) -> DatasetSpec:
        for name, uri in (("train", self.train), ("validation", self.validation)):
            if uri is not None and not uri.startswith("s3://"):
                raise ValueError(f"dataset.{name} must be an s3:// URI of a JSONL file (got {uri!r})")
        return self


class OutputSpec(_Model):
    uri: str

    @model_validator(mode="after")
    def _check_uri(self) -> OutputSpec:
        if not self.uri.startswith("s3://"):
            raise ValueError(f"output.uri must start with s3:// (got {self.uri!r})")
        return self


class StorageSpec(_Model):
    # Credentials never appear here: they come from the environment (a Secret).
    endpoint: str | None = None
    region: str | None = None


class LoraSpec(_Model):
    r: int = Field(default=16, ge=1, le=1024)
    alpha: int = Field(default=32, ge=1)
    dropout: Float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"])
    # Rank-stabilised scaling alpha/sqrt(r) instead of alpha/r (Kalajdzievski 2023): at r=16 the
    # adapter learns 4x faster at the same learning rate, which ordinary settings (lr 2e-4,
    # 3 epochs) need on small datasets. peft and vLLM read `use_rslora` from adapter_config.json.
    rs_lora: bool = True


class MethodSpec(_Model):
    type: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSpec = Field(default_factory=LoraSpec)


class EarlyStoppingSpec(_Model):
    # 0 turns early stopping off.
    patience: int = Field(default=3, ge=0)


# transformers' SchedulerType values for every FineTuneJob lrScheduler (the operator maps the API's
# "-" names with LRScheduler.transformers_name; this image cannot import the operator).
LRSchedulerName = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]


class Hyperparameters(_Model):
    epochs: Float = Field(default=3, gt=0)
    # Optional cap on optimizer steps: training stops there even if epochs remain.
    max_steps: int | None = Field(default=None, ge=1)
    learning_rate: Float = Field(default=2e-4, gt=0)
    lr_scheduler: LRSchedulerName = "cosine"
    warmup_ratio: Float = Field(default=0.03, ge=0, lt=1)
    weight_decay: Float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_seq_length: int = Field(default=2048, ge=16)
    packing: bool = True
    seed: int = 42
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    # Full fine-tunes only: train the last layers first and unfreeze downwards epoch by epoch.
    gradual_unfreezing: bool = False
    max_grad_norm: Float = Field(default=1.0, gt=0)


class CheckpointingSpec(_Model):
    every_steps: int = Field(default=200, ge=1)
    keep: int = Field(default=3, ge=1)


class JobSpec(_Model):
    namespace: str = "default"
    name: str = "finetune"
    uid: str = ""
    attempt: int = Field(default=0, ge=0)


class EvalSpec(_Model):
    max_examples: int = Field(default=64, ge=0)
    max_new_tokens: int = Field(default=48, ge=1)
    # Optional held-out JSONL (rows with reference answers, spec.dataset.test): scored for exact match
    # at the end, tuned vs base model, instead of validation; never trained on nor used for early stopping.
    dataset: str | None = None

    @model_validator(mode="after")
    def _check_uri(self) -> EvalSpec:
        if self.dataset is not None and not self.dataset.startswith("s3://"):
            raise ValueError(f"eval.dataset must be an s3:// URI of a JSONL file (got {self.dataset!r})")
        return self


class TrainerConfig(_Model):
    base_model: BaseModelSpec
    dataset: DatasetSpec
    output: OutputSpec
    storage: StorageSpec = Field(default_factory=StorageSpec)
    method: MethodSpec = Field(default_factory=MethodSpec)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    checkpointing: CheckpointingSpec = Field(default_factory=CheckpointingSpec)
    job: JobSpec = Field(default_factory=JobSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainerConfig:
        if self.hyperparameters.gradual_unfreezing and self.method.type != "full":
            raise ValueError(
                "hyperparameters.gradualUnfreezing applies to method.type 'full' only; "
                "turn it off or switch to a full fine-tune"
            )
        return self

    @property
    def output_prefix(self) -> str:
        return self.output.uri if self.output.uri.endswith("/") else self.output.uri + "/"


def load_config(path: str | Path) -> TrainerConfig:
    """Read and validate the config file; errors name the field to change."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"config {path} is not valid JSON: {exc}") from exc
    return TrainerConfig.model_validate(data)
