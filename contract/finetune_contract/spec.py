"""The training part of a FineTuneJob spec: model, data, output, method, hyperparameters, checkpoints.

Written once, here. The operator's `FineTuneJobSpec` extends `TrainingSpec` with what only the cluster
needs (storage credentials, resources, budget, retries, queueing); the trainer's `TrainerConfig` extends
it with what only the pod needs (where the claim is mounted, the job's identity). The CRD is generated
from these models (`make generate`), so a field's name, type, bounds, default, description and CEL rules
live in one place. Each CEL rule is mirrored by a pydantic validator next to it, so a body the API server
accepted always parses and a hand-built spec fails the way it would at `kubectl apply`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar, Final

from pydantic import Field, StringConstraints, field_validator, model_validator

from .uris import (
    EMPTY_SEGMENT,
    HF_URI,
    MODEL_FILE,
    NOT_JSONL,
    OUTPUT_FILE,
    PVC_URI,
    S3_OBJECT,
    S3_OUTPUT_PREFIX,
    S3_PREFIX_OR_KEY,
    URI_WILDCARDS,
)
from .wire import Cel, Crd, FloatString, WireModel, float_range, immutable, with_slash

# A key of a Secret's or ConfigMap's data.
DATA_KEY: Final = r"^[-._a-zA-Z0-9]+$"
DNS_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# http(s)://host[:port][/path]: a DNS name or IPv4 address, or an IPv6 address in brackets; port 1-65535.
ENDPOINT: Final = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
ENDPOINT_HOST_PORT: Final = (
    r"^https?://([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/|$)"
)
ALL_LINEAR: Final = "all-linear"
ALL_LINEAR_TYPO: Final = r"(?i)^all([-_.]?linear(s|-layers)?)?$"
DEFAULT_PATIENCE_OFF: Final = 0

Uri = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


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


def _wildcard_rule(field: str, example: str, *, object_: bool) -> Cel:
    what = "names one JSONL object: it" if object_ else "must"
    verb = "must not" if object_ else "not"
    return Cel(
        r"!self.matches(r'[*?#\[\]{}]')",
        f"{field} {what} {verb} contain wildcards or a query (*, ?, #, [ ], {{ }}); e.g. {example}",
        reason="FieldValueInvalid",
    )


def _empty_segment_rule(field: str, example: str, scheme: str = "s3") -> Cel:
    pattern = r"^[a-z0-9]+://.*//" if scheme == "any" else r"^s3://.*//"
    return Cel(
        f"!self.matches(r'{pattern}')",
        f'{field} must not contain an empty path segment ("//"); e.g. {example}',
        reason="FieldValueInvalid",
    )


def _s3_object_rules(field: str, example: str) -> tuple[Cel, ...]:
    return (
        Cel(
            f"self.matches(r'{S3_OBJECT}') && !self.contains('..')",
            f"{field} must be s3://<bucket>/<key> of one JSONL object (only s3:// is supported; the key must "
            f'not end with "/"; no ".."); e.g. {example}',
            reason="FieldValueInvalid",
        ),
        _wildcard_rule(field, example, object_=True),
        _empty_segment_rule(field, example),
        Cel(
            f"!self.matches(r'{NOT_JSONL.replace(chr(10), '')}')",
            f"{field} must be an uncompressed JSONL file (one JSON object per line), not CSV, Parquet, Arrow, "
            f"Excel, a pickle, a model file or an archive; convert it to .jsonl, e.g. {example}",
            reason="FieldValueInvalid",
        ),
    )


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


class SecretRef(WireModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    """Name of the Secret (a DNS subdomain), in the same namespace as the FineTuneJob."""


class SecretKeyRef(WireModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    """Name of the Secret (a DNS subdomain), in the same namespace as the FineTuneJob."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DATA_KEY)] = "HF_TOKEN"
    """The key of the token in the Secret."""


