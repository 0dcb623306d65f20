"""The FineTuneJob spec as pydantic models (camelCase on the wire, snake_case in Python).

The CRD (crds/finetune.dev_finetunejobs.yaml) is the contract; these models mirror it field by field
(tests/unit/test_api_models.py walks both) and repeat its CEL rules, so that a body the API server
accepted always parses and a hand-built spec (tests, tools) fails the same way it would at apply time.

Spec models forbid unknown fields: the API server prunes fields the CRD does not know, so an unknown
field here means the CRD is newer than the operator, and silently dropping a user's setting (say a new
limit) would be worse than refusing the job loudly.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# Decimal or exponent notation, no sign: "2e-4", "0.05", "1", "1.5E+2". The exponent has at most two
# digits so every accepted string is a finite double (CEL's double() would fail on "1e400").
FLOAT_STRING_PATTERN: Final = r"^[0-9]{1,10}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,2})?$"
# Money and GPU-hours: plain decimals, so sums and comparisons are exact.
DECIMAL_STRING_PATTERN: Final = r"^[0-9]{1,9}(\.[0-9]{1,4})?$"
BUCKET: Final = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
S3_PREFIX_OR_KEY: Final = rf"^s3://{BUCKET}/\S+$"
S3_OBJECT: Final = rf"^s3://{BUCKET}/\S*[^/\s]$"
S3_OUTPUT_PREFIX: Final = rf"^s3://{BUCKET}/\S*[^/\s]/?$"
PVC_URI: Final = r"^pvc://[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(/\S*)?$"
# hf://<org>/<name>[@<revision>][/<file>.gguf]; finetune_trainer.hf_hub parses the same pattern.
HF_NAME: Final = r"[A-Za-z0-9](?:[-._]?[A-Za-z0-9_]){0,95}"
HF_URI: Final = (
    rf"^hf://{HF_NAME}/{HF_NAME}(@(refs/pr/[0-9]{{1,10}}|[-A-Za-z0-9_.]{{1,255}}))?"
    r"(/[-A-Za-z0-9_]([-A-Za-z0-9_.]|/[-A-Za-z0-9_])*\.gguf)?$"
)
# A key of a Secret's or ConfigMap's data.
DATA_KEY: Final = r"^[-._a-zA-Z0-9]+$"
DNS_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE: Final = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
CPU_QUANTITY: Final = r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$"
# Kubernetes suffixes: k M G T P E (powers of 1000; a capital K is not one), Ki ... Ei (powers of 1024).
MEMORY_QUANTITY: Final = r"^[0-9]+(\.[0-9]+)?([kMGTPE]|[KMGTPE]i|[eE][0-9]+)?$"
_SUFFIXES: Final = {
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
    **{s + "i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")},
}
# A unit-less memory quantity is bytes and a CPU quantity whole cores: "memory: 64" and "cpu: 8000"
# are unit mistakes, refused like the CRD does.
MIN_MEMORY_BYTES: Final = 256 * 1024**2
MAX_CPU: Final = 1024
# Characters that make an S3 URI a pattern or a URL with a query instead of one object or prefix.
URI_WILDCARDS: Final = r"[*?#\[\]{}]"
EMPTY_SEGMENT: Final = r"^[a-z0-9]+://.*//"
# Files that are not JSONL; a model file or a config is not a model directory; an output is a prefix.
NOT_JSONL: Final = (
    r"(?i)\.(csv|tsv|parquet|arrow|feather|xlsx|xls|avro|orc|pkl|pickle|npy|npz|safetensors|gguf"
    r"|zip|gz|tgz|tar|bz2|xz|zst|7z)$"
)
MODEL_FILE: Final = r"(?i)\.(safetensors|bin|pt|pth|ckpt|json|onnx|h5|msgpack|zip|gz|tgz|tar|bz2|xz|zst|7z)$"
OUTPUT_FILE: Final = r"(?i)\.(safetensors|bin|gguf|pt|pth|ckpt|onnx|json|jsonl|csv|parquet|zip|gz|tgz|tar)$"
# http(s)://host[:port][/path]: a DNS name or IPv4 address, or an IPv6 address in brackets; port 1-65535.
ENDPOINT: Final = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
ENDPOINT_HOST_PORT: Final = (
    r"^https?://([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/|$)"
)
ALL_LINEAR_TYPO: Final = r"(?i)^all([-_.]?linear(s|-layers)?)?$"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
# A qualified name (optional DNS-subdomain prefix and "/"), or empty: taint and label keys.
TAINT_KEY: Final = (
    r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
)
ALL_LINEAR: Final = "all-linear"
DEFAULT_VALIDATION_SPLIT: Final = 0.1


def _parse_float_string(value: object) -> object:
    """Turn the CRD's float strings into floats; numbers pass through for Python callers."""
    if isinstance(value, str):
        if not re.fullmatch(FLOAT_STRING_PATTERN, value):
            raise ValueError(f'must be a decimal or exponent string such as "2e-4" or "0.05", not {value!r}')
        return float(value)
    return value


