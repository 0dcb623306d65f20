"""The operator's own Prometheus metrics (DESIGN §6) and the /metrics + /healthz endpoint.

Everything lives in one `OperatorMetrics` object with its own `CollectorRegistry` (plus the process and
platform collectors), so tests build fresh ones; the operator process uses the one instance `METRICS`
and serves it with `METRICS.serve()`. Every function is cheap (dict and counter updates, no I/O): the reconcile loop
calls them on every pass.

Two kinds of series:

- aggregates with bounded labels (namespace, phase, reason, result, gpu_type): counters, histograms,
  `finetune_jobs`. No job names or UIDs here.
- per-job gauges `{namespace, name}` while the FineTuneJob exists (progress, loss, cost, ...). They are
  produced at scrape time from a dict by a custom collector, so `forget_job` (on deletion) removes every
  series of the job in one step and nothing can be left behind.

`record_status(namespace, name, created=, spec=, old=, new=, now=)` is the one call the reconcile loop
needs, after its status write succeeded (`old`: the status it read, `new`: the status it wrote):
- histograms (queue wait, time to first step, duration) from the phase change between `old` and `new`
  and the conditions' times — restart-safe, since a restarted operator reads what it wrote before;
- counters (transitions, failures, GPU-seconds, cost) by the difference to the view of the job seen
  before in this process; the first view of a job is the baseline, so a restarted operator does not
  count again what the previous process counted;
- the per-job gauges from `new`.
`forget_job` on the FineTuneJob's DELETED event; `set_leader`; `serve(port)` at start.
"""

from __future__ import annotations

import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from importlib import metadata
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .api import ConditionStatus, ConditionType, FineTuneJobSpec, FineTuneJobStatus, Phase
from .api.status import Condition

PHASES: Final = tuple(p.value for p in Phase)
TERMINAL: Final = (Phase.SUCCEEDED, Phase.FAILED)
DEFAULT_GPU_TYPE: Final = "default"

RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUEUE_WAIT_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
FIRST_STEP_BUCKETS: Final = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
DURATION_BUCKETS: Final = (30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)

# The per-job gauges: metric name -> help. Label set {namespace, name}.
JOB_GAUGES: Final = {
    "finetune_job_progress_ratio": "Training progress of the job, 0..1 (step / total steps).",
    "finetune_job_step": "Last training step the trainer reported.",
    "finetune_job_total_steps": "Total training steps the trainer plans.",
    "finetune_job_eta_seconds": "Estimated seconds until training finishes.",
    "finetune_job_train_loss": "Last training loss the trainer reported.",
    "finetune_job_eval_loss": "Last evaluation loss the trainer reported.",
    "finetune_job_tokens_per_second": "Training throughput the trainer reported, tokens per second.",
    "finetune_job_estimated_cost_dollars": "Estimated cost of the job so far (GPU-seconds x price).",
    "finetune_job_used_gpu_seconds": "GPU-seconds the job's trainer pods have used so far.",
    "finetune_job_budget_ratio": "Usage / spec.budget: the larger of cost/maxCost and GPU-hours/maxGPUHours.",
    "finetune_job_last_progress_timestamp_seconds": (
        "Unix time the step counter last moved (or the trainer started running, if later)."
    ),
    "finetune_job_phase_start_timestamp_seconds": "Unix time the job entered its current phase.",
}


@dataclass
class _Job:
    phase: str = Phase.PENDING.value
    reason: str = ""
    gpu_type: str = DEFAULT_GPU_TYPE
    queue: str = ""
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JobView:
    """What the metrics need of one FineTuneJob's status (see `view`)."""

    phase: str
    reason: str
    gpu_type: str
    gpu_seconds: float
    cost: float
    gauges: dict[str, float | None]
    queue: str = ""


