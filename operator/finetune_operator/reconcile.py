"""The FineTuneJob state machine (DESIGN §4) as one pure function.

    reconcile(job, observed, settings, now) -> Decision

`job` is the parsed FineTuneJob (spec + the status last written), `observed` the children that exist
(validation pods, trainer Jobs and their pods, from the operator's indexes) plus a /metrics sample of
the running trainer. The decision says which children to create (AlreadyExists counts as done),
which trainer Jobs to patch (suspend/resume), the new status, and the events of the transition.

It is level-based: the decision depends only on what exists, so the operator may die at any line and
decide the same again. Attempts are counted from the trainer Jobs that exist (deterministic names
`<name>-train-a<N>`), and the retry budget used so far is written on each attempt's Job when it is
created, so a restarted operator never starts an attempt twice nor forgets a failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from finetune_contract.hyperparameters import DEFAULT_EPOCHS, ResolvedHyperparameters
from finetune_contract.outcomes import CheckpointRef, Failed, Succeeded, Validated

from . import manifests, names
from .api import (
    ConditionStatus,
    ConditionType,
    Failure,
    FineTuneJobSpec,
    FineTuneJobStatus,
    Metrics,
    Outputs,
    Phase,
    Progress,
    Reason,
    Resolved,
    derive_phase,
    find_condition,
    is_true,
    set_condition,
)
from .cost import PriceTable, estimate, over_budget, pod_gpu_seconds, usage
from .failures import Failure as ChildFailure
from .failures import (
    classify_job,
    classify_pod,
    job_condition,
    pod_blocker,
    terminated_state,
    termination_summary,
)
from .manifests import JobRef
from .pods import completion_index, world_status
from .pods import summary as world_summary
from .progress import Sample, checkpoint_status, next_metrics, next_progress
from .queueing import KueueView, QueueState, workload_patch
from .queueing import state as queue_state
from .settings import OperatorSettings

JSON = dict[str, Any]
TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE
_TERMINAL_POD_PHASES: Final = ("Succeeded", "Failed")
# Fields of the trainer's final summary that map onto status.metrics (same names on both sides).
_METRIC_FIELDS: Final = (
    "train_loss",
    "eval_loss",
    "base_eval_loss",
    "eval_perplexity",
    "base_eval_perplexity",
    "exact_match",
    "base_exact_match",
)


@dataclass(frozen=True)
class JobInput:
    ref: JobRef
    generation: int
    spec: FineTuneJobSpec | None
    status: FineTuneJobStatus
    # Why the spec did not parse (the API server accepted it, so: a CRD newer than the operator).
    spec_error: str = ""


@dataclass(frozen=True)
class Observed:
    validation_pods: Sequence[JSON] = ()
    trainer_jobs: Sequence[JSON] = ()
    trainer_pods: Sequence[JSON] = ()
    sample: Sample | None = None
    prices: PriceTable = field(default_factory=PriceTable)
    # GPU-seconds per trainer pod uid remembered by the job's loop (pods that are gone included).
    gpu_seconds_seen: Mapping[str, float] = field(default_factory=dict)
    # Kueue's Workload and queues for the current attempt (read only with spec.queueName).
    kueue: KueueView | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: FineTuneJobStatus
    create: list[JSON] = field(default_factory=list)
    patch_jobs: list[tuple[str, JSON]] = field(default_factory=list)
    # Kueue Workloads to patch (spec.active: suspend and resume of a queued job).
    patch_workloads: list[tuple[str, JSON]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # Terminal: nothing will ever change again.
    done: bool = False
    gpu_seconds_seen: dict[str, float] = field(default_factory=dict)


def attempt_of(obj: JSON) -> int:
    raw = ((obj.get("metadata") or {}).get("labels") or {}).get(manifests.LABEL_ATTEMPT, "")
    return int(raw) if str(raw).isdigit() else 0


def _name(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _phase(pod: JSON) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _is_live(pod: JSON) -> bool:
    return _phase(pod) not in _TERMINAL_POD_PHASES


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def scrape_target(observed_pods: Sequence[JSON], trainer_jobs: Sequence[JSON]) -> str | None:
    """The pod IP of the current attempt's running trainer (index 0 for multi-node), if any."""
    current = max((attempt_of(j) for j in trainer_jobs), default=0)
    running = [
        p
        for p in observed_pods
        if attempt_of(p) == current
        and _phase(p) == "Running"
        and not (p.get("metadata") or {}).get("deletionTimestamp")
        and (p.get("status") or {}).get("podIP")
    ]
    running.sort(key=completion_index)
    return str(running[0]["status"]["podIP"]) if running else None