def _parse_decimal_string(value: object) -> object:
    if isinstance(value, str):
        if not re.fullmatch(DECIMAL_STRING_PATTERN, value):
            raise ValueError(f'must be a decimal string such as "50" or "12.50", not {value!r}')
        try:
            return Decimal(value)
        except InvalidOperation as err:  # unreachable after the pattern, kept for a clear message
            raise ValueError(f"not a decimal: {value!r}") from err
    return value


def quantity_value(value: str) -> Decimal:
    """The number a CPU or memory quantity string (already matched by its pattern) stands for."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(?:([eE])([0-9]+)|([a-zA-Z]*))", value)
    if match is None or (match.group(4) or "") not in ("", *_SUFFIXES):
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number = Decimal(match.group(1))
    if match.group(2):
        return number * Decimal(10) ** int(match.group(3))
    return number * _SUFFIXES.get(match.group(4) or "", Decimal(1))


def _quantity(pattern: str) -> Any:
    def parse(value: object) -> object:
        # The CRD field is int-or-string (cpu: 8 and cpu: "500m" are both valid); keep one type here.
        if isinstance(value, bool):
            raise ValueError("must be a quantity, not a boolean")
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            if not re.fullmatch(pattern, value):
                raise ValueError(f"must be a Kubernetes quantity such as 8, 500m or 64Gi, not {value!r}")
            number = re.match(r"[0-9]+(\.[0-9]+)?", value)
            if number is None or float(number.group()) <= 0:
                raise ValueError(f"must be greater than 0, not {value!r}")
        return value

    return BeforeValidator(parse)


# A float on the Python side, a string on the wire ("2e-4" comes back as "0.0002": same value).
FloatString = Annotated[float, BeforeValidator(_parse_float_string), PlainSerializer(repr, return_type=str)]
DecimalString = Annotated[
    Decimal, BeforeValidator(_parse_decimal_string), PlainSerializer(str, return_type=str)
]


def _check_cpu(value: str) -> str:
    if quantity_value(value) > MAX_CPU:
        raise ValueError(
            f'resources.cpu is whole CPUs per trainer pod, at most {MAX_CPU}; for thousandths of a CPU add "m", '
            f'e.g. "500m" (got {value!r})'
        )
    return value


def _check_memory(value: str) -> str:
    if quantity_value(value) < MIN_MEMORY_BYTES:
        raise ValueError(
            f"resources.memory must be at least 256Mi; a number without a unit is bytes, so write e.g. 64Gi "
            f"(got {value!r})"
        )
    return value


CpuQuantity = Annotated[
    str, AfterValidator(_check_cpu), _quantity(CPU_QUANTITY), StringConstraints(max_length=32)
]
MemoryQuantity = Annotated[
    str, AfterValidator(_check_memory), _quantity(MEMORY_QUANTITY), StringConstraints(max_length=32)
]


class _SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
    )


def _with_slash(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


class MethodType(StrEnum):
    LORA = "lora"
    QLORA = "qlora"
    FULL = "full"


class DatasetFormat(StrEnum):
    AUTO = "auto"
    CHAT = "chat"
    PROMPT_COMPLETION = "prompt-completion"
    TEXT = "text"


class LRScheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine-with-restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant-with-warmup"
    INVERSE_SQRT = "inverse-sqrt"

    @property
    def transformers_name(self) -> str:
        """The transformers SchedulerType value (the API uses '-' like its other enums)."""
        return self.value.replace("-", "_")


class SecretKeyRef(_SpecModel):
    """One key of a Secret in the job's namespace (read by the pods through secretKeyRef)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    key: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DATA_KEY)] = "HF_TOKEN"


