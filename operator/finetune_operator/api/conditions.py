"""Condition types, reasons and the phase derived from them.

Conditions are the API; `phase` is a convenience for `kubectl get` computed here from the conditions
only, so the operator can never write a phase that disagrees with them. Types are adjectives or past
tense (Kubernetes api-conventions); a reason is one CamelCase word a program can switch on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum

from .status import Condition, ConditionStatus, Phase


class ConditionType(StrEnum):
    # True once the validation pod found the dataset, the model and the output location usable.
    VALIDATED = "Validated"
    # True once the trainer Job of the current attempt exists and (with queueName) Kueue admitted it.
    ADMITTED = "Admitted"
    # True while a trainer pod is running.
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    # True while spec.suspend is true and the trainer is gone (or going).
    SUSPENDED = "Suspended"
    # True when the job makes no progress: no new step for too long, or pods stuck unschedulable/unpullable.
    STALLED = "Stalled"
    # True when the estimate or the usage passed spec.budget.
    BUDGET_EXCEEDED = "BudgetExceeded"


class Reason(StrEnum):
    """Reasons, shared across condition types (Kubernetes reasons are one CamelCase word). Every
    finetune_contract.outcomes.FailureReason is one of them: the trainer's reason is shown as it is."""

    # progress
    PENDING = "Pending"
    VALIDATING = "Validating"
    INPUTS_VALID = "InputsValid"
    WAITING_FOR_QUOTA = "WaitingForQuota"
    JOB_CREATED = "JobCreated"
    QUOTA_RESERVED = "QuotaReserved"
    TRAINER_RUNNING = "TrainerRunning"
    COMPLETED = "Completed"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    PROGRESSING = "Progressing"
    WITHIN_BUDGET = "WithinBudget"
    # input problems (permanent: never retried, no GPU held)
    INVALID_SPEC = "InvalidSpec"
    INVALID_CONFIG = "InvalidConfig"
    INVALID_DATASET = "InvalidDataset"
    INVALID_MODEL = "InvalidModel"
    INVALID_OUTPUT = "InvalidOutput"
    ACCESS_DENIED = "AccessDenied"
    SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105 (a condition reason, not a password)
    # scheduling and runtime problems
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL = "ImagePull"
    OOM_KILLED = "OOMKilled"
    TRAINER_ERROR = "TrainerError"
    TRANSIENT_ERROR = "TransientError"
    PREEMPTED = "Preempted"
    NO_PROGRESS = "NoProgress"
    TRAINER_JOB_DELETED = "TrainerJobDeleted"
    # terminal
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    BUDGET_EXCEEDED = "BudgetExceeded"
    MAX_COST_EXCEEDED = "MaxCostExceeded"
    MAX_GPU_HOURS_EXCEEDED = "MaxGPUHoursExceeded"


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    cond = find_condition(conditions, type_)
    return cond is not None and cond.status == ConditionStatus.TRUE


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    observed_generation: int | None = None,
    now: datetime | None = None,
) -> list[Condition]:
    """Return the conditions with `type_` set, like meta.SetStatusCondition.

    lastTransitionTime moves only when status changes, so it answers "since when", not "last written".
    """
    stamp = (now or datetime.now(UTC)).replace(microsecond=0)
    old = find_condition(conditions, type_)
    changed = old is None or old.status != status
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=stamp if changed or old is None else old.last_transition_time,
    )
    out = [c for c in conditions if c.type != type_]
    out.append(new)
    return out


def derive_phase(conditions: Sequence[Condition]) -> Phase:
    """The phase for `kubectl get`, from the conditions alone (first match wins)."""
    if is_true(conditions, ConditionType.SUCCEEDED):
        return Phase.SUCCEEDED
    if is_true(conditions, ConditionType.FAILED):
        return Phase.FAILED
    if is_true(conditions, ConditionType.SUSPENDED):
        return Phase.SUSPENDED
    if is_true(conditions, ConditionType.RUNNING):
        return Phase.RUNNING
    if is_true(conditions, ConditionType.VALIDATED):
        return Phase.QUEUED
    if find_condition(conditions, ConditionType.VALIDATED) is not None:
        return Phase.VALIDATING
    return Phase.PENDING
