"""The FineTuneJob status as pydantic models.

Status is written only by the operator. Unlike the spec, unknown fields are ignored: a newer operator
may have written fields an older one (during a rolling upgrade) does not know, and that must not stop
it from reading the rest. Numbers that are floats are decimal strings, formatted by the operator, so the
printer columns (LOSS, COST) show a fixed precision.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

Short = Annotated[str, StringConstraints(max_length=32)]
Uri = Annotated[str, StringConstraints(max_length=1100)]
Message = Annotated[str, StringConstraints(max_length=32768)]


class _StatusModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
    )


class Phase(StrEnum):
    """The one-word summary for `kubectl get`; see conditions.derive_phase."""

    PENDING = "Pending"
    VALIDATING = "Validating"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_StatusModel):
    """metav1.Condition."""

    type: Annotated[str, StringConstraints(max_length=316)]
    status: ConditionStatus
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    last_transition_time: datetime
    reason: Annotated[
        str,
        StringConstraints(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    message: Message = ""


class Progress(_StatusModel):
    step: Annotated[int, Field(ge=0)] | None = None
    total_steps: Annotated[int, Field(ge=0)] | None = None
    epoch: Short | None = None
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    eta_seconds: Annotated[int, Field(ge=0)] | None = None
    eta: Short | None = None
    tokens_per_second: Short | None = None
    last_step_time: datetime | None = None


class Metrics(_StatusModel):
    train_loss: Short | None = None
    eval_loss: Short | None = None
    base_eval_loss: Short | None = None
    eval_perplexity: Short | None = None
    base_eval_perplexity: Short | None = None
    exact_match: Short | None = None
    base_exact_match: Short | None = None
    learning_rate: Short | None = None


class Checkpoint(_StatusModel):
    step: Annotated[int, Field(ge=0)]
    uri: Uri
    complete: bool = False
    created_at: datetime | None = None


class Outputs(_StatusModel):
    # The wire name keeps the acronym upper-case (adapterURI), which to_camel would not produce.
    adapter_uri: Annotated[Uri | None, Field(alias="adapterURI")] = None
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    report_uri: Annotated[Uri | None, Field(alias="reportURI")] = None


class Usage(_StatusModel):
    gpu_seconds: Annotated[int, Field(ge=0)] | None = None
    estimated_cost: Short | None = None


class Estimate(_StatusModel):
    tokens: Annotated[int, Field(ge=0)] | None = None
    gpu_hours: Short | None = None
    cost: Short | None = None


class Failure(_StatusModel):
    attempt: Annotated[int, Field(ge=0)] | None = None
    reason: Annotated[str, StringConstraints(max_length=1024)] | None = None
    message: Message | None = None
    exit_code: int | None = None
    time: datetime | None = None


class FineTuneJobStatus(_StatusModel):
    phase: Phase | None = None
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    message: Message | None = None
    attempts: Annotated[int, Field(ge=0)] | None = None
    trainer_job_name: Annotated[str, StringConstraints(max_length=63)] | None = None
    validation_pod_name: Annotated[str, StringConstraints(max_length=63)] | None = None
    progress: Progress | None = None
    metrics: Metrics | None = None
    checkpoints: Annotated[list[Checkpoint], Field(max_length=100)] = Field(default_factory=list)
    outputs: Outputs | None = None
    usage: Usage | None = None
    estimate: Estimate | None = None
    last_failure: Failure | None = None

    def to_patch(self) -> dict[str, Any]:
        """The JSON body for a status patch: camelCase, RFC 3339 times, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def format_eta(seconds: int | None) -> str:
    """Seconds as the ETA column shows them: 45s, 12m, 1h12m, 2d3h."""
    if seconds is None or seconds < 0:
        return ""
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"