def view(
    status: FineTuneJobStatus,
    gpu_type: str | None,
    *,
    spec: FineTuneJobSpec | None = None,
    created: datetime | None = None,
    now: datetime | None = None,
) -> JobView:
    """The metrics' view of a status (pure). `spec` adds the budget ratio, `created` the start of
    Pending."""
    phase = status.phase or Phase.PENDING
    p, m, u = status.progress, status.metrics, status.usage
    ratio: float | None = None
    if phase is Phase.SUCCEEDED:
        ratio = 1.0
    elif p is not None and p.step is not None and p.total_steps:
        ratio = min(1.0, p.step / p.total_steps)
    elif p is not None and p.percent is not None:
        ratio = p.percent / 100
    gpu_seconds = float(u.gpu_seconds or 0) if u is not None else 0.0
    cost = (_num(u.estimated_cost) if u is not None else None) or 0.0
    started = _phase_start(phase, status.conditions, created) or now
    progressed = _last_progress(status)
    return JobView(
        phase=phase.value,
        reason=_phase_reason(phase, status.conditions),
        gpu_type=gpu_type or DEFAULT_GPU_TYPE,
        gpu_seconds=gpu_seconds,
        cost=cost,
        queue=spec.queue_name if spec is not None else "",
        gauges={
            "progress": ratio,
            "step": p.step if p else None,
            "total_steps": p.total_steps if p else None,
            "eta_seconds": p.eta_seconds if p else None,
            "loss": _num(m.train_loss) if m else None,
            "eval_loss": _num(m.eval_loss) if m else None,
            "tokens_per_second": _num(p.tokens_per_second) if p else None,
            "cost": cost,
            "gpu_seconds": gpu_seconds,
            "budget_ratio": _budget_ratio(spec, cost, gpu_seconds),
            "last_progress": progressed.timestamp() if progressed else None,
            "phase_start": started.timestamp() if started else None,
        },
    )


