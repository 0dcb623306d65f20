"""The FineTuneJob status as pydantic models.

Status is written only by the operator. Unlike the spec, unknown fields are ignored: a newer operator
may have written fields an older one (during a rolling upgrade) does not know, and that must not stop
it from reading the rest. Numbers that are floats are decimal strings, formatted by the operator, so the
printer columns (LOSS, COST) show a fixed precision.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from finetune_contract.hyperparameters import ResolvedHyperparameters
from finetune_contract.wire import Crd, ReadModel
from pydantic import Field, StringConstraints

Short = Annotated[str, StringConstraints(max_length=32)]
Uri = Annotated[str, StringConstraints(max_length=1100)]
Message = Annotated[str, StringConstraints(max_length=32768)]
Int64 = Annotated[int, Field(ge=0), Crd(format="int64")]
Int32 = Annotated[int, Field(ge=0)]


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


class Condition(ReadModel):
    """A metav1.Condition."""

    crd_schema: ClassVar = Crd(required=["type", "status", "lastTransitionTime", "reason", "message"])

    type: Annotated[
        str,
        StringConstraints(
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        ),
    ]
    """Condition type in CamelCase, e.g. Running."""
    status: ConditionStatus
    """True, False or Unknown."""
    observed_generation: Int64 | None = None
    """The metadata.generation the condition was set for."""
    last_transition_time: datetime
    """When status last changed."""
    reason: Annotated[
        str,
        StringConstraints(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    """Why, as one CamelCase word, e.g. OOMKilled."""
    message: Message = ""
    """Details for humans, e.g. what to change."""


class Progress(ReadModel):
    """Training progress, polled from the trainer's metrics endpoint."""

    step: Int64 | None = None
    """Optimizer steps done."""
    total_steps: Int64 | None = None
    """Optimizer steps planned (from epochs, maxSteps and the dataset size)."""
    epoch: Short | None = None
    """Fractional epoch, e.g. "1.25"."""
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """step / totalSteps in percent (0-100), for the PROGRESS column."""
    eta_seconds: Int64 | None = None
    """Estimated seconds of training left, from the smoothed step rate (secondsPerStep)."""
    eta: Short | None = None
    """etaSeconds for humans, e.g. 1h12m, for the ETA column."""
    seconds_per_step: Short | None = None
    """The step rate the ETA is based on: seconds per optimizer step, an exponentially weighted average
    over about the last five minutes of training, e.g. "1.84"."""
    tokens_per_second: Short | None = None
    """Training throughput in tokens per second, e.g. "5230.5"."""
    last_step_time: datetime | None = None
    """When step last increased; the Stalled condition is set when it stops moving."""


class Metrics(ReadModel):
    """Latest training metrics and the final evaluation of the tuned vs the base model; numbers as decimal
    strings."""

    train_loss: Short | None = None
    """Latest training loss, e.g. "0.8123"."""
    eval_loss: Short | None = None
    """Latest evaluation loss of the tuned model on the validation data."""
    base_eval_loss: Short | None = None
    """Evaluation loss of the base model on the same validation data, for comparison."""
    eval_perplexity: Short | None = None
    """exp(evalLoss)."""
    base_eval_perplexity: Short | None = None
    """exp(baseEvalLoss)."""
    exact_match: Short | None = None
    """Fraction of examples (of dataset.test when set, else of the validation data) whose generated answer
    equals the reference exactly (tuned model)."""
    base_exact_match: Short | None = None
    """The same for the base model."""
    learning_rate: Short | None = None
    """Current learning rate."""


class Checkpoint(ReadModel):
    """One checkpoint."""

    step: Int64
    """The optimizer step it was saved at."""
    uri: Uri
    """Where it is, e.g. s3://adapters/x/checkpoints/step-200/."""
    complete: bool = False
    """true once step-N/COMPLETE exists; only complete checkpoints are resumed from."""
    created_at: datetime | None = None
    """When it was saved."""


class Outputs(ReadModel):
    """The results, set when the job succeeds."""

    # The wire name keeps the acronym upper-case (adapterURI), which to_camel would not produce.
    adapter_uri: Annotated[Uri | None, Field(alias="adapterURI")] = None
    """The adapter (or, for full, the model) directory, <output.uri>adapter/."""
    sha256: Annotated[str, StringConstraints(max_length=64, pattern=r"^[0-9a-f]{64}$")] | None = None
    """SHA-256 of adapter_model.safetensors (or model.safetensors), to pin what is served."""
    report_uri: Annotated[Uri | None, Field(alias="reportURI")] = None
    """The reports directory, <output.uri>reports/ (validation.json, eval.json, train_log.jsonl, result.json)."""
    published_step: Int64 | None = None
    """The training step whose weights were published: the one with the lowest validation loss (the
    last step when there is no validation set)."""


class ResolvedScratch(ReadModel):
    """The trainer pods' scratch volume, sized from the base model's and the largest dataset file's
    bytes measured by validation."""

    request: Short | None = None
    """The ephemeral-storage request: the downloaded model, one dataset file and caches."""
    size_limit: Short | None = None
    """The emptyDir sizeLimit: the request plus room for the training state (checkpoints, best
    weights); unset where the model's size is unknown (hf://)."""