class BaseModelSource(_SpecModel):
    uri: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    # hf:// only: the Hugging Face token (HF_TOKEN in the pods) for private and gated repositories.
    token_secret_ref: SecretKeyRef | None = None

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        if ".." in value or not any(re.fullmatch(p, value) for p in (S3_PREFIX_OR_KEY, PVC_URI, HF_URI)):
            raise ValueError(
                "baseModel.uri must be s3://<bucket>/<prefix-or-key>, pvc://<claim>/<path> or "
                "hf://<org>/<name>[@<revision>][/<file>.gguf]"
            )
        if value.startswith("s3://") and not value.endswith(("/", ".gguf")):
            raise ValueError(
                'baseModel.uri in S3 must be the model directory ending in "/" or one .gguf file, '
                "not a single weights or config file"
            )
        if value.startswith("pvc://") and re.search(MODEL_FILE, value):
            raise ValueError("baseModel.uri on a PVC must be the model directory or one .gguf file")
        _check_uri_shape("baseModel.uri", value)
        return value

    @model_validator(mode="after")
    def _check_token(self) -> BaseModelSource:
        if self.token_secret_ref is not None and not self.uri.startswith("hf://"):
            raise ValueError(
                "baseModel.tokenSecretRef is the Hugging Face token of an hf:// base model; remove it, or use "
                "an hf:// uri"
            )
        return self

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]

    @property
    def is_gguf(self) -> bool:
        return self.uri.lower().endswith(".gguf")


def _check_uri_shape(field: str, value: str) -> None:
    if re.search(URI_WILDCARDS, value):
        raise ValueError(f"{field} must not contain wildcards or a query (*, ?, #, [ ], {{ }})")
    if re.search(EMPTY_SEGMENT, value):
        raise ValueError(f'{field} must not contain an empty path segment ("//")')


def _check_s3_object(field: str, value: str) -> str:
    if ".." in value or not re.fullmatch(S3_OBJECT, value):
        raise ValueError(f"{field} must be s3://<bucket>/<key> of one JSONL object (only s3:// is supported)")
    _check_uri_shape(field, value)
    if re.search(NOT_JSONL, value):
        raise ValueError(f"{field} must be an uncompressed JSONL file (one JSON object per line)")
    return value


class Dataset(_SpecModel):
    train: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    validation: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    validation_split: Annotated[FloatString, Field(gt=0.0, le=0.5)] | None = None
    format: DatasetFormat = DatasetFormat.AUTO
    test: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None

    @field_validator("train")
    @classmethod
    def _check_train(cls, value: str) -> str:
        return _check_s3_object("dataset.train", value)

    @field_validator("validation")
    @classmethod
    def _check_validation(cls, value: str | None) -> str | None:
        return None if value is None else _check_s3_object("dataset.validation", value)

    @field_validator("test")
    @classmethod
    def _check_test(cls, value: str | None) -> str | None:
        return None if value is None else _check_s3_object("dataset.test", value)

    @model_validator(mode="after")
    def _check_eval_source(self) -> Dataset:
        if self.validation is not None and self.validation_split is not None:
            raise ValueError("dataset.validation and dataset.validationSplit exclude each other")
        if self.validation is not None and self.validation == self.train:
            raise ValueError("dataset.validation must differ from dataset.train")
        if self.test is not None and self.test in (self.train, self.validation):
            raise ValueError("dataset.test must differ from dataset.train and dataset.validation")
        return self

    @property
    def effective_validation_split(self) -> float | None:
        """The fraction of train held out, or None when a validation file is given."""
        if self.validation is not None:
            return None
        return self.validation_split if self.validation_split is not None else DEFAULT_VALIDATION_SPLIT


class Output(_SpecModel):
    uri: Annotated[str, StringConstraints(min_length=1, max_length=1024)]

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        if ".." in value or not re.fullmatch(S3_OUTPUT_PREFIX, value):
            raise ValueError("output.uri must be s3://<bucket>/<prefix>/ (only s3:// is supported)")
        _check_uri_shape("output.uri", value)
        if re.search(OUTPUT_FILE, value):
            raise ValueError("output.uri is a prefix (a directory) the job writes under, not a file")
        return value

    @property
    def prefix(self) -> str:
        """The output location with its implied trailing '/', for joining child paths."""
        return _with_slash(self.uri)


