"""Exit codes: the contract with the operator's podFailurePolicy (docs/architecture.md)."""

from __future__ import annotations

SUCCESS = 0
# Permanent: bad dataset, bad config, missing model, access denied. Never retried.
INVALID_INPUT = 42
# Transient I/O (S3 unreachable, throttled, 5xx). Retried within the job's retry budget.
TRANSIENT = 75
# SIGTERM received and a checkpoint saved: resumed without counting against the retry budget.
PREEMPTED = 76


class TrainerError(Exception):
    exit_code = 1
    reason = "Error"


class InvalidInputError(TrainerError):
    """The input cannot work as given; the message says what to change."""

    exit_code = INVALID_INPUT
    reason = "InvalidInput"


class TransientIOError(TrainerError):
    exit_code = TRANSIENT
    reason = "TransientIO"


class PreemptedError(TrainerError):
    exit_code = PREEMPTED
    reason = "Preempted"