class BaseModelSource(WireModel):
    """The pretrained model to fine-tune. Immutable."""

    crd_rules: ClassVar = (
        Cel(
            "!has(self.tokenSecretRef) || self.uri.startsWith('hf://')",
            "baseModel.tokenSecretRef is the Hugging Face token of an hf:// base model; remove it, or use an "
            "hf:// uri (S3 and PVC models are read with the job's own storage credentials and volume)",
            field_path=".tokenSecretRef",
            reason="FieldValueForbidden",
        ),
    )

    uri: Annotated[
        Uri,
        Cel(
            f"(self.matches(r'{S3_PREFIX_OR_KEY}') || self.matches(r'{PVC_URI}') || self.matches(r'{HF_URI}'))"
            " && !self.contains('..')",
            "baseModel.uri must be s3://<bucket>/<prefix-or-key>, pvc://<claim>/<path> or "
            "hf://<org>/<name>[@<revision>][/<file>.gguf] (bucket: 3-63 lowercase letters, digits, dots and "
            'hyphens; Hub names: letters, digits, "-", "_", ".", no "--" and no "-" or "." at either end; '
            'revision: a branch, tag or commit hash without "/", or refs/pr/<N>; no ".."); e.g. '
            "s3://models/smollm2-135m-instruct/ or hf://HuggingFaceTB/SmolLM2-135M-Instruct@main",
            reason="FieldValueInvalid",
        ),
        # An s3:// model is a directory or one GGUF file; a key like .../model.safetensors or
        # .../config.json would be read as a directory and fail minutes later in the validation pod.
        Cel(
            "!self.startsWith('s3://') || self.endsWith('/') || self.endsWith('.gguf')",
            'baseModel.uri in S3 must be the model directory ending in "/" (config.json, tokenizer, '
            "*.safetensors under it) or one .gguf file, not a single weights or config file; e.g. "
            "s3://models/smollm2-135m-instruct/ or s3://models/smollm2/model.Q4_1.gguf",
            reason="FieldValueInvalid",
        ),
        Cel(
            f"!self.startsWith('pvc://') || !self.matches(r'{MODEL_FILE}')",
            "baseModel.uri on a PVC must be the model directory or one .gguf file, not a single weights or "
            "config file; e.g. pvc://models/smollm2-135m-instruct",
            reason="FieldValueInvalid",
        ),
        Cel(
            r"!self.matches(r'[*?#\[\]{}]')",
            "baseModel.uri names one model: it must not contain wildcards or a query (*, ?, #, [ ], { }); "
            "e.g. s3://models/smollm2-135m-instruct/",
            reason="FieldValueInvalid",
        ),
        _empty_segment_rule("baseModel.uri", "s3://models/smollm2-135m-instruct/", scheme="any"),
    ]
    """Where the base model is. One of: s3://<bucket>/<prefix>/ (a directory in Hugging Face format:
    config.json, tokenizer, *.safetensors; the trailing "/" is required), s3://<bucket>/<key>.gguf
    (a single GGUF file, dequantized on load), pvc://<claim>/<path> (a PersistentVolumeClaim in the
    job's namespace, mounted read-only; the path may be empty for the claim's root), or
    hf://<org>/<name>[@<revision>][/<file>.gguf] (a Hugging Face Hub repository, reached through the
    operator's Hub endpoint, e.g. an on-prem mirror; its config, tokenizer and safetensors weights
    are downloaded, or only the named .gguf file. The revision is a branch, tag or commit hash
    without "/", or refs/pr/<N>; without one, main: pin a commit for reproducible runs).
    No "..", "//", wildcards or query. Only safetensors and GGUF weights are loaded; remote code
    never runs. Example: s3://models/smollm2-135m-instruct/, hf://HuggingFaceTB/SmolLM2-135M-Instruct."""

    token_secret_ref: SecretKeyRef | None = None
    """hf:// only: the key of a Secret in the job's namespace that holds a Hugging Face access token
    (read scope), for private and gated repositories. The validation and trainer pods read it as
    HF_TOKEN (secretKeyRef); the operator never reads it. Unset: no token is sent."""

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


