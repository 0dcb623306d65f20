"""The FineTuneJob spec: the contract's `TrainingSpec` plus what only the cluster needs.

The CRD (crds/finetune.dev_finetunejobs.yaml) is generated from these models (`make generate`,
`finetune_operator.api.crd`), so a field is declared once. Spec models forbid unknown fields: the API
server prunes fields the CRD does not know, so an unknown field here means the CRD is newer than the
operator, and silently dropping a user's setting (say a new limit) would be worse than refusing the job
loudly.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final

from finetune_contract.spec import (
    BaseModelSource,
    Checkpointing,
    Dataset,
    DatasetFormat,
    EarlyStopping,
    Hyperparameters,
    LoRA,
    LRScheduler,
    Method,
    MethodType,
    Output,
    S3Location,
    SecretKeyRef,
    SecretRef,
    TrainingSpec,
)
from finetune_contract.wire import (
    DECIMAL_STRING_PATTERN,
    FLOAT_STRING_PATTERN,
    Cel,
    Crd,
    DecimalString,
    WireModel,
    immutable,
)
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

__all__ = [
    "DECIMAL_STRING_PATTERN",
    "FLOAT_STRING_PATTERN",
    "BaseModelSource",
    "Budget",
    "Checkpointing",
    "Dataset",
    "DatasetFormat",
    "EarlyStopping",
    "FineTuneJobSpec",
    "Hyperparameters",
    "LRScheduler",
    "LoRA",
    "Method",
    "MethodType",
    "Output",
    "Resources",
    "Retries",
    "SecretKeyRef",
    "Storage",
    "Toleration",
    "quantity_value",
]

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
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
# A qualified name (optional DNS-subdomain prefix and "/"), or empty: taint and label keys.
TAINT_KEY: Final = (
    r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
)
LABEL_KEY: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


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
    str,
    AfterValidator(_check_cpu),
    _quantity(CPU_QUANTITY),
    StringConstraints(max_length=32),
    Crd(type=None, x__kubernetes__int__or__string=True, pattern=CPU_QUANTITY),
]
MemoryQuantity = Annotated[
    str,
    AfterValidator(_check_memory),
    _quantity(MEMORY_QUANTITY),
    StringConstraints(max_length=32),
    Crd(type=None, x__kubernetes__int__or__string=True, pattern=MEMORY_QUANTITY),
]
LabelValue = Annotated[
    str,
    StringConstraints(max_length=63, pattern=LABEL_VALUE),
    Crd(description="A label value (at most 63 characters)."),
]


class Storage(S3Location):
    """The S3-compatible object store that holds the dataset, the outputs and s3:// base models (AWS S3,
    MinIO, SeaweedFS, Ceph RGW ...). Immutable."""

    credentials_secret_ref: SecretRef
    """A Secret in the job's namespace with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    Referenced, never copied: the validation and trainer pods read it as environment variables."""


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class Toleration(WireModel):
    """A core/v1 Toleration."""

    crd_rules: ClassVar = (
        Cel(
            "(has(self.key) && self.key != '') || self.operator == 'Exists'",
            "a toleration without key must use operator Exists (it then tolerates every taint)",
            field_path=".operator",
            reason="FieldValueInvalid",
        ),
        Cel(
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "a toleration with operator Exists must not set value",
            field_path=".value",
            reason="FieldValueForbidden",
        ),
        Cel(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds applies only to effect NoExecute",
            field_path=".tolerationSeconds",
            reason="FieldValueForbidden",
        ),
    )

    key: Annotated[str, StringConstraints(max_length=316, pattern=TAINT_KEY)] | None = None
    """The taint key to tolerate; empty (with operator Exists) matches every key."""
    operator: TolerationOperator = TolerationOperator.EQUAL
    """Equal (default) matches key and value; Exists matches the key alone."""
    value: Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)] | None = None
    """The taint value to match with operator Equal."""
    effect: (
        Annotated[
            str,
            StringConstraints(pattern=r"^(|NoSchedule|PreferNoSchedule|NoExecute)$"),
            Crd(pattern=None, enum=["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
        ]
        | None
    ) = None
    """The taint effect to match; empty matches every effect."""
    toleration_seconds: Annotated[int, Field(ge=0, le=31536000), Crd(format="int64")] | None = None
    """With effect NoExecute, how long the pod stays bound after the taint appears."""

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if not self.key and self.operator is not TolerationOperator.EXISTS:
            raise ValueError("a toleration without key must use operator Exists")
        if self.operator is TolerationOperator.EXISTS and self.value:
            raise ValueError("a toleration with operator Exists must not set value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies only to effect NoExecute")
        return self


def _int_or_quantity_rule(field: str, int_check: str, quantity_check: str, message: str) -> Cel:
    return Cel(
        f"!has(self.{field}) || (type(self.{field}) == int ? {int_check} : {quantity_check})",
        message,
        field_path=f".{field}",
        reason="FieldValueInvalid",
    )


class Resources(WireModel):
    """Compute for the trainer pods (per node). The validation pod is CPU-only and small. Immutable."""

    crd_rules: ClassVar = (
        Cel(
            "!has(self.nodes) || self.nodes == 1 || (has(self.gpus) && self.gpus >= 1)",
            "resources.nodes greater than 1 is distributed GPU training; set resources.gpus to 1 or more, or "
            "nodes to 1",
            field_path=".gpus",
            reason="FieldValueInvalid",
        ),
        Cel(
            "!has(self.gpuType) || (has(self.gpus) && self.gpus >= 1)",
            "resources.gpuType needs resources.gpus of 1 or more; remove gpuType for a CPU-only job",
            field_path=".gpuType",
            reason="FieldValueInvalid",
        ),
        # int-or-string: cpu: 8 arrives as an int, cpu: "500m" as a string.
        _int_or_quantity_rule(
            "cpu",
            "self.cpu > 0",
            "(!isQuantity(self.cpu) || quantity(self.cpu).isGreaterThan(quantity('0')))",
            'resources.cpu must be greater than 0, e.g. 8 or "500m"; remove it for no CPU request',
        ),
        _int_or_quantity_rule(
            "memory",
            "self.memory > 0",
            "(!isQuantity(self.memory) || quantity(self.memory).isGreaterThan(quantity('0')))",
            "resources.memory must be greater than 0, e.g. 64Gi; remove it for no memory request",
        ),
        # A quantity without a unit is bytes (CPU: whole cores), so "memory: 64" asks for 64 bytes and
        # "cpu: 8000" for 8000 cores: both are unit mistakes that would leave the pod unable to run.
        _int_or_quantity_rule(
            "memory",
            "(self.memory <= 0 || self.memory >= 268435456)",
            "(!isQuantity(self.memory) || !quantity(self.memory).isGreaterThan(quantity('0')) || "
            "quantity(self.memory).compareTo(quantity('256Mi')) >= 0)",
            "resources.memory must be at least 256Mi; a number without a unit is bytes, so write e.g. 64Gi, "
            "not 64",
        ),
        Cel(
            "!has(self.memory) || type(self.memory) == int || isQuantity(self.memory)",
            "resources.memory must be a Kubernetes quantity with a unit Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) "
            "or k, M, G, T, P, E (powers of 1000), e.g. 64Gi",
            field_path=".memory",
            reason="FieldValueInvalid",
        ),
        _int_or_quantity_rule(
            "cpu",
            "self.cpu <= 1024",
            "(!isQuantity(self.cpu) || quantity(self.cpu).compareTo(quantity('1024')) <= 0)",
            'resources.cpu is whole CPUs per trainer pod, at most 1024; for thousandths of a CPU add "m", '
            'e.g. "500m" or 8',
        ),
        # gpuType becomes the node selector nvidia.com/gpu.product; a second, different value for the
        # same label in nodeSelector would make the pods unschedulable (or silently lose one of them).
        Cel(
            "!has(self.gpuType) || !has(self.nodeSelector) || !('nvidia.com/gpu.product' in self.nodeSelector) "
            "|| self.nodeSelector['nvidia.com/gpu.product'] == self.gpuType",
            "resources.nodeSelector nvidia.com/gpu.product conflicts with resources.gpuType, which sets that "
            "label; remove the key from nodeSelector and keep gpuType",
            field_path=".nodeSelector",
            reason="FieldValueInvalid",
        ),
    )

    gpus: Annotated[int, Field(ge=0, le=16)] = 1
    """GPUs per node (nvidia.com/gpu), 0-16, default 1. 0 trains on CPU (tiny models and tests only;
    not with qlora or nodes > 1)."""
    gpu_type: Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=LABEL_VALUE)] | None = (
        None
    )
    """Optional GPU model, a label value such as NVIDIA-H100-80GB-HBM3. The trainer pods get the node
    selector nvidia.com/gpu.product=<gpuType> (the label NVIDIA GPU Feature Discovery sets), and the
    cost estimate uses this type's price. Unset: any GPU, priced at the default rate."""
    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    """Nodes to train on (1-64, default 1); more than 1 runs one process per GPU on each node."""
    cpu: CpuQuantity | None = None
    """CPU per trainer pod (request and limit), a quantity such as 8 or "500m", greater than 0 and at
    most 1024 (a number without "m" is whole CPUs). Unset: no CPU request or limit is set."""
    memory: MemoryQuantity | None = None
    """Memory per trainer pod (request and limit), a quantity such as 64Gi, at least 256Mi (a number
    without a unit is bytes; units Ki..Ei or k, M, G, T, P, E). Unset: no memory request or
    limit is set. The trainer also gets an emptyDir scratch volume for the model and dataset."""
    node_selector: Annotated[
        dict[str, LabelValue],
        Field(max_length=16),
        Cel(
            f"self.all(k, k.size() <= 316 && k.matches('{LABEL_KEY}'))",
            "resources.nodeSelector keys must be label keys such as pool or example.com/pool",
            reason="FieldValueInvalid",
        ),
    ] = Field(default_factory=dict)
    """Extra node labels the trainer pods must match, e.g. pool=gpu; merged with the gpuType selector
    (set the GPU model with gpuType, not with nvidia.com/gpu.product here)."""
    tolerations: Annotated[
        list[Toleration], Field(max_length=16), Crd(x__kubernetes__list__type="atomic")
    ] = Field(default_factory=list)
    """Tolerations added to the trainer pods, e.g. for tainted GPU nodes (core/v1 Toleration)."""
    priority_class_name: Annotated[
        str,
        StringConstraints(
            max_length=253, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$"
        ),
        Cel(
            "!self.startsWith('system-')",
            "resources.priorityClassName system-cluster-critical and system-node-critical are reserved for "
            "cluster components, which a training job would preempt; use a PriorityClass of your own, e.g. "
            "training-high",
            reason="FieldValueForbidden",
        ),
    ] = ""
    """PriorityClass of the trainer pods (a DNS subdomain); empty uses the cluster default. Not
    system-cluster-critical or system-node-critical, which are for cluster components."""

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