class _Builder:
    """The status being decided, the actions and events that go with it."""

    def __init__(self, job: JobInput, now: datetime) -> None:
        self.old = job.status
        self.st = job.status.model_copy(deep=True)
        self.st.observed_generation = job.generation
        self.now = now
        self.generation = job.generation
        self.decision = Decision(status=self.st)
        self.event_reason = ""

    @property
    def terminal(self) -> bool:
        c = self.st.conditions
        return is_true(c, ConditionType.SUCCEEDED) or is_true(c, ConditionType.FAILED)

    def set(self, type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.st.conditions = set_condition(
            self.st.conditions,
            type_,
            status,
            reason,
            message,
            observed_generation=self.generation,
            now=self.now,
        )

    def clear(self, type_: str, reason: str, message: str) -> None:
        """Set a condition False only if it is there and True (absent means "never happened")."""
        if is_true(self.st.conditions, type_):
            self.set(type_, FALSE, reason, message)

    def message(self, reason: str, text: str) -> None:
        self.st.message = text
        self.event_reason = reason

    def create(self, obj: JSON) -> None:
        self.decision.create.append(obj)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(type_, reason, message))

    def fail(self, reason: str, message: str, *, attempt: int = 0, exit_code: int | None = None) -> None:
        self.set(ConditionType.FAILED, TRUE, reason, message)
        if find_condition(self.st.conditions, ConditionType.RUNNING) is not None:
            self.set(ConditionType.RUNNING, FALSE, reason, "the job failed")
        self.clear(ConditionType.STALLED, reason, "the job failed")
        self.st.completion_time = self.st.completion_time or self.now
        self.st.last_failure = Failure(
            attempt=attempt, reason=reason, message=message, exit_code=exit_code, time=self.now
        )
        self.message(reason, message)
        self.decision.done = True

    def finish(self) -> Decision:
        phase = derive_phase(self.st.conditions)
        self.st.phase = phase
        if phase != self.old.phase:
            kind = "Warning" if phase is Phase.FAILED else "Normal"
            reason = self.event_reason if phase is Phase.FAILED and self.event_reason else phase.value
            self.event(kind, reason, self.st.message or phase.value)
        return self.decision


def reconcile(job: JobInput, observed: Observed, settings: OperatorSettings, now: datetime) -> Decision:
    b = _Builder(job, now)
    if b.terminal:
        b.decision.done = True
        return b.decision
    if job.spec is None:
        b.fail(Reason.INVALID_SPEC, f"the operator cannot read this spec: {job.spec_error}")
        return b.finish()
    try:
        config = manifests.trainer_config(job.ref, job.spec, settings)
    except ValueError as err:
        b.fail(Reason.INVALID_SPEC, str(err))
        return b.finish()
    config_map = manifests.config_map(job.ref, config)
    if is_true(b.st.conditions, ConditionType.VALIDATED) or _validate(
        b, job=job, spec=job.spec, obs=observed, settings=settings, config_map=config_map
    ):
        _train(b, job=job, spec=job.spec, obs=observed, settings=settings, config_map=config_map)
    return b.finish()


def _age(obj: JSON, now: datetime) -> float:
    created = _parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    return (now - created).total_seconds() if created else 0.0


