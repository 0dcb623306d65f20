"""Why a pod or a trainer Job failed (or cannot start), as a reason a user can act on (pure).

The trainer's exit codes and its typed summary are the contract (finetune_contract.outcomes): 42 invalid
input (permanent), 75 transient I/O, 76 preempted (checkpoint saved; does not use the retry budget);
anything else, OOM kills included, is retried within the budget. The summary in the termination message
states the reason (InvalidDataset, InvalidModel, AccessDenied, ...) and, for a bad row, the file and
line: the operator copies them, it never reads a reason out of an English message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from finetune_contract.outcomes import ExitCode, Failed, FailureReason, Succeeded, Validated, parse_summary

from .api import Reason
from .manifests import CONTAINER_NAME

JSON = dict[str, Any]
Summary = Validated | Succeeded | Failed
EXIT_SIGKILL: Final = 137
_IMAGE_PULL: Final = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
# What the scheduler's VolumeBinding plugin says about a pod's claims: `persistentvolumeclaim "x" not
# found`, `pod has unbound immediate PersistentVolumeClaims`, `... is being deleted`, and for
# WaitForFirstConsumer claims `didn't find available persistent volumes to bind` or `volume node
# affinity conflict`. Only the first names the claim.
_VOLUME_BINDING: Final = re.compile(
    r"persistentvolumeclaim|persistent volume|volume node affinity", re.IGNORECASE
)
_CONFIG_ERRORS: Final = {"CreateContainerConfigError", "CreateContainerError"}


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str
    exit_code: int | None = None
    # Never retried: the input must change.
    permanent: bool = False
    # Uses one unit of spec.retries.limit (a preemption does not).
    counts: bool = True
    # Unschedulable because of this PersistentVolumeClaim (the pvc:// base model's), not resources.
    claim: str = ""


def _container_status(pod: JSON) -> JSON | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER_NAME:
            return dict(cs)
    return dict(statuses[0]) if statuses else None


def terminated_state(pod: JSON) -> JSON | None:
    cs = _container_status(pod)
    if cs is None:
        return None
    return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")


def termination_text(pod: JSON) -> str:
    term = terminated_state(pod) or {}
    return str(term.get("message") or "").strip()


def termination_summary(pod: JSON) -> Summary | None:
    """The trainer's typed summary from the termination message; None when there is none (a crash
    before it was written leaves the log tail there, FallbackToLogsOnError)."""
    return parse_summary(termination_text(pod))


def _message(summary: Summary | None, text: str, fallback: str) -> str:
    message = summary.message if summary is not None and summary.message else text[-2000:] or fallback
    if isinstance(summary, Failed) and summary.line is not None and summary.file:
        where = f"{summary.file}:{summary.line}"
        if where not in message:
            message = f"{message} ({where})"
    return message


def classify_exit(exit_code: int, summary: Summary | None, text: str = "", term_reason: str = "") -> Failure:
    """A terminated trainer container with a non-zero exit code."""
    failed = summary if isinstance(summary, Failed) else None
    if exit_code == ExitCode.INVALID_INPUT:
        # The trainer names the input; a 42 without a summary is still permanent, so say so generally.
        reason = failed.reason if failed is not None else FailureReason.INVALID_SPEC
        message = _message(summary, text, "the trainer found the input invalid")
        return Failure(reason, message, exit_code, permanent=True)
    if exit_code == ExitCode.PREEMPTED:
        message = _message(summary, text, "the trainer was stopped and saved a checkpoint")
        return Failure(Reason.PREEMPTED, message, exit_code, counts=False)
    if term_reason == "OOMKilled" or exit_code == EXIT_SIGKILL:
        return Failure(
            Reason.OOM_KILLED,
            "the trainer was killed (exit 137, out of memory?): raise resources.memory or lower "
            "hyperparameters.batchSize / maxSeqLength",
            exit_code,
        )
    if exit_code == ExitCode.TRANSIENT:
        return Failure(
            Reason.TRANSIENT_ERROR, _message(summary, text, "transient I/O error in the trainer"), exit_code
        )
    return Failure(
        Reason.TRAINER_ERROR, _message(summary, text, f"the trainer exited with code {exit_code}"), exit_code
    )


def classify_pod(pod: JSON) -> Failure | None:
    """A Failed pod -> why; None if the pod did not fail."""
    status = pod.get("status") or {}
    # Before the exit code: a pod stopped at its deadline exits 143, which says less.
    if status.get("phase") == "Failed" and status.get("reason") == "DeadlineExceeded":
        return Failure(Reason.DEADLINE_EXCEEDED, status.get("message") or "deadline exceeded", permanent=True)
    term = terminated_state(pod)
    if term is not None and int(term.get("exitCode", 0)) != 0:
        text = termination_text(pod)
        return classify_exit(int(term["exitCode"]), parse_summary(text), text, str(term.get("reason") or ""))
    if status.get("phase") != "Failed":
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return Failure(Reason.PREEMPTED, cond.get("message") or "the pod was disrupted", counts=False)
    return Failure(Reason.TRAINER_ERROR, status.get("message") or status.get("reason") or "the pod failed")


def pod_blocker(pod: JSON, claim: str | None = None, namespace: str = "") -> Failure | None:
    """Why a pod that has not finished cannot make progress (unschedulable, image, config), or None.

    `claim`: the PersistentVolumeClaim of a pvc:// base model that the pod mounts (in `namespace`);
    named when the scheduler holds the pod back for its volumes, which it often does without a name.
    """
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            message = str(cond.get("message") or "no node fits the pod")
            if claim and _VOLUME_BINDING.search(message):
                return Failure(
                    Reason.UNSCHEDULABLE,
                    f'PersistentVolumeClaim "{claim}" of baseModel.uri cannot be used ({message}): it must '
                    f'exist in namespace "{namespace}", bound to a PersistentVolume that holds the model',
                    claim=claim,
                )
            return Failure(Reason.UNSCHEDULABLE, message)
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        why = waiting.get("reason") or ""
        if why in _IMAGE_PULL:
            return Failure(Reason.IMAGE_PULL, f"{why}: {waiting.get('message') or cs.get('image', '')}")
        if why in _CONFIG_ERRORS:
            message = str(waiting.get("message") or why)
            if "secret" in message.lower() and "not found" in message.lower():
                return Failure(Reason.SECRET_NOT_FOUND, f"{message}: {_secret_hint(pod, message)}")
            return Failure(Reason.TRAINER_ERROR, message)
    return None


def _secret_hint(pod: JSON, message: str) -> str:
    """What the missing Secret must hold: the S3 keys, or the Hub token of baseModel.tokenSecretRef."""
    named = re.search(r'secret "([^"]+)" not found', message, re.IGNORECASE)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for env in container.get("env") or []:
            ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) or {}
            if env.get("name") == "HF_TOKEN" and named and ref.get("name") == named.group(1):
                return (
                    f"create it in the job's namespace with the Hugging Face token under the key {ref.get('key')} "
                    "(baseModel.tokenSecretRef)"
                )
    return "create it in the job's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


def job_condition(job: JSON, type_: str) -> JSON | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def classify_job(job: JSON, pods: list[JSON]) -> Failure:
    """A trainer Job with condition Failed -> why, from its failed pods where they say more."""
    cond = job_condition(job, "Failed") or {}
    reason = str(cond.get("reason") or "")
    if reason == "DeadlineExceeded":
        return Failure(
            Reason.DEADLINE_EXCEEDED,
            "activeDeadlineSeconds passed before training finished: raise spec.activeDeadlineSeconds "
            "or lower the work (epochs, maxSteps)",
            permanent=True,
        )
    failures = [f for f in (classify_pod(p) for p in pods) if f is not None]
    # The permanent one first (podFailurePolicy FailJob), then the one that used the budget.
    failures.sort(key=lambda f: (not f.permanent, not f.counts))
    if failures:
        return failures[0]
    return Failure(Reason.TRAINER_ERROR, str(cond.get("message") or reason or "the trainer Job failed"))