class Budget(WireModel):
    """Optional spending limits. When the estimate before training, or the usage during it, passes a
    limit, the job fails with condition BudgetExceeded (the trainer checkpoints first). Immutable."""

    crd_schema: ClassVar = Crd(minProperties=1)

    max_cost: (
        Annotated[
            DecimalString,
            Field(gt=0),
            Cel(
                "double(self) > 0.0",
                "budget.maxCost must be greater than 0; remove it for no cost limit",
                reason="FieldValueInvalid",
            ),
        ]
        | None
    ) = None
    """Most the job may cost, a decimal string in the unit of the operator's GPU price table
    (e.g. dollars), greater than 0, e.g. "50" or "12.50"."""
    # The wire name keeps the acronym upper-case (maxGPUHours), which to_camel would not produce.
    max_gpu_hours: Annotated[
        Annotated[
            DecimalString,
            Field(gt=0),
            Cel(
                "double(self) > 0.0",
                "budget.maxGPUHours must be greater than 0; remove it for no GPU-hour limit",
                reason="FieldValueInvalid",
            ),
        ]
        | None,
        Field(alias="maxGPUHours"),
    ] = None
    """Most GPU-hours the job may use (GPUs x hours, all attempts), a decimal string greater than 0, e.g. "10"."""

    @model_validator(mode="after")
    def _check_not_empty(self) -> Budget:
        if self.max_cost is None and self.max_gpu_hours is None:
            raise ValueError("budget needs maxCost or maxGPUHours; remove budget for no limit")
        return self