def _validate(
    b: _Builder,
    *,
    job: JobInput,
    spec: FineTuneJobSpec,
    obs: Observed,
    settings: OperatorSettings,
    config_map: JSON,
) -> bool:
    """Drive the validation pod; True once it passed (training may start in the same pass).

    A try that fails for a reason that may pass (a transient S3 error, an eviction, a crash) is
    retried in a new pod after a back-off, within spec.retries.limit (shared with the trainer
    attempts); the failed pods stay for their logs until the job is deleted.
    """
    tries = _validation_tries(job, spec, obs)
    current = max(tries, default=0)
    pod_name = names.validation_pod_name(job.ref.name, manifests.validation_hash(spec), current)
    b.st.validation_pod_name = pod_name
    pod = tries.get(current)
    if pod is None:
        b.create(config_map)
        b.create(manifests.validation_pod(job.ref, spec, settings, current))
        text = f"validating the dataset, base model and output location in pod {pod_name} (no GPU yet)"
        b.set(ConditionType.VALIDATED, FALSE, Reason.VALIDATING, text)
        b.message(Reason.VALIDATING, text)
        return False
    phase = _phase(pod)
    if phase == "Succeeded":
        summary = termination_summary(pod)
        text = "dataset, base model and output location are valid"
        if isinstance(summary, Validated):
            text = (
                f"{summary.message or text}: {summary.rows} training rows, {summary.tokens} tokens per epoch"
            )
            resolved = summary.hyperparameters
            b.st.resolved = Resolved(
                hyperparameters=resolved, scratch=manifests.trainer_scratch(spec, summary, settings)
            )
            if resolved is not None:
                text += f"; {describe_resolved(resolved)}"
            epochs = resolved.epochs if resolved else spec.hyperparameters.epochs or DEFAULT_EPOCHS
            b.st.estimate = estimate(spec, summary.tokens * epochs, obs.prices)
        b.set(ConditionType.VALIDATED, TRUE, Reason.INPUTS_VALID, text)
        b.clear(ConditionType.STALLED, Reason.PROGRESSING, "validation passed")
        b.message(Reason.INPUTS_VALID, text)
        return True
    if phase == "Failed":
        f = classify_pod(pod) or ChildFailure(Reason.TRAINER_ERROR, f"validation pod {pod_name} failed")
        if f.reason == Reason.DEADLINE_EXCEEDED:
            f = ChildFailure(
                Reason.DEADLINE_EXCEEDED,
                f"validation did not finish within {settings.validation_deadline_seconds}s (the "
                "platform's limit, validation.deadlineSeconds in the chart); a very large dataset or a "
                "slow chat template: see the logs of pod "
                f"{pod_name}",
                permanent=True,
            )
        elif f.reason == Reason.OOM_KILLED:
            # Not the trainer's resources.memory: the validation pod's limit is the platform's. The same
            # input would be killed again, so this is not retried.
            f = ChildFailure(
                Reason.OOM_KILLED,
                f"the validation pod ran out of memory (the platform's limit, validation.memoryLimit in "
                f"the chart, is {settings.validation_memory_limit}): the base model's tokenizer or a "
                f"dataset row needs more than that; see the logs of pod {pod_name}",
                f.exit_code,
                permanent=True,
            )
        if not f.permanent:
            return _retry_validation(b, job=job, spec=spec, settings=settings, tries=tries, failure=f)
        b.set(ConditionType.VALIDATED, FALSE, f.reason, f.message)
        b.fail(f.reason, f.message, exit_code=f.exit_code)
        return False
    blocker = pod_blocker(pod, manifests.base_model_claim(spec), job.ref.namespace)
    if blocker is None:
        text = f"validating the dataset, base model and output location in pod {pod_name} (no GPU yet)"
        b.set(ConditionType.VALIDATED, FALSE, Reason.VALIDATING, text)
        b.message(Reason.VALIDATING, text)
        return False
    text = f"validation pod {pod_name} cannot start: {blocker.message}"
    b.set(ConditionType.VALIDATED, FALSE, Reason.VALIDATING, text)
    b.message(blocker.reason, text)
    if blocker.claim:
        # Stuck until the claim exists and is bound; the scheduler retries by itself.
        b.set(ConditionType.STALLED, TRUE, blocker.reason, text)
    if blocker.reason in (Reason.IMAGE_PULL, Reason.SECRET_NOT_FOUND):
        b.set(ConditionType.STALLED, TRUE, blocker.reason, text)
        if _age(pod, b.now) > settings.image_pull_timeout:
            b.fail(blocker.reason, text)
    return False


def _validation_tries(job: JobInput, spec: FineTuneJobSpec, obs: Observed) -> dict[int, JSON]:
    """This spec's validation pods by try (pods of an earlier spec hash are not counted)."""
    hash_ = manifests.validation_hash(spec)
    tries = {}
    for pod in obs.validation_pods:
        n = names.validation_try(_name(pod), job.ref.name, hash_)
        if n is not None:
            tries[n] = pod
    return tries


def validation_retries_used(tries: Mapping[int, JSON]) -> int:
    """Failed validation tries that count against spec.retries.limit (an eviction does not)."""
    failures = (classify_pod(p) for p in tries.values() if _phase(p) == "Failed")
    return sum(1 for f in failures if f is not None and f.counts)


def validation_backoff(retry: int) -> float:
    """Seconds before validation retry `retry` (1, 2, ...): 10, 20, 40, ... at most 300."""
    return float(min(10 * 2 ** (retry - 1), 300))


def _finished_at(pod: JSON) -> datetime | None:
    term = terminated_state(pod)
    return _parse_time((term or {}).get("finishedAt")) or _parse_time(
        (pod.get("metadata") or {}).get("creationTimestamp")
    )