class _JobsCollector(Collector):
    """`finetune_jobs{namespace,phase}`, `finetune_job_info` and the per-job gauges, built from a dict
    at scrape time (a snapshot taken under the lock, so the reconcile thread never waits long)."""

    def __init__(self, owner: OperatorMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        with self._owner._lock:
            jobs = [
                (k, j.phase, j.reason, j.gpu_type, j.queue, dict(j.values))
                for k, j in self._owner._jobs.items()
            ]
        counts: dict[tuple[str, str], int] = {}
        for (ns, _), phase, *_ in jobs:
            for p in PHASES:
                counts.setdefault((ns, p), 0)
            counts[(ns, phase)] = counts.get((ns, phase), 0) + 1
        by_phase = GaugeMetricFamily(
            "finetune_jobs", "FineTuneJobs that exist, by namespace and phase.", labels=["namespace", "phase"]
        )
        for (ns, phase), n in sorted(counts.items()):
            by_phase.add_metric([ns, phase], n)
        yield by_phase
        info = GaugeMetricFamily(
            "finetune_job_info",
            "One series per FineTuneJob (value 1): its current phase, the reason of that phase, GPU type and "
            "Kueue LocalQueue (spec.queueName, empty without one).",
            labels=["namespace", "name", "phase", "reason", "gpu_type", "queue"],
        )
        for (ns, name), phase, reason, gpu_type, queue, _ in jobs:
            info.add_metric([ns, name, phase, reason, gpu_type, queue], 1)
        yield info
        for metric, help_text in JOB_GAUGES.items():
            family = GaugeMetricFamily(metric, help_text, labels=["namespace", "name"])
            for (ns, name), *_, values in jobs:
                if metric in values:
                    family.add_metric([ns, name], values[metric])
            yield family


def _version() -> str:
    try:
        return metadata.version("finetune-operator")
    except metadata.PackageNotFoundError:
        return "unknown"


class OperatorMetrics:
    def __init__(self, *, process_collectors: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if process_collectors:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._views: dict[tuple[str, str], JobView] = {}
        self._health: Callable[[], bool] = lambda: True

        Info("finetune_operator_build", "Version of the running operator (value 1).", registry=r).info(
            {"version": _version(), "python_version": platform.python_version()}
        )
        self.start_time = Gauge(
            "finetune_operator_start_time_seconds", "Unix time the operator process started.", registry=r
        )
        self.start_time.set(time.time())
        self.leader = Gauge(
            "finetune_operator_leader",
            "1 while this operator instance is the active one, else 0.",
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "finetune_reconcile_duration_seconds",
            "Time of one reconcile pass of one FineTuneJob (observe, decide, write).",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            "finetune_reconcile_errors", "Reconcile passes that failed and will be retried.", registry=r
        )
        self.transitions = Counter(
            "finetune_job_transitions",
            "Phase changes of FineTuneJobs, by the phase entered and its reason.",
            ["namespace", "phase", "reason"],
            registry=r,
        )
        self.failures = Counter(
            "finetune_job_failures",
            "FineTuneJobs that failed, by reason.",
            ["namespace", "reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "finetune_job_queue_wait_seconds",
            "Time an attempt waited: with spec.queueName from its trainer Job's creation (or its preemption) to "
            "Kueue's admission, else from Queued (trainer Job created) to the trainer running.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.first_step = Histogram(
            "finetune_job_time_to_first_step_seconds",
            "Time from the FineTuneJob's creation to the first training step the trainer reported.",
            buckets=FIRST_STEP_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "finetune_job_duration_seconds",
            "Time from the FineTuneJob's creation to Succeeded or Failed, by result.",
            ["result"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        for result in ("succeeded", "failed"):
            # Present from the start: increase() misses the first observation of a series born at 1.
            self.duration.labels(result)
        self.gpu_seconds = Counter(
            "finetune_job_gpu_seconds",
            "GPU-seconds used by trainer pods, by namespace and GPU type.",
            ["namespace", "gpu_type"],
            registry=r,
        )
        self.cost = Counter(
            "finetune_estimated_cost_dollars",
            "Estimated cost of trainer pods (GPU-seconds x price table), by namespace and GPU type.",
            ["namespace", "gpu_type"],
            registry=r,
        )
        r.register(_JobsCollector(self))

    # --- operator ---------------------------------------------------------------------------------

    def set_leader(self, leader: bool) -> None:
        self.leader.set(1 if leader else 0)

    def set_health_check(self, check: Callable[[], bool]) -> None:
        """What /healthz asks (default: always healthy while the process serves)."""
        self._health = check

    def observe_reconcile(self, duration: float, error: bool = False) -> None:
        self.reconcile_duration.observe(max(0.0, duration))
        if error:
            self.reconcile_errors.inc()

    # --- low-level job functions --------------------------------------------------------------------

    def record_transition(
        self, namespace: str, name: str, old_phase: str | None, new_phase: str, reason: str
    ) -> None:
        """A phase change (no-op when the phase did not change)."""
        if old_phase == new_phase:
            return
        self.transitions.labels(namespace, new_phase, reason or new_phase).inc()
        if new_phase == Phase.FAILED.value:
            self.failures.labels(namespace, reason or "Unknown").inc()

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(max(0.0, seconds))

    def observe_time_to_first_step(self, seconds: float) -> None:
        self.first_step.observe(max(0.0, seconds))

    def observe_duration(self, result: str, seconds: float) -> None:
        self.duration.labels(result).observe(max(0.0, seconds))

    def add_usage(self, namespace: str, gpu_type: str, gpu_seconds: float, cost: float) -> None:
        if gpu_seconds > 0:
            self.gpu_seconds.labels(namespace, gpu_type).inc(gpu_seconds)
        if cost > 0:
            self.cost.labels(namespace, gpu_type).inc(cost)

    def set_job_phase(
        self,
        namespace: str,
        name: str,
        phase: str,
        reason: str = "",
        gpu_type: str = DEFAULT_GPU_TYPE,
        *,
        queue: str = "",
    ) -> None:
        with self._lock:
            job = self._jobs.setdefault((namespace, name), _Job())
            job.phase, job.reason, job.gpu_type, job.queue = phase, reason, gpu_type, queue

    def update_job_series(
        self,
        namespace: str,
        name: str,
        *,
        progress: float | None = None,
        step: float | None = None,
        total_steps: float | None = None,
        eta_seconds: float | None = None,
        loss: float | None = None,
        eval_loss: float | None = None,
        tokens_per_second: float | None = None,
        cost: float | None = None,
        gpu_seconds: float | None = None,
        budget_ratio: float | None = None,
        last_progress: float | None = None,
        phase_start: float | None = None,
    ) -> None:
        """Set the per-job gauges that have a value (None leaves a gauge as it was)."""
        given = {
            "finetune_job_progress_ratio": progress,
            "finetune_job_step": step,
            "finetune_job_total_steps": total_steps,
            "finetune_job_eta_seconds": eta_seconds,
            "finetune_job_train_loss": loss,
            "finetune_job_eval_loss": eval_loss,
            "finetune_job_tokens_per_second": tokens_per_second,
            "finetune_job_estimated_cost_dollars": cost,
            "finetune_job_used_gpu_seconds": gpu_seconds,
            "finetune_job_budget_ratio": budget_ratio,
            "finetune_job_last_progress_timestamp_seconds": last_progress,
            "finetune_job_phase_start_timestamp_seconds": phase_start,
        }
        with self._lock:
            job = self._jobs.setdefault((namespace, name), _Job())
            job.values.update({k: float(v) for k, v in given.items() if v is not None})

    def forget_job(self, namespace: str, name: str) -> None:
        """Remove every per-job series of a deleted FineTuneJob."""
        with self._lock:
            self._jobs.pop((namespace, name), None)
            self._views.pop((namespace, name), None)

    def job_names(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._jobs)

    # --- what the reconcile loop calls -----------------------------------------------------------

    def update_job(self, namespace: str, name: str, view: JobView) -> None:
        """The job as its newest status shows it: phase, per-job gauges, and the counters (transitions,
        failures, GPU-seconds, cost) by the difference to the view seen before. The first view of a job
        in this process is the baseline (a restarted operator does not count again what the previous
        one counted; counters restart at 0 with the process, which rate()/increase() handle)."""
        with self._lock:
            before = self._views.get((namespace, name))
            self._views[(namespace, name)] = view
        if before is not None:
            self.record_transition(namespace, name, before.phase, view.phase, view.reason)
            self.add_usage(
                namespace, view.gpu_type, view.gpu_seconds - before.gpu_seconds, view.cost - before.cost
            )
        self.set_job_phase(namespace, name, view.phase, view.reason, view.gpu_type, queue=view.queue)
        self.update_job_series(namespace, name, **view.gauges)

    def observe_transition(
        self,
        old: FineTuneJobStatus,
        new: FineTuneJobStatus,
        created: datetime | None,
        now: datetime,
        *,
        kueue: bool = False,
    ) -> None:
        """Histograms of a phase change, from the status read (`old`) and written (`new`). With Kueue
        (`kueue`), the queue wait ends at admission: Admitted False (waiting since its transition) to True."""
        if kueue:
            waiting = _cond(old.conditions, ConditionType.ADMITTED)
            admitted = _cond(new.conditions, ConditionType.ADMITTED)
            if (
                waiting is not None
                and waiting.status == ConditionStatus.FALSE
                and admitted is not None
                and admitted.status == ConditionStatus.TRUE
            ):
                # Time the user held the job suspended is not queue wait: count from the resume.
                resumed = _cond(new.conditions, ConditionType.SUSPENDED)
                since = waiting.last_transition_time
                if resumed is not None and resumed.status == ConditionStatus.FALSE:
                    since = max(since, resumed.last_transition_time)
                self.observe_queue_wait((now - since).total_seconds())
        old_phase, new_phase = old.phase, new.phase or Phase.PENDING
        if old_phase == new_phase:
            return
        if new_phase is Phase.RUNNING and old_phase is Phase.QUEUED and not kueue:
            entered = _phase_start(Phase.QUEUED, old.conditions, None)
            if entered is not None:
                self.observe_queue_wait((now - entered).total_seconds())
        if new_phase in TERMINAL and old_phase not in TERMINAL and created is not None:
            self.observe_duration(new_phase.value.lower(), (now - created).total_seconds())

    def observe_first_step(
        self,
        old: FineTuneJobStatus,
        new: FineTuneJobStatus,
        created: datetime | None,
        now: datetime | None = None,
    ) -> None:
        """Time to the first training step: when the step first moves above 0 (once per job)."""
        old_step = old.progress.step if old.progress else None
        new_step = new.progress.step if new.progress else None
        if (old_step or 0) == 0 and (new_step or 0) > 0 and created is not None:
            at = now or datetime.now(UTC)
            self.observe_time_to_first_step((at - created).total_seconds())

    def record_status(
        self,
        namespace: str,
        name: str,
        *,
        created: datetime | str | None,
        spec: FineTuneJobSpec | None,
        old: FineTuneJobStatus,
        new: FineTuneJobStatus,
        now: datetime,
    ) -> None:
        """All of the above in one call, after the status write of a reconcile succeeded."""
        created_at = _time(created)
        gpu_type = spec.resources.gpu_type if spec is not None else None
        self.update_job(namespace, name, view(new, gpu_type, spec=spec, created=created_at, now=now))
        self.observe_transition(old, new, created_at, now, kueue=bool(spec is not None and spec.queue_name))
        self.observe_first_step(old, new, created_at, now)

    # --- endpoint ------------------------------------------------------------------------------------

    def wsgi_app(self) -> Callable[..., Iterable[bytes]]:
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path in ("/healthz", "/readyz", "/livez"):
                ok = _safe(self._health)
                start_response(
                    "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
                )
                return [b"ok\n" if ok else b"unhealthy\n"]
            if path == "/metrics":
                body: Iterable[bytes] = metrics_app(environ, start_response)
                return body
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics or /healthz\n"]

        return app

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[WSGIServer, threading.Thread]:  # noqa: S104
        """Serve /metrics and /healthz on a daemon thread; port 0 picks a free port
        (`server.server_port` says which)."""
        server = make_server(addr, port, self.wsgi_app(), _ThreadingServer, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        thread.start()
        return server, thread


class _ThreadingServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        t.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds: not worth a log line."""


# --- pure helpers ------------------------------------------------------------------------------------


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


def _num(value: str | Decimal | float | int | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None


def _time(value: datetime | str | None) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _cond(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def _phase_reason(phase: Phase, conditions: list[Condition]) -> str:
    """The reason of the condition that put the job in this phase (see api.conditions.derive_phase)."""
    types = {
        Phase.SUCCEEDED: (ConditionType.SUCCEEDED,),
        Phase.FAILED: (ConditionType.FAILED,),
        Phase.SUSPENDED: (ConditionType.SUSPENDED,),
        Phase.RUNNING: (ConditionType.RUNNING,),
        Phase.QUEUED: (ConditionType.RUNNING, ConditionType.ADMITTED, ConditionType.VALIDATED),
        Phase.VALIDATING: (ConditionType.VALIDATED,),
    }.get(phase, ())
    for type_ in types:
        c = _cond(conditions, type_)
        if c is not None:
            return c.reason
    return phase.value


def _phase_start(phase: Phase, conditions: list[Condition], created: datetime | None) -> datetime | None:
    """When the job entered `phase`, from the conditions' lastTransitionTime (restart-safe)."""
    if phase is Phase.PENDING:
        return created
    if phase is Phase.QUEUED:
        times = [
            c.last_transition_time
            for c in conditions
            if c.type in (ConditionType.VALIDATED, ConditionType.ADMITTED)
            or (c.type == ConditionType.RUNNING and c.status != ConditionStatus.TRUE)
        ]
        return max(times, default=None)
    type_ = {
        Phase.SUCCEEDED: ConditionType.SUCCEEDED,
        Phase.FAILED: ConditionType.FAILED,
        Phase.SUSPENDED: ConditionType.SUSPENDED,
        Phase.RUNNING: ConditionType.RUNNING,
        Phase.VALIDATING: ConditionType.VALIDATED,
    }[phase]
    c = _cond(conditions, type_)
    return c.last_transition_time if c is not None else None


def _last_progress(status: FineTuneJobStatus) -> datetime | None:
    times = []
    if status.progress is not None and status.progress.last_step_time is not None:
        times.append(status.progress.last_step_time)
    running = _cond(status.conditions, ConditionType.RUNNING)
    if running is not None and running.status == ConditionStatus.TRUE:
        times.append(running.last_transition_time)
    return max(times, default=None)


def _budget_ratio(spec: FineTuneJobSpec | None, cost: float | None, gpu_seconds: float) -> float | None:
    if spec is None or spec.budget is None:
        return None
    ratios = []
    if spec.budget.max_cost is not None and spec.budget.max_cost > 0:
        ratios.append((cost or 0.0) / float(spec.budget.max_cost))
    if spec.budget.max_gpu_hours is not None and spec.budget.max_gpu_hours > 0:
        ratios.append(gpu_seconds / 3600 / float(spec.budget.max_gpu_hours))
    return max(ratios, default=None)


# --- the operator process's instance ----------------------------------------------------------------

METRICS: Final = OperatorMetrics(process_collectors=sys.platform.startswith("linux"))