class Retries(WireModel):
    """How often a failed trainer attempt is retried. Invalid input is never retried; a preempted
    attempt (node drain, eviction) resumes without counting. Immutable."""

    limit: Annotated[int, Field(ge=0, le=20)] = 3
    """Failed attempts retried before the job fails with reason RetriesExhausted (0-20, default 3)."""


def _optional_immutable(field: str) -> Cel:
    # A rule on the field itself would not run when the field is added or removed (transition rules need
    # both the old and the new value), so optional fields are held still from spec.
    return Cel(
        f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})",
        f"{field} is immutable; create a new FineTuneJob",
        field_path=f".{field}",
        reason="FieldValueForbidden",
    )


def _output_prefix(expr: str) -> str:
    return f"({expr}.endsWith('/') ? {expr} : {expr} + '/')"


_OUT = _output_prefix("self.output.uri")


class FineTuneJobSpec(TrainingSpec):
    """What to fine-tune, on which data, with which method and resources. Every field except suspend is
    immutable after creation (a running job must not change under its own checkpoints and cost
    estimate): create a new FineTuneJob to change one. suspend may change at any time."""

    crd_rules: ClassVar = (
        Cel(
            "self.method.type != 'qlora' || (has(self.resources) && has(self.resources.gpus) && "
            "self.resources.gpus >= 1)",
            "method.type qlora quantizes the base model with bitsandbytes, which needs a GPU; set resources.gpus "
            "to 1 or more, or use method.type lora",
            field_path=".resources.gpus",
            reason="FieldValueInvalid",
        ),
        Cel(
            f"!(self.dataset.train.startsWith({_OUT}) || self.dataset.train == self.output.uri "
            f"|| (has(self.dataset.validation) && (self.dataset.validation.startsWith({_OUT}) "
            "|| self.dataset.validation == self.output.uri)) "
            f"|| (has(self.dataset.test) && (self.dataset.test.startsWith({_OUT}) "
            "|| self.dataset.test == self.output.uri)))",
            "output.uri must not contain the dataset (dataset.train, dataset.validation, dataset.test); the job "
            "writes under output.uri, so choose an output prefix outside the dataset's location",
            field_path=".output.uri",
            reason="FieldValueInvalid",
        ),
        Cel(
            "!self.baseModel.uri.startsWith('s3://') "
            f"|| !({_OUT}.startsWith({_output_prefix('self.baseModel.uri')}) "
            f"|| self.baseModel.uri.startsWith({_OUT}) || self.baseModel.uri == self.output.uri)",
            "output.uri must not contain or lie inside baseModel.uri; the job writes under output.uri, so choose "
            "an output prefix apart from the base model",
            field_path=".output.uri",
            reason="FieldValueInvalid",
        ),
        # Cross-field (hyperparameters and method), so on spec; both objects default to {}.
        Cel(
            "!has(self.hyperparameters) || !has(self.hyperparameters.gradualUnfreezing) || "
            "!self.hyperparameters.gradualUnfreezing || (has(self.method) && has(self.method.type) && "
            "self.method.type == 'full')",
            "hyperparameters.gradualUnfreezing applies only to method.type full (lora and qlora train adapters "
            "on a frozen base model); set it to false or use method.type full",
            field_path=".hyperparameters.gradualUnfreezing",
            reason="FieldValueForbidden",
        ),
        _optional_immutable("budget"),
        _optional_immutable("activeDeadlineSeconds"),
        _optional_immutable("queueName"),
        _optional_immutable("workloadPriorityClassName"),
        Cel(
            "!has(self.workloadPriorityClassName) || self.workloadPriorityClassName == '' || "
            "(has(self.queueName) && self.queueName != '')",
            "workloadPriorityClassName is a Kueue WorkloadPriorityClass and needs queueName (a Kueue "
            "LocalQueue); set queueName, or use resources.priorityClassName for a pod PriorityClass",
            field_path=".workloadPriorityClassName",
            reason="FieldValueForbidden",
        ),
    )

    storage: Annotated[Storage, immutable("storage")]
    resources: Annotated[Resources, immutable("resources")] = Field(default_factory=Resources)
    budget: Budget | None = None
    retries: Annotated[Retries, immutable("retries")] = Field(default_factory=Retries)
    active_deadline_seconds: Annotated[int, Field(ge=1, le=31536000), Crd(format="int64")] | None = None
    """Optional limit in seconds on the job's running time, counted from the start of training and paused
    while suspended; when passed, the job fails with reason DeadlineExceeded. Immutable."""
    suspend: bool = False
    """true pauses the job: the trainer saves a checkpoint, its pods go away and the GPUs are freed.
    false again resumes from the last complete checkpoint. The only field that may change after creation."""
    queue_name: Annotated[
        str, StringConstraints(max_length=63, pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")
    ] = ""
    """Optional Kueue LocalQueue in the job's namespace; the trainer Job gets the label
    kueue.x-k8s.io/queue-name and waits for Kueue's admission (phase Queued). Immutable."""
    workload_priority_class_name: Annotated[
        str,
        StringConstraints(
            max_length=253, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$"
        ),
    ] = ""
    """Optional Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class on the trainer Job): a job of
    higher priority is admitted first and may preempt a lower one in its ClusterQueue, which saves a
    checkpoint and resumes from it when readmitted. Needs queueName. Immutable."""

    @model_validator(mode="after")
    def _check_cross_fields(self) -> FineTuneJobSpec:
        if self.method.type is MethodType.QLORA and self.resources.gpus < 1:
            raise ValueError("method.type qlora needs resources.gpus of 1 or more")
        if self.workload_priority_class_name and not self.queue_name:
            raise ValueError("workloadPriorityClassName needs queueName (a Kueue LocalQueue)")
        return self