def _retry_validation(
    b: _Builder,
    *,
    job: JobInput,
    spec: FineTuneJobSpec,
    settings: OperatorSettings,
    tries: Mapping[int, JSON],
    failure: ChildFailure,
) -> bool:
    current = max(tries)
    used = validation_retries_used(tries)
    limit = spec.retries.limit
    what = f"validation pod {_name(tries[current])} failed ({failure.reason}: {failure.message})"
    if used > limit or current + 1 >= names.MAX_VALIDATION_TRIES:
        text = (
            f"{what} and the retry budget (spec.retries.limit={limit}) is used up; fix the cause or raise "
            "the limit and create a new job"
        )
        b.set(ConditionType.VALIDATED, FALSE, failure.reason, text)
        b.fail(Reason.RETRIES_EXHAUSTED, text, exit_code=failure.exit_code)
        return False
    wait = validation_backoff(current + 1)
    finished = _finished_at(tries[current])
    left = wait - (b.now - finished).total_seconds() if finished else 0.0
    if left > 0:
        text = f"{what}; retrying in {left:.0f}s (retries used {used} of {limit})"
        b.set(ConditionType.VALIDATED, FALSE, failure.reason, text)
        b.message(failure.reason, text)
        return False
    name = names.validation_pod_name(job.ref.name, manifests.validation_hash(spec), current + 1)
    b.create(manifests.validation_pod(job.ref, spec, settings, current + 1))
    b.st.validation_pod_name = name
    text = f"{what}; validating again in pod {name} (retries used {used} of {limit})"
    b.set(ConditionType.VALIDATED, FALSE, Reason.VALIDATING, text)
    b.message(failure.reason, text)
    b.event("Warning", failure.reason, text)
    return False


def describe_resolved(r: ResolvedHyperparameters) -> str:
    """One line for the Validated condition: what training will run, and what was chosen for the user."""
    text = (
        f"training {r.epochs} epoch{'s' if r.epochs != 1 else ''} x {r.steps_per_epoch} steps "
        f"(batch {r.effective_batch_size}, "
        f"learning rate {r.learning_rate:g}, {r.warmup_steps} warm-up steps)"
    )
    if r.auto:
        text += f"; chosen from the data: {', '.join(r.auto)}"
    return text


def _deadline_left(spec: FineTuneJobSpec, start: datetime | None, now: datetime) -> int | None:
    if spec.active_deadline_seconds is None:
        return None
    if start is None:
        return spec.active_deadline_seconds
    return spec.active_deadline_seconds - int((now - start).total_seconds())


def _start_attempt(
    b: _Builder,
    *,
    job: JobInput,
    spec: FineTuneJobSpec,
    settings: OperatorSettings,
    config_map: JSON,
    attempt: int,
    retries_used: int,
) -> None:
    start = b.st.start_time or b.now
    left = _deadline_left(spec, start, b.now)
    if left is not None and left <= 0:
        b.fail(
            Reason.DEADLINE_EXCEEDED,
            f"activeDeadlineSeconds ({spec.active_deadline_seconds}) passed before training finished; "
            "raise spec.activeDeadlineSeconds or lower the work (epochs, maxSteps)",
            attempt=attempt - 1,
        )
        return
    trainer = manifests.trainer_job(
        job.ref,
        spec,
        settings,
        attempt=attempt,
        retries_used=retries_used,
        active_deadline_seconds=left,
        # Kueue admits (unsuspends) queued Jobs itself.
        suspend=spec.suspend or bool(spec.queue_name),
        scratch_volume=b.st.resolved.scratch if b.st.resolved else None,
    )
    b.create(config_map)
    if spec.resources.nodes > 1:
        b.create(manifests.trainer_service(job.ref, spec, attempt))
    b.create(trainer)
    b.st.start_time = start
    b.st.attempts = attempt
    b.st.trainer_job_name = _name(trainer)
    text = f"trainer Job {_name(trainer)} created (attempt {attempt})"
    if spec.queue_name:
        text += f"; waiting for Kueue to admit it from LocalQueue {spec.queue_name}"
        b.set(ConditionType.ADMITTED, FALSE, Reason.WAITING_FOR_QUOTA, text)
    else:
        b.set(ConditionType.ADMITTED, TRUE, Reason.JOB_CREATED, text)