class SecretRef(_SpecModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]


class Storage(_SpecModel):
    endpoint: Annotated[str, StringConstraints(max_length=512, pattern=ENDPOINT)] | None = None
    region: Annotated[str, StringConstraints(max_length=64, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")] = (
        "us-east-1"
    )
    credentials_secret_ref: SecretRef

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(ENDPOINT_HOST_PORT, value):
            raise ValueError(
                "storage.endpoint must be http(s)://<host>[:<port>] with a host name or IP address and a port "
                "from 1 to 65535"
            )
        return value


class LoRA(_SpecModel):
    r: Annotated[int, Field(ge=1, le=1024)] = 16
    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    dropout: Annotated[FloatString, Field(ge=0.0, lt=1.0)] = 0.05
    target_modules: Annotated[
        list[
            Annotated[
                str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][-A-Za-z0-9_.]*$")
            ]
        ],
        Field(min_length=1, max_length=64),
    ] = Field(default_factory=lambda: [ALL_LINEAR])
    rs_lora: bool = True

    @field_validator("target_modules")
    @classmethod
    def _check_modules(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("method.lora.targetModules must not repeat a module")
        for module in value:
            if module != ALL_LINEAR and re.search(ALL_LINEAR_TYPO, module):
                raise ValueError(
                    f"method.lora.targetModules spells every linear layer as all-linear, not {module!r}"
                )
        if ALL_LINEAR in value and len(value) != 1:
            raise ValueError("method.lora.targetModules lists either all-linear alone or module names")
        return value


class Method(_SpecModel):
    type: MethodType = MethodType.LORA
    lora: LoRA | None = None

    @model_validator(mode="after")
    def _check_lora(self) -> Method:
        if self.lora is not None and self.type is MethodType.FULL:
            raise ValueError("method.lora applies only to method.type lora or qlora")
        return self

    @property
    def effective_lora(self) -> LoRA | None:
        """The LoRA settings in force: the given ones, the defaults for lora/qlora, None for full."""
        if self.type is MethodType.FULL:
            return None
        return self.lora if self.lora is not None else LoRA()


class EarlyStopping(_SpecModel):
    patience: Annotated[int, Field(ge=1, le=100)]


class Hyperparameters(_SpecModel):
    epochs: Annotated[int, Field(ge=1, le=100)] = 3
    max_steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    learning_rate: Annotated[FloatString, Field(gt=0.0, lt=1.0)] = 2e-4
    lr_scheduler: LRScheduler = LRScheduler.COSINE
    warmup_ratio: Annotated[FloatString, Field(ge=0.0, lt=1.0)] = 0.03
    weight_decay: Annotated[FloatString, Field(ge=0.0, le=1.0)] = 0.0
    max_grad_norm: Annotated[FloatString, Field(gt=0.0)] = 1.0
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 8
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    max_seq_length: Annotated[int, Field(ge=16, le=131072)] = 2048
    packing: bool = True
    seed: Annotated[int, Field(ge=0, le=4294967295)] = 42
    early_stopping: EarlyStopping | None = None
    gradual_unfreezing: bool = False

    @model_validator(mode="after")
    def _check_unfreezing(self) -> Hyperparameters:
        if self.gradual_unfreezing and self.epochs < 2:
            raise ValueError(
                "hyperparameters.gradualUnfreezing unfreezes more layers each epoch; it needs epochs >= 2"
            )
        return self


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class Toleration(_SpecModel):
    key: Annotated[str, StringConstraints(max_length=316, pattern=TAINT_KEY)] | None = None
    operator: TolerationOperator = TolerationOperator.EQUAL
    value: Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)] | None = None
    effect: (
        Annotated[str, StringConstraints(pattern=r"^(|NoSchedule|PreferNoSchedule|NoExecute)$")] | None
    ) = None
    toleration_seconds: Annotated[int, Field(ge=0, le=31536000)] | None = None

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if not self.key and self.operator is not TolerationOperator.EXISTS:
            raise ValueError("a toleration without key must use operator Exists")
        if self.operator is TolerationOperator.EXISTS and self.value:
            raise ValueError("a toleration with operator Exists must not set value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies only to effect NoExecute")
        return self