class Dataset(WireModel):
    """The training data: JSONL files in S3 (only s3:// is supported), one example per line. Immutable.
    Evaluation data comes from validation, or from validationSplit, or (neither set) about 10% of train.
    An optional test set is scored for exact match at the end."""

    crd_rules: ClassVar = (
        Cel(
            "!(has(self.validation) && has(self.validationSplit))",
            "dataset.validation and dataset.validationSplit exclude each other; set only one of them",
            field_path=".validationSplit",
            reason="FieldValueForbidden",
        ),
        Cel(
            "!has(self.validation) || self.validation != self.train",
            "dataset.validation must differ from dataset.train, or the evaluation measures memorization; use "
            "another file or validationSplit",
            field_path=".validation",
            reason="FieldValueInvalid",
        ),
        Cel(
            "!has(self.test) || (self.test != self.train && (!has(self.validation) || self.test != "
            "self.validation))",
            "dataset.test must differ from dataset.train and dataset.validation, or the final score measures "
            "memorization or the early-stopping data; use a separate held-out file",
            field_path=".test",
            reason="FieldValueInvalid",
        ),
    )

    train: Annotated[Uri, *_s3_object_rules("dataset.train", "s3://datasets/support/train.jsonl")]
    """The training set: s3://<bucket>/<key> of one JSONL object (only s3:// is supported). Each line is
    {"messages": [{"role": ..., "content": ...}, ...]} (chat), {"prompt": ..., "completion": ...}
    (prompt-completion) or {"text": ...} (text). Uncompressed JSONL only (not CSV, Parquet or an
    archive); no wildcards. Example: s3://datasets/support/train.jsonl."""

    validation: (
        Annotated[Uri, *_s3_object_rules("dataset.validation", "s3://datasets/support/val.jsonl")] | None
    ) = None
    """Optional held-out set in the same format as train: s3://<bucket>/<key> of one JSONL object (only
    s3:// is supported). Excludes validationSplit. Example: s3://datasets/support/val.jsonl."""

    validation_split: (
        Annotated[FloatString, *float_range("dataset.validationSplit", gt=0.0, le=0.5, example="0.1")] | None
    ) = None
    """Fraction of train held out for evaluation when validation is not set, as a decimal string in
    (0, 0.5], e.g. "0.1". Excludes validation. When neither is set, 10% of train is held out, but at
    least 50 rows (at most 20% of a small set) and at most 1,000, so the evaluation loss means something.
    The split is deterministic (hyperparameters.seed)."""

    format: DatasetFormat = DatasetFormat.AUTO
    """How each JSONL line is read. chat: {"messages": [...]}, rendered with the model's chat template,
    loss on assistant turns only. prompt-completion: {"prompt", "completion"}, loss on the completion
    only. text: {"text"}, loss on all tokens. auto (default): detected from the keys of the first line."""

    test: Annotated[Uri, *_s3_object_rules("dataset.test", "s3://datasets/support/test.jsonl")] | None = None
    """Optional held-out test set: s3://<bucket>/<key> of one JSONL object (only s3:// is supported) in
    the same format as train, with reference answers. Scored at the end by exact match of greedy
    generations, tuned vs base model (status.metrics.exactMatch, baseExactMatch); never trained on
    and never used for early stopping. Must differ from train and validation.
    Example: s3://datasets/support/test.jsonl."""

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


class Output(WireModel):
    """Where the results go. Immutable."""

    uri: Annotated[
        Uri,
        Cel(
            f"self.matches(r'{S3_OUTPUT_PREFIX}') && !self.contains('..')",
            'output.uri must be s3://<bucket>/<prefix>/ with a non-empty prefix (only s3:// is supported; no ".."); '
            "e.g. s3://adapters/team-a/support-bot/",
            reason="FieldValueInvalid",
        ),
        Cel(
            r"!self.matches(r'[*?#\[\]{}]')",
            "output.uri must not contain wildcards or a query (*, ?, #, [ ], { }); e.g. "
            "s3://adapters/team-a/support-bot/",
            reason="FieldValueInvalid",
        ),
        _empty_segment_rule("output.uri", "s3://adapters/team-a/support-bot/"),
        Cel(
            f"!self.matches(r'{OUTPUT_FILE}')",
            "output.uri is a prefix (a directory) the job writes adapter/, checkpoints/ and reports/ under, not "
            "a file; drop the file name, e.g. s3://adapters/team-a/support-bot/",
            reason="FieldValueInvalid",
        ),
    ]
    """An S3 prefix (only s3:// is supported) the job owns: s3://<bucket>/<prefix>/. The job writes
    adapter/ (adapter_config.json, adapter_model.safetensors, tokenizer, model card; loads with
    peft and serves with vLLM --lora-modules), checkpoints/step-N/ and reports/ under it. A trailing
    "/" is implied; it is a prefix, not a file name. It must not contain, or lie inside, the base
    model or the dataset.
    Example: s3://adapters/team-a/support-bot/."""

    overwrite: bool = False
    """Take over an output prefix that another FineTuneJob claimed or that holds a published
    adapter: its checkpoints are not resumed and its adapter is replaced when this job publishes.
    Without it such a prefix is refused at validation (InvalidOutput, naming the owner)."""

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
        return with_slash(self.uri)