def _train(
    b: _Builder,
    *,
    job: JobInput,
    spec: FineTuneJobSpec,
    obs: Observed,
    settings: OperatorSettings,
    config_map: JSON,
) -> None:
    jobs = {attempt_of(j): j for j in obs.trainer_jobs if attempt_of(j) > 0}
    attempt = max(jobs, default=0)
    price = obs.prices.price(spec.resources.gpu_type)
    if spec.resources.gpus:
        floor = b.old.usage.gpu_seconds if b.old.usage and b.old.usage.gpu_seconds else 0
        seen = pod_gpu_seconds(obs.trainer_pods, b.now, obs.gpu_seconds_seen)
        b.decision.gpu_seconds_seen = seen
        b.st.usage = usage(sum(seen.values()), price, floor)
    if spec.budget is not None:
        _budget(b, spec)
        if b.decision.done:
            return
    if attempt < (b.old.attempts or 0):
        # A Job we created is not in the index yet (wait for it), or it was deleted by hand.
        _after_deleted_job(
            b, job=job, spec=spec, obs=obs, settings=settings, config_map=config_map, jobs=jobs
        )
        return
    if attempt == 0:
        if spec.suspend:
            text = "suspended before training started; set spec.suspend to false to start"
            b.set(ConditionType.SUSPENDED, TRUE, Reason.SUSPENDED, text)
            b.message(Reason.SUSPENDED, text)
            return
        _start_attempt(
            b,
            job=job,
            spec=spec,
            settings=settings,
            config_map=config_map,
            attempt=1,
            retries_used=validation_retries_used(_validation_tries(job, spec, obs)),
        )
        b.clear(ConditionType.SUSPENDED, Reason.RESUMED, "resumed")
        if not b.decision.done:
            text = f"waiting for GPUs: trainer Job {b.st.trainer_job_name} created"
            if spec.queue_name:
                text = f"waiting for Kueue: trainer Job {b.st.trainer_job_name} created in LocalQueue {spec.queue_name}"
            b.set(ConditionType.RUNNING, FALSE, Reason.PENDING, text)
            b.message(Reason.JOB_CREATED, text)
        return
    current = jobs[attempt]
    pods = [p for p in obs.trainer_pods if attempt_of(p) == attempt]
    b.st.world = world_status(spec, pods, job.ref.namespace)
    reported = _reported_checkpoints(pods)
    if reported:
        # A preempted or finished trainer's last word on what is in S3 (a running one's comes by scrape).
        b.st.checkpoints = checkpoint_status(spec.output.prefix, reported)
    retries_used = _retries_used(current)
    b.st.attempts = max(attempt, b.old.attempts or 0)
    b.st.trainer_job_name = _name(current)
    b.st.start_time = b.st.start_time or _parse_time((current.get("metadata") or {}).get("creationTimestamp"))
    if not spec.queue_name and not is_true(b.st.conditions, ConditionType.ADMITTED):
        b.set(ConditionType.ADMITTED, TRUE, Reason.JOB_CREATED, f"trainer Job {_name(current)} created")

    # SuccessCriteriaMet comes first and already decides it: a Job suspended in between (by Kueue, or
    # spec.suspend as the trainer finished) may not reach Complete until it is resumed.
    if (
        job_condition(current, "Complete") is not None
        or job_condition(current, "SuccessCriteriaMet") is not None
    ):
        _succeed(b, spec, pods)
        return
    if job_condition(current, "Failed") is not None:
        _after_failure(
            b,
            job=job,
            spec=spec,
            settings=settings,
            config_map=config_map,
            attempt=attempt,
            retries_used=retries_used,
            failure=classify_job(current, pods),
        )
        return
    spent = over_budget(spec, b.st.usage)
    if spent is not None:
        reason, text = spent
        text = f"{text}; the trainer was stopped after saving a checkpoint"
        b.set(ConditionType.BUDGET_EXCEEDED, TRUE, reason, text)
        b.decision.patch_jobs.append((_name(current), {"spec": {"suspend": True}}))
        b.fail(reason, text, attempt=attempt)
        return
    queued = _queue(b, spec=spec, obs=obs, current=current, namespace=job.ref.namespace)
    _active(
        b,
        spec=spec,
        obs=obs,
        settings=settings,
        current=current,
        pods=pods,
        namespace=job.ref.namespace,
        queued=queued,
    )


def _queue(
    b: _Builder, *, spec: FineTuneJobSpec, obs: Observed, current: JSON, namespace: str
) -> QueueState | None:
    """Admitted from Kueue's Workload of the current attempt, and status.queue (with spec.queueName)."""
    if not spec.queue_name or obs.kueue is None:
        return None
    gpus = spec.resources.gpus * spec.resources.nodes
    qs = queue_state(spec.queue_name, namespace, gpus, _name(current), obs.kueue)
    b.st.queue = qs.status
    was_admitted = is_true(b.st.conditions, ConditionType.ADMITTED)
    b.set(ConditionType.ADMITTED, TRUE if qs.admitted else FALSE, qs.reason, qs.message)
    if was_admitted and qs.evicted:
        b.event("Warning", Reason.PREEMPTED, qs.message)
    if qs.admitted:
        b.clear(ConditionType.STALLED, Reason.PROGRESSING, qs.message)
    if obs.kueue.workload is not None:
        patch = workload_patch(obs.kueue.workload, suspend=spec.suspend)
        if patch is not None:
            b.decision.patch_workloads.append((_name(obs.kueue.workload), patch))
    return qs