class Resources(_SpecModel):
    gpus: Annotated[int, Field(ge=0, le=16)] = 1
    gpu_type: Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=LABEL_VALUE)] | None = (
        None
    )
    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    cpu: CpuQuantity | None = None
    memory: MemoryQuantity | None = None
    node_selector: Annotated[
        dict[str, Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]], Field(max_length=16)
    ] = Field(default_factory=dict)
    tolerations: Annotated[list[Toleration], Field(max_length=16)] = Field(default_factory=list)
    priority_class_name: Annotated[
        str,
        StringConstraints(
            max_length=253, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$"
        ),
    ] = ""

    @field_validator("node_selector")
    @classmethod
    def _check_label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or len(key) > 316 or not re.fullmatch(TAINT_KEY, key):
                raise ValueError(
                    f"resources.nodeSelector key {key!r} is not a label key such as example.com/pool"
                )
        return value

    @field_validator("priority_class_name")
    @classmethod
    def _check_priority_class(cls, value: str) -> str:
        if value.startswith("system-"):
            raise ValueError(
                "resources.priorityClassName system-cluster-critical and system-node-critical are reserved "
                "for cluster components"
            )
        return value

    @model_validator(mode="after")
    def _check_gpus(self) -> Resources:
        if self.nodes > 1 and self.gpus < 1:
            raise ValueError("resources.nodes greater than 1 needs resources.gpus of 1 or more")
        if self.gpu_type is not None and self.gpus < 1:
            raise ValueError("resources.gpuType needs resources.gpus of 1 or more")
        selected = self.node_selector.get(GPU_PRODUCT_LABEL)
        if self.gpu_type is not None and selected is not None and selected != self.gpu_type:
            raise ValueError(
                f"resources.nodeSelector {GPU_PRODUCT_LABEL} conflicts with resources.gpuType, which sets it"
            )
        return self

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.nodes


class Checkpointing(_SpecModel):
    every_steps: Annotated[int, Field(ge=1, le=1_000_000)] = 200
    keep: Annotated[int, Field(ge=1, le=100)] = 3


class Budget(_SpecModel):
    max_cost: Annotated[DecimalString, Field(gt=0)] | None = None
    # The wire name keeps the acronym upper-case (maxGPUHours), which to_camel would not produce.
    max_gpu_hours: Annotated[Annotated[DecimalString, Field(gt=0)] | None, Field(alias="maxGPUHours")] = None

    @model_validator(mode="after")
    def _check_not_empty(self) -> Budget:
        if self.max_cost is None and self.max_gpu_hours is None:
            raise ValueError("budget needs maxCost or maxGPUHours; remove budget for no limit")
        return self


class Retries(_SpecModel):
    limit: Annotated[int, Field(ge=0, le=20)] = 3


class FineTuneJobSpec(_SpecModel):
    base_model: BaseModelSource
    dataset: Dataset
    output: Output
    storage: Storage
    method: Method = Field(default_factory=Method)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: Resources = Field(default_factory=Resources)
    checkpointing: Checkpointing = Field(default_factory=Checkpointing)
    budget: Budget | None = None
    retries: Retries = Field(default_factory=Retries)
    active_deadline_seconds: Annotated[int, Field(ge=1, le=31536000)] | None = None
    suspend: bool = False
    queue_name: Annotated[
        str, StringConstraints(max_length=63, pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")
    ] = ""

    @model_validator(mode="after")
    def _check_cross_fields(self) -> FineTuneJobSpec:
        if self.method.type is MethodType.QLORA and self.resources.gpus < 1:
            raise ValueError("method.type qlora needs resources.gpus of 1 or more")
        if self.hyperparameters.gradual_unfreezing and self.method.type is not MethodType.FULL:
            raise ValueError("hyperparameters.gradualUnfreezing applies only to method.type full")
        out = self.output.prefix
        data = [self.dataset.train] + [u for u in (self.dataset.validation, self.dataset.test) if u]
        if any(uri.startswith(out) or uri == self.output.uri for uri in data):
            raise ValueError("output.uri must not contain the dataset")
        model = self.base_model.uri
        if self.base_model.scheme == "s3" and (
            out.startswith(_with_slash(model)) or model.startswith(out) or model == self.output.uri
        ):
            raise ValueError("output.uri must not contain or lie inside baseModel.uri")
        return self