class S3Location(WireModel):
    """Where the S3-compatible object store is (credentials come from the environment)."""

    endpoint: (
        Annotated[
            str,
            StringConstraints(max_length=512, pattern=ENDPOINT),
            Crd(pattern=None),
            Cel(
                f"self.matches(r'{ENDPOINT}')",
                "storage.endpoint must be an http:// or https:// URL without credentials, query or fragment, "
                "e.g. http://minio.storage:9000",
                reason="FieldValueInvalid",
            ),
            # Host: a DNS name or IPv4 address, or an IPv6 address in brackets; port 1-65535.
            Cel(
                f"!self.matches(r'{ENDPOINT}') || self.matches(r'{ENDPOINT_HOST_PORT}')",
                "storage.endpoint must be http(s)://<host>[:<port>] with a host name or IP address and a port "
                "from 1 to 65535, e.g. http://minio.storage:9000",
                reason="FieldValueInvalid",
            ),
        ]
        | None
    ) = None
    """The S3 endpoint URL, http(s)://<host>[:<port>] (port 1-65535), e.g. http://minio.storage:9000.
    Unset: AWS S3 in region. A custom endpoint is addressed path-style (http://host/bucket/key)."""

    region: Annotated[str, StringConstraints(max_length=64, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")] = (
        "us-east-1"
    )
    """The S3 region used for signing requests, e.g. us-east-1 (the default; most S3-compatible stores
    accept it)."""

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(ENDPOINT_HOST_PORT, value):
            raise ValueError(
                "storage.endpoint must be http(s)://<host>[:<port>] with a host name or IP address and a port "
                "from 1 to 65535"
            )
        return value


TargetModule = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][-A-Za-z0-9_.]*$"),
    Crd(description="A module name or suffix, e.g. q_proj, or all-linear."),
    # all_linear or ALL-LINEAR would be taken as a module name that matches nothing.
    Cel(
        f"self == 'all-linear' || !self.matches('{ALL_LINEAR_TYPO}')",
        'method.lora.targetModules spells every linear layer as all-linear (lowercase, with "-"); write '
        "all-linear or module names such as q_proj",
        reason="FieldValueInvalid",
    ),
]


class LoRA(WireModel):
    """LoRA settings for method.type lora and qlora (forbidden for full). Unset: the defaults below
    (r 16, alpha 32, dropout "0.05", targetModules [all-linear], rsLora true)."""

    r: Annotated[int, Field(ge=1, le=1024)] = 16
    """Rank of the adapter matrices (1-1024, default 16). Higher learns more and costs more memory."""

    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    """Scaling numerator; the update is scaled by alpha/sqrt(r) with rsLora (the default), else alpha/r
    (1-4096, default 32)."""

    dropout: Annotated[FloatString, *float_range("method.lora.dropout", ge=0.0, lt=1.0, example="0.05")] = (
        Field(default="0.05", validate_default=True)
    )
    """Dropout on the adapter input, a decimal string in [0, 1), default "0.05"."""

    target_modules: Annotated[
        list[TargetModule],
        Field(min_length=1, max_length=64),
        Crd(x__kubernetes__list__type="set"),
        Cel(
            "!('all-linear' in self) || self.size() == 1",
            "method.lora.targetModules lists either all-linear alone or module names; remove all-linear or "
            "the other names",
            reason="FieldValueInvalid",
        ),
    ] = Field(default_factory=lambda: [ALL_LINEAR])
    """Module names (or name suffixes) that get adapters, e.g. [q_proj, v_proj]; or [all-linear]
    (default) for every linear layer except the output head. all-linear stands alone and is
    spelled exactly so (all_linear or ALL-LINEAR would match no module and are refused)."""

    rs_lora: bool = True
    """Rank-stabilized LoRA (default true): scale the update by alpha/sqrt(r) instead of alpha/r, so
    higher ranks keep learning at the same learning rate. Written as use_rslora in
    adapter_config.json, which peft and vLLM read; false gives classic LoRA scaling."""

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