def _retries_used(trainer_job: JSON) -> int:
    """The retry budget used before this attempt started, as written on its Job."""
    annotations = (trainer_job.get("metadata") or {}).get("annotations") or {}
    raw = str(annotations.get(manifests.ANNOTATION_RETRIES_USED, "0"))
    return int(raw) if raw.isdigit() else 0


def _after_deleted_job(
    b: _Builder,
    *,
    job: JobInput,
    spec: FineTuneJobSpec,
    obs: Observed,
    settings: OperatorSettings,
    config_map: JSON,
    jobs: Mapping[int, JSON],
) -> None:
    """The status says attempt N was started but its Job is gone: once it has had time to appear, a new
    attempt resumes from the last complete checkpoint, the deletion counted as a failed attempt."""
    missing = b.old.attempts or 0
    # Attempt 1 starts with the job's start time; a later one right after its predecessor failed.
    last = b.old.last_failure
    created = last.time if missing > 1 and last is not None else b.old.start_time
    if created is None or (b.now - created).total_seconds() < settings.job_visible_grace_seconds:
        return
    before = jobs.get(missing - 1)
    if before is None:
        used = validation_retries_used(_validation_tries(job, spec, obs))
    else:
        pods = [p for p in obs.trainer_pods if attempt_of(p) == missing - 1]
        used = _retries_used(before) + (1 if classify_job(before, pods).counts else 0)
    name = names.trainer_job_name(job.ref.name, missing)
    _after_failure(
        b,
        job=job,
        spec=spec,
        settings=settings,
        config_map=config_map,
        attempt=missing,
        retries_used=used,
        failure=ChildFailure(
            Reason.TRAINER_JOB_DELETED,
            f"trainer Job {name} was deleted while the job was active (delete the FineTuneJob to stop it)",
        ),
    )


def _reported_checkpoints(pods: Sequence[JSON]) -> list[CheckpointRef]:
    """The checkpoints in the summary of the attempt's pod that saw the most (its last one)."""
    best: list[CheckpointRef] = []
    for pod in pods:
        summary = termination_summary(pod)
        if (
            isinstance(summary, Succeeded | Failed)
            and summary.checkpoints
            and (not best or max(c.step for c in summary.checkpoints) > max(c.step for c in best))
        ):
            best = list(summary.checkpoints)
    return best


def _budget(b: _Builder, spec: FineTuneJobSpec) -> None:
    """BudgetExceeded from the estimate (a warning: estimates are rough) and the usage (see _train)."""
    spent = over_budget(spec, b.st.usage) or over_budget(spec, b.st.estimate)
    if spent is None:
        b.set(
            ConditionType.BUDGET_EXCEEDED,
            FALSE,
            Reason.WITHIN_BUDGET,
            "estimate and usage are within spec.budget",
        )
        return
    reason, text = spent
    if not is_true(b.st.conditions, ConditionType.BUDGET_EXCEEDED):
        b.event("Warning", reason, text)
    b.set(ConditionType.BUDGET_EXCEEDED, TRUE, reason, text)


def _succeed(b: _Builder, spec: FineTuneJobSpec, pods: Sequence[JSON]) -> None:
    # Rank 0 (index 0 of a multi-node Job) publishes and reports the run's summary.
    done = sorted((p for p in pods if _phase(p) == "Succeeded"), key=completion_index)
    found = termination_summary(done[0]) if done else None
    summary = found if isinstance(found, Succeeded) else None
    adapter = summary.adapter_uri if summary is not None else None
    text = f"training finished; adapter at {adapter}" if adapter else "training finished"
    b.set(ConditionType.SUCCEEDED, TRUE, Reason.COMPLETED, text)
    b.set(ConditionType.RUNNING, FALSE, Reason.COMPLETED, "the trainer finished")
    b.clear(ConditionType.STALLED, Reason.COMPLETED, "the trainer finished")
    b.clear(ConditionType.SUSPENDED, Reason.COMPLETED, "the trainer finished")
    b.st.completion_time = b.st.completion_time or b.now
    b.message(Reason.COMPLETED, text)
    b.decision.done = True
    if summary is None:
        return
    b.st.outputs = Outputs(
        adapter_uri=summary.adapter_uri,
        sha256=summary.sha256,
        report_uri=summary.report_uri,
        published_step=summary.published_step,
    )
    if summary.checkpoints:
        b.st.checkpoints = checkpoint_status(spec.output.prefix, summary.checkpoints)
    old = b.st.progress or Progress()
    b.st.progress = old.model_copy(
        update={
            "step": summary.step,
            "total_steps": summary.total_steps,
            "percent": 100,
            "eta_seconds": 0,
            "eta": "0s",
            "epoch": f"{summary.epoch:.2f}" if summary.epoch is not None else old.epoch,
            # The run's average from the summary: the live gauge reads 0 once training stops.
            "tokens_per_second": f"{summary.tokens_per_second:.1f}"
            if summary.tokens_per_second
            else old.tokens_per_second,
        }
    )
    update = {
        name: f"{value:.4f}" for name in _METRIC_FIELDS if (value := getattr(summary, name)) is not None
    }
    b.st.metrics = (b.st.metrics or Metrics()).model_copy(update=update)