class Resolved(ReadModel):
    """What the job runs with, resolved by validation from the spec and the data."""

    hyperparameters: ResolvedHyperparameters | None = None
    """The hyperparameters in force: the spec's values, the unset ones chosen from the data (listed in
    auto)."""
    scratch: ResolvedScratch | None = None
    """The trainer pods' scratch volume."""


class Usage(ReadModel):
    """Resources used so far, all attempts together."""

    gpu_seconds: Int64 | None = None
    """GPU-seconds held by trainer pods (GPUs x seconds running)."""
    estimated_cost: Short | None = None
    """Cost so far from the operator's GPU price table, a decimal string, e.g. "1.23" (the COST column)."""


class Estimate(ReadModel):
    """The estimate made before training, checked against budget."""

    tokens: Int64 | None = None
    """Training tokens (all epochs)."""
    gpu_hours: Short | None = None
    """Estimated GPU-hours, a decimal string."""
    cost: Short | None = None
    """Estimated cost, a decimal string in the unit of budget.maxCost."""


class TrainerPod(ReadModel):
    """One pod of the current attempt."""

    name: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The pod's name (kubectl describe pod <name> shows its events)."""
    index: Int32 | None = None
    """Its node rank: the Indexed Job's completion index (0 for a single-pod attempt)."""
    phase: Short | None = None
    """The pod's phase: Pending, Running, Succeeded or Failed."""
    reason: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Why it is not running, where known: Unschedulable, ImagePullBackOff, OOMKilled, ..."""
    node: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The node it was scheduled to."""


class World(ReadModel):
    """The shape of the current attempt: pods (nodes) x processes per pod, one process per GPU."""

    nodes: Int32 | None = None
    """Pods per attempt (resources.nodes)."""
    processes_per_node: Int32 | None = None
    """Training processes per pod: one per GPU (resources.gpus), one on a CPU-only pod."""
    size: Int32 | None = None
    """Training processes in all (ranks); batchSize is per process."""
    pods: Annotated[list[TrainerPod], Field(max_length=64), Crd(x__kubernetes__list__type="atomic")] = Field(
        default_factory=list
    )
    """Each pod of the current attempt, by index."""


class Queue(ReadModel):
    """Where the current attempt waits in Kueue (spec.queueName), as Kueue reports it."""

    local_queue: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The LocalQueue (spec.queueName)."""
    cluster_queue: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The ClusterQueue the LocalQueue feeds, whose quota admits the job."""
    workload: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Kueue's Workload for the current attempt's trainer Job."""
    position: Int32 | None = None
    """1 = next: the place among the LocalQueue's pending Workloads in Kueue's order (priority, then
    time queued); unset once admitted. Jobs of other namespaces in the same ClusterQueue are counted
    in pendingWorkloads, not here."""
    pending_workloads: Int32 | None = None
    """Workloads waiting in the ClusterQueue, all namespaces together."""


class Failure(ReadModel):
    """The most recent failed attempt, kept when it is retried, so the cause is not lost."""

    attempt: Int32 | None = None
    """The attempt that failed."""
    reason: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Why, as one CamelCase word, e.g. OOMKilled."""
    message: Message | None = None
    """Details, e.g. the trainer's termination message."""
    exit_code: int | None = None
    """The trainer's exit code (42 invalid input, 75 transient I/O, 76 preempted, 137 killed)."""
    time: datetime | None = None
    """When it failed."""


class FineTuneJobStatus(ReadModel):
    """Observed state, written only by the operator."""

    phase: Phase | None = None
    """A one-word summary for kubectl get, derived from the conditions (docs/api.md, "Phase"). Programs
    should read the conditions."""
    conditions: Annotated[
        list[Condition],
        Field(max_length=16),
        Crd(x__kubernetes__list__type="map", x__kubernetes__list__map__keys=["type"]),
    ] = Field(default_factory=list)
    """The job's state as metav1.Conditions: Validated, Admitted, Running, Succeeded, Failed, Suspended,
    Stalled, BudgetExceeded. reason is one CamelCase word; message is for humans."""
    observed_generation: Int64 | None = None
    """The metadata.generation this status describes."""
    start_time: datetime | None = None
    """When the first trainer attempt started running."""
    completion_time: datetime | None = None
    """When the job succeeded or failed."""
    message: Message | None = None
    """A human summary of the current state, e.g. what to do about a failure."""
    attempts: Int32 | None = None
    """Trainer attempts started so far (attempt N runs as Job <name>-train-a<N>)."""
    trainer_job_name: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The batch/v1 Job of the current (or last) attempt."""
    validation_pod_name: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The CPU-only pod that validates the dataset, the model and the output location."""
    progress: Progress | None = None
    metrics: Metrics | None = None
    checkpoints: Annotated[
        list[Checkpoint], Field(max_length=100), Crd(x__kubernetes__list__type="atomic")
    ] = Field(default_factory=list)
    """Checkpoints in output.uri, oldest first (at most checkpointing.keep complete ones), as the trainer
    reports them from what it wrote to and found in S3."""
    resolved: Resolved | None = None
    outputs: Outputs | None = None
    world: World | None = None
    """The current attempt's ranks and pods; kubectl describe shows why a pod cannot start."""
    queue: Queue | None = None
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