class Method(WireModel):
    """The fine-tuning method and its settings. Immutable."""

    crd_rules: ClassVar = (
        Cel(
            "!has(self.lora) || self.type in ['lora', 'qlora']",
            "method.lora applies only to method.type lora or qlora; remove method.lora for a full fine-tune",
            field_path=".lora",
            reason="FieldValueForbidden",
        ),
    )

    type: MethodType = MethodType.LORA
    """lora (default): train low-rank adapters on a frozen bf16/fp32 base model. qlora: the same on a
    4-bit (NF4) quantized base model, for less GPU memory; needs resources.gpus >= 1. full: update
    every weight; output adapter/ then holds the full model in safetensors."""

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


class EarlyStopping(WireModel):
    """Optional: stop when the validation loss has not improved for patience evaluations in a row; the
    best evaluation's weights are published (as they are without early stopping). Evaluation runs twice
    per epoch, at least six times per run, and at the last step."""

    patience: Annotated[int, Field(ge=1, le=100)]
    """Evaluations without improvement of the evaluation loss before stopping (1-100)."""


class Hyperparameters(WireModel):
    """Training hyperparameters. Floats are strings (e.g. "2e-4") so they round-trip exactly. Every field
    may be omitted: epochs, learningRate, batchSize, gradientAccumulationSteps and the warm-up are then
    chosen from the data during validation (status.resolved.hyperparameters shows what runs). Immutable."""

    crd_rules: ClassVar = (
        # Epoch e of E trains the top (e+1)/E of the layers: with one epoch every layer trains from
        # the start and the setting does nothing.
        Cel(
            "!has(self.gradualUnfreezing) || !self.gradualUnfreezing || !has(self.epochs) || self.epochs >= 2",
            "hyperparameters.gradualUnfreezing unfreezes more layers each epoch, so it needs epochs of 2 or "
            "more; raise epochs or set gradualUnfreezing to false",
            field_path=".gradualUnfreezing",
            reason="FieldValueInvalid",
        ),
    )

    epochs: Annotated[int, Field(ge=1, le=100)] | None = None
    """Passes over the training set (1-100). Unset: chosen from the data, 3 by default, more for small
    sets so a run gets about 100 optimizer steps (at most 10), fewer for large ones (at most about 25,000
    examples seen, at least 1); status.resolved.hyperparameters shows the value used."""

    max_steps: Annotated[int, Field(ge=1, le=10_000_000), Crd(format="int64")] | None = None
    """Optional cap on optimizer steps; when set, training stops after this many steps even if epochs
    remain (useful for smoke tests and fixed compute budgets)."""

    learning_rate: (
        Annotated[FloatString, *float_range("hyperparameters.learningRate", gt=0.0, lt=1.0, example="2e-4")]
        | None
    ) = None
    """Peak learning rate, a decimal or exponent string in (0, 1), e.g. "2e-4" or "0.0002". Unset: "2e-4"
    for lora and qlora, "2e-5" for full."""

    lr_scheduler: LRScheduler = LRScheduler.COSINE
    """How the learning rate changes after warmup (default cosine). The names are the transformers
    SchedulerType names with "-" for "_"."""

    warmup_ratio: (
        Annotated[FloatString, *float_range("hyperparameters.warmupRatio", ge=0.0, lt=1.0, example="0.03")]
        | None
    ) = None
    """Fraction of the steps spent warming the learning rate up from 0, in [0, 1), e.g. "0.03". Unset: 3%
    of the steps, but at least 10 steps (at most 10% of a short run)."""

    weight_decay: Annotated[
        FloatString, *float_range("hyperparameters.weightDecay", ge=0.0, le=1.0, example="0.01")
    ] = Field(default="0.0", validate_default=True)
    """AdamW weight decay, in [0, 1], default "0.0"."""

    max_grad_norm: Annotated[
        FloatString, *float_range("hyperparameters.maxGradNorm", gt=0.0, example="1.0")
    ] = Field(default="1.0", validate_default=True)
    """Gradient clipping: before each optimizer step the gradients are scaled down so that their
    global L2 norm is at most this, a decimal string greater than 0, default "1.0"."""

    batch_size: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Sequences per GPU (per process) per forward pass (1-1024). The effective batch is
    batchSize * gradientAccumulationSteps * GPUs * nodes. Unset: an effective batch chosen from the
    data (1-8 for sets under 128 rows, 8 up to 4,000 rows, then growing to 64), split into forward
    passes of at most 8,192 tokens (at the 95th percentile length)."""

    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Forward passes whose gradients are summed before each optimizer step (1-1024). Unset: 1 when
    batchSize is set; otherwise what makes up the automatic effective batch when the memory cap keeps
    part of it out of one forward pass."""

    max_seq_length: Annotated[int, Field(ge=16, le=131072)] = 2048
    """Tokens per sequence; longer examples are truncated (16-131072, default 2048)."""

    packing: bool = True
    """Pack several examples into each sequence without padding (default true). Attention never crosses
    example boundaries, so packing changes speed, not results."""

    seed: Annotated[int, Field(ge=0, le=4294967295), Crd(format="int64")] = 42
    """Random seed for initialization, shuffling and the validation split (0-4294967295, default 42)."""

    early_stopping: EarlyStopping | None = None

    gradual_unfreezing: bool = False
    """Full fine-tunes only (method.type full; refused for lora and qlora): train the top decoder
    layers first and unfreeze downwards epoch by epoch; epoch e of E trains the top (e+1)/E of the
    layers, the last epoch all of them, so it needs epochs >= 2. Default false: every layer trains
    from the start."""

    @model_validator(mode="after")
    def _check_unfreezing(self) -> Hyperparameters:
        if self.gradual_unfreezing and self.epochs is not None and self.epochs < 2:
            raise ValueError(
                "hyperparameters.gradualUnfreezing unfreezes more layers each epoch; it needs epochs >= 2"
            )
        return self

    @property
    def patience(self) -> int:
        """Evaluations without improvement before stopping; 0 when early stopping is off."""
        return self.early_stopping.patience if self.early_stopping is not None else DEFAULT_PATIENCE_OFF