def _after_failure(
    b: _Builder,
    *,
    job: JobInput,
    spec: FineTuneJobSpec,
    settings: OperatorSettings,
    config_map: JSON,
    attempt: int,
    retries_used: int,
    failure: ChildFailure,
) -> None:
    b.st.last_failure = Failure(
        attempt=attempt,
        reason=failure.reason,
        message=failure.message,
        exit_code=failure.exit_code,
        time=b.now,
    )
    if failure.permanent:
        b.fail(failure.reason, failure.message, attempt=attempt, exit_code=failure.exit_code)
        return
    used = retries_used + (1 if failure.counts else 0)
    limit = spec.retries.limit
    if used > limit:
        b.fail(
            Reason.RETRIES_EXHAUSTED,
            f"attempt {attempt} failed ({failure.reason}: {failure.message}) and the retry budget "
            f"(spec.retries.limit={limit}) is used up; fix the cause or raise the limit and create a new job",
            attempt=attempt,
            exit_code=failure.exit_code,
        )
        return
    nxt = attempt + 1
    _start_attempt(
        b, job=job, spec=spec, settings=settings, config_map=config_map, attempt=nxt, retries_used=used
    )
    if b.decision.done:
        return
    text = (
        f"attempt {attempt} failed ({failure.reason}: {failure.message}); attempt {nxt} resumes from the "
        f"last complete checkpoint (retries used {used} of {limit})"
    )
    b.set(ConditionType.RUNNING, FALSE, failure.reason, text)
    b.message(failure.reason, text)
    b.event("Warning", failure.reason, text)


