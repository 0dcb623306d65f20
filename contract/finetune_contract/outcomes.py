"""How a trainer run ends: exit codes, failure reasons, and the typed summary it leaves behind.

The exit code is what the trainer Job's podFailurePolicy reads (42 never retried, 76 not counted);
the summary (JSON, under 4 KiB) is the pod's termination message and the head of `reports/result.json`.
The operator parses the summary with these models and copies `reason` into the FineTuneJob's
conditions as it is: no component guesses a reason from an English message.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import Field, TypeAdapter, ValidationError

from .hyperparameters import ResolvedHyperparameters
from .wire import ReadModel

# Kubernetes keeps at most this many bytes of a termination message.
TERMINATION_LIMIT: Final = 4096


class ExitCode(IntEnum):
    SUCCESS = 0
    # Permanent: bad dataset, bad config, missing model, access denied. Never retried.
    INVALID_INPUT = 42
    # Transient I/O (S3 unreachable, throttled, 5xx). Retried within the job's retry budget.
    TRANSIENT = 75
    # SIGTERM received and a checkpoint saved: resumed without counting against the retry budget.
    PREEMPTED = 76


class FailureReason(StrEnum):
    """Why a trainer run failed, as the trainer states it (and the FineTuneJob's condition shows it)."""

    # exit 42: the input must change
    INVALID_DATASET = "InvalidDataset"
    INVALID_MODEL = "InvalidModel"
    INVALID_OUTPUT = "InvalidOutput"
    # the spec's settings do not fit the data or the model (e.g. targetModules that match no layer)
    INVALID_SPEC = "InvalidSpec"
    ACCESS_DENIED = "AccessDenied"
    # the config file itself: an operator and a trainer image of different releases
    INVALID_CONFIG = "InvalidConfig"
    # exit 75
    TRANSIENT_ERROR = "TransientError"
    # exit 76
    PREEMPTED = "Preempted"
    # any other exit code: a bug or an environment problem, retried within the budget
    TRAINER_ERROR = "TrainerError"


PERMANENT_REASONS: Final = frozenset(
    {
        FailureReason.INVALID_DATASET,
        FailureReason.INVALID_MODEL,
        FailureReason.INVALID_OUTPUT,
        FailureReason.INVALID_SPEC,
        FailureReason.ACCESS_DENIED,
        FailureReason.INVALID_CONFIG,
    }
)


class _Summary(ReadModel):
    # Unknown keys are ignored: a newer trainer may report more than this operator reads.
    message: str = ""


class TokenStats(_Summary):
    """Token counts of one split after tokenization with the base model's tokenizer."""

    rows: int = 0
    total_tokens: int = 0
    trainable_tokens: int = 0
    min_tokens: int = 0
    mean_tokens: float = 0.0
    p50_tokens: int = 0
    p95_tokens: int = 0
    max_tokens: int = 0
    truncated_rows: int = 0


class CheckpointRef(_Summary):
    """A checkpoint under <output>/checkpoints/step-N/ (complete once its COMPLETE marker exists)."""

    step: int
    complete: bool = True
    created_at: datetime | None = None


class Validated(_Summary):
    """`validate` passed: what the operator's estimate and the user need to know about the data."""

    result: Literal["Validated"] = "Validated"
    rows: int
    """Training rows after dropping duplicates and the validation split."""
    validation_rows: int = 0
    tokens: int
    """Tokens of one pass over the training rows (the estimate multiplies by epochs)."""
    train: TokenStats = Field(default_factory=TokenStats)
    warnings: int = 0
    hyperparameters: ResolvedHyperparameters | None = None
    """What training will use: the spec's values, the unset ones chosen from the data."""
    model_bytes: int | None = None
    """Bytes of the base model's weight files (.safetensors or the .gguf); None where validation cannot
    see their sizes (hf://). With dataset_file_bytes, what the trainer's scratch volume is sized from."""
    dataset_file_bytes: int = 0
    """The largest dataset file: pods download and parse one file at a time."""


class Succeeded(_Summary):
    """`train` finished and published the adapter."""

    result: Literal["Succeeded"] = "Succeeded"
    step: int
    total_steps: int
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    base_eval_loss: float | None = None
    eval_perplexity: float | None = None
    base_eval_perplexity: float | None = None
    exact_match: float | None = None
    base_exact_match: float | None = None
    tokens_per_second: float | None = None
    ms_per_token: float | None = None
    early_stopped: bool = False
    published_step: int | None = None
    """The step whose weights were published: the best evaluation's (lowest validation loss), or the
    last step when there was no validation set."""
    resumed_from_step: int | None = None
    train_seconds: float | None = None
    adapter_uri: Annotated[str, Field(alias="adapterURI")]
    sha256: str
    report_uri: Annotated[str, Field(alias="reportURI")]
    checkpoints: list[CheckpointRef] = Field(default_factory=list)
    hyperparameters: ResolvedHyperparameters | None = None


class Failed(_Summary):
    """The run failed (or was preempted): the reason, and where in the input when it is a dataset row."""

    result: Literal["Failed", "Preempted"] = "Failed"
    reason: FailureReason
    exit_code: int
    file: str | None = None
    """Which input: train, validation, test, baseModel, output."""
    line: int | None = None
    """The 1-based line of the dataset file, for a bad row."""
    step: int | None = None
    checkpoints: list[CheckpointRef] = Field(default_factory=list)


Summary = Annotated[Validated | Succeeded | Failed, Field(discriminator="result")]
_SUMMARY: Final = TypeAdapter(Summary)


def parse_summary(text: str) -> Validated | Succeeded | Failed | None:
    """The typed summary of a termination message; None when it is empty or not one of ours (a crash
    before the trainer could write it leaves the log tail there)."""
    text = text.strip()
    if not text:
        return None
    try:
        return _SUMMARY.validate_json(text)
    except ValidationError:
        return None


def render_summary(summary: Validated | Succeeded | Failed) -> str:
    """Compact JSON that fits the termination message: long messages and lists are cut, never the
    fields the operator acts on."""
    body: dict[str, Any] = summary.model_dump(mode="json", by_alias=True, exclude_none=True)
    text = json.dumps(body, separators=(",", ":"))
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    if body.get("checkpoints"):
        body["checkpoints"] = body["checkpoints"][-5:]
    overflow = len(json.dumps(body, separators=(",", ":")).encode()) - TERMINATION_LIMIT
    if overflow > 0:
        message = str(body.get("message", ""))
        body["message"] = message[: max(0, len(message) - overflow - 16)] + " [cut]"
    return json.dumps(body, separators=(",", ":"))