class Checkpointing(WireModel):
    """Checkpoints to output.uri/checkpoints/step-N/ (complete when step-N/COMPLETE exists). Retries,
    preemption and resume after suspend continue from the last complete checkpoint. Immutable."""

    every_steps: Annotated[int, Field(ge=1, le=1_000_000), Crd(format="int64")] = 200
    """Save a checkpoint every this many optimizer steps (1-1000000, default 200), and always at the end."""

    keep: Annotated[int, Field(ge=1, le=100)] = 3
    """Complete checkpoints kept; older ones are deleted (1-100, default 3)."""


class TrainingSpec(WireModel):
    """What is trained, on what, how, and where the result goes: the part of a FineTuneJob the trainer
    reads. Both the API (`FineTuneJobSpec`) and the trainer's config (`TrainerConfig`) extend it."""

    base_model: Annotated[BaseModelSource, immutable("baseModel")]
    dataset: Annotated[Dataset, immutable("dataset")]
    output: Annotated[Output, immutable("output")]
    method: Annotated[Method, immutable("method")] = Field(default_factory=Method)
    hyperparameters: Annotated[Hyperparameters, immutable("hyperparameters")] = Field(
        default_factory=Hyperparameters
    )
    checkpointing: Annotated[Checkpointing, immutable("checkpointing")] = Field(default_factory=Checkpointing)

    @model_validator(mode="after")
    def _check_training(self) -> TrainingSpec:
        if self.hyperparameters.gradual_unfreezing and self.method.type is not MethodType.FULL:
            raise ValueError("hyperparameters.gradualUnfreezing applies only to method.type full")
        out = self.output.prefix
        data = [self.dataset.train] + [u for u in (self.dataset.validation, self.dataset.test) if u]
        if any(uri.startswith(out) or uri == self.output.uri for uri in data):
            raise ValueError("output.uri must not contain the dataset")
        model = self.base_model.uri
        if self.base_model.scheme == "s3" and (
            out.startswith(with_slash(model)) or model.startswith(out) or model == self.output.uri
        ):
            raise ValueError("output.uri must not contain or lie inside baseModel.uri")
        return self

    @property
    def output_prefix(self) -> str:
        return self.output.prefix