def _active(
    b: _Builder,
    *,
    spec: FineTuneJobSpec,
    obs: Observed,
    settings: OperatorSettings,
    current: JSON,
    pods: Sequence[JSON],
    namespace: str,
    queued: QueueState | None = None,
) -> None:
    job_name = _name(current)
    job_suspended = bool((current.get("spec") or {}).get("suspend"))
    live = [p for p in pods if _is_live(p)]
    if spec.suspend and spec.queue_name and obs.kueue is None and not job_suspended:
        # Held through the Workload (see _queue), which could not be read: say so, claim nothing.
        text = (
            f"suspend requested, but the Kueue Workload of trainer Job {job_name} could not be read (see the "
            "operator's log), so Kueue may keep it running; retrying"
        )
        b.message(Reason.SUSPENDED, text)
        return
    if spec.suspend:
        # With a queue, Kueue suspends the Job once its Workload is inactive (see _queue); suspending the
        # Job here too would only race Kueue, which unsuspends a Job it has admitted.
        if not job_suspended and not spec.queue_name:
            b.decision.patch_jobs.append((job_name, {"spec": {"suspend": True}}))
            b.event(
                "Normal", "Suspending", f"suspending trainer Job {job_name}; the trainer saves a checkpoint"
            )
        text = (
            f"stopping {len(live)} trainer pod(s); the trainer saves a checkpoint on SIGTERM"
            if live
            else "suspended; set spec.suspend to false to resume from the last complete checkpoint"
        )
        b.set(ConditionType.SUSPENDED, TRUE, Reason.SUSPENDED, text)
        if find_condition(b.st.conditions, ConditionType.RUNNING) is not None:
            b.set(ConditionType.RUNNING, FALSE, Reason.SUSPENDED, text)
        b.message(Reason.SUSPENDED, text)
        return
    if job_suspended and not spec.queue_name:
        b.decision.patch_jobs.append((job_name, {"spec": {"suspend": False}}))
        b.event(
            "Normal", Reason.RESUMED, f"resuming trainer Job {job_name} from the last complete checkpoint"
        )
    b.clear(
        ConditionType.SUSPENDED,
        Reason.RESUMED,
        "resumed; training continues from the last complete checkpoint",
    )
    running = [
        p for p in live if _phase(p) == "Running" and not (p.get("metadata") or {}).get("deletionTimestamp")
    ]
    claim = manifests.base_model_claim(spec)
    blocked = [(p, f) for p in sorted(live, key=completion_index) if (f := pod_blocker(p, claim, namespace))]
    blocker = blocked[0][1] if blocked else None
    # Which pod, when an attempt has several: the one that holds all of them back.
    who = "the trainer pod"
    if blocked and spec.resources.nodes > 1:
        pod = blocked[0][0]
        who = f"trainer pod {_name(pod)} (node rank {completion_index(pod)} of {spec.resources.nodes})"
    # A multi-node attempt trains only when every pod runs: the ones running wait at the rendezvous
    # for a pod that cannot start, and that pod is what the user must hear about.
    if running and (blocker is None or len(running) >= spec.resources.nodes):
        _running(b, obs, settings, running, job_name=job_name, output_prefix=spec.output.prefix)
        return
    finished = [p for p in pods if _phase(p) == "Succeeded"]
    if finished and not live:
        # The trainer exited 0 and the Job controller has not marked the Job complete yet: the end of
        # Running, not a return to Queued, so the Running condition stays as it is.
        b.message(Reason.TRAINER_RUNNING, f"the trainer finished; waiting for Job {job_name} to complete")
        return
    if blocker is not None and blocker.claim:
        text = f"{who} cannot start: {blocker.message}"
        b.set(ConditionType.RUNNING, FALSE, Reason.UNSCHEDULABLE, text)
        b.set(ConditionType.STALLED, TRUE, Reason.UNSCHEDULABLE, text)
        b.message(Reason.UNSCHEDULABLE, text)
        return
    if blocker is not None and blocker.reason == Reason.UNSCHEDULABLE:
        text = f"waiting for GPUs: {blocker.message}"
        if spec.resources.nodes > 1:
            text = f"waiting for GPUs for {who}; the attempt starts when all its pods can: {blocker.message}"
        b.set(ConditionType.RUNNING, FALSE, Reason.UNSCHEDULABLE, text)
        b.message(Reason.UNSCHEDULABLE, text)
        return
    if blocker is not None:
        text = f"{who} cannot start: {blocker.message}"
        b.set(ConditionType.RUNNING, FALSE, blocker.reason, text)
        b.set(ConditionType.STALLED, TRUE, blocker.reason, text)
        b.message(blocker.reason, text)
        oldest = max((_age(p, b.now) for p in live), default=0.0)
        if oldest > settings.image_pull_timeout:
            b.decision.patch_jobs.append((job_name, {"spec": {"suspend": True}}))
            b.fail(blocker.reason, text, attempt=attempt_of(current))
        return
    if spec.queue_name and job_suspended:
        text = f"waiting for Kueue to admit trainer Job {job_name} (queue {spec.queue_name})"
        reason: str = Reason.WAITING_FOR_QUOTA
        if queued is not None and not queued.admitted:
            text, reason = queued.message, queued.reason
            if queued.stalled:
                b.set(ConditionType.STALLED, TRUE, reason, text)
            else:
                b.clear(ConditionType.STALLED, Reason.PROGRESSING, "waiting in the queue")
        if live:
            text = f"{text} (stopping {len(live)} trainer pod(s); the trainer saves a checkpoint on SIGTERM)"
        b.set(ConditionType.RUNNING, FALSE, reason, text)
        b.message(reason, text)
        return
    text = f"waiting for the trainer pod of Job {job_name} to start"
    b.set(ConditionType.RUNNING, FALSE, Reason.PENDING, text)
    b.message(Reason.PENDING, text)


def _running(
    b: _Builder,
    obs: Observed,
    settings: OperatorSettings,
    running: Sequence[JSON],
    *,
    job_name: str,
    output_prefix: str,
) -> None:
    pod = min(running, key=completion_index)
    node = (pod.get("spec") or {}).get("nodeName", "")
    text = f"trainer pod {_name(pod)} of Job {job_name} is running on {node}"
    if b.st.world is not None and (b.st.world.size or 1) > 1:
        text = f"{text}; {world_summary(b.st.world)}"
    b.set(ConditionType.RUNNING, TRUE, Reason.TRAINER_RUNNING, text)
    if obs.sample is not None:
        b.st.progress = next_progress(b.st.progress, obs.sample, b.now)
        b.st.metrics = next_metrics(b.st.metrics, obs.sample)
        if obs.sample.checkpoints is not None:
            b.st.checkpoints = checkpoint_status(output_prefix, obs.sample.checkpoints)
    progress = b.st.progress
    if progress is not None and progress.last_step_time is None and progress.step is None:
        progress = None
    last = progress.last_step_time if progress is not None else None
    since = last or _parse_time((pod.get("status") or {}).get("startTime"))
    if since is not None and (b.now - since).total_seconds() > settings.stall_seconds:
        stalled = f"no new training step for more than {settings.stall_seconds}s"
        b.set(ConditionType.STALLED, TRUE, Reason.NO_PROGRESS, stalled)
    else:
        b.clear(ConditionType.STALLED, Reason.PROGRESSING, "training steps are advancing")
    b.message(Reason.TRAINER_RUNNING, text)
