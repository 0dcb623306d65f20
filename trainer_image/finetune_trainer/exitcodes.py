"""The trainer's errors, each carrying the contract's exit code and failure reason
(finetune_contract.outcomes): __main__ turns one into the termination summary and the exit code."""

from __future__ import annotations

from collections.abc import Sequence

from finetune_contract.outcomes import CheckpointRef, ExitCode, FailureReason


class TrainerError(Exception):
    exit_code: int = 1
    default_reason: FailureReason = FailureReason.TRAINER_ERROR

    def __init__(
        self,
        message: str,
        *,
        reason: FailureReason | None = None,
        file: str | None = None,
        line: int | None = None,
        checkpoints: Sequence[CheckpointRef] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason
        self.file = file
        self.line = line
        # What is in S3 when the run stops (a preempted run's last checkpoint is what resumes).
        self.checkpoints = list(checkpoints)


class InvalidInputError(TrainerError):
    """The input cannot work as given; the message says what to change, the reason which input."""

    exit_code = ExitCode.INVALID_INPUT
    default_reason = FailureReason.INVALID_SPEC


class InvalidModelError(InvalidInputError):
    """The base model cannot be fetched or loaded as given."""

    default_reason = FailureReason.INVALID_MODEL


class TransientIOError(TrainerError):
    exit_code = ExitCode.TRANSIENT
    default_reason = FailureReason.TRANSIENT_ERROR


class PreemptedError(TrainerError):
    exit_code = ExitCode.PREEMPTED
    default_reason = FailureReason.PREEMPTED
