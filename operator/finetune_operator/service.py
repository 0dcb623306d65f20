"""The per-job reconcile loop that the Kopf daemon runs, and the shared state it needs.

One loop per FineTuneJob, so one job's reconciles never overlap. It sleeps until a child of the
job changes (pod/Job watch events wake it through `Triggers`), the job's spec changes, the next
progress scrape is due, or the resync interval passes — no polling of the API: children come from
Kopf's indexes, and the only calls are the writes a decision asks for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from pydantic import ValidationError

from . import metrics
from .api import ConditionType, FineTuneJobSpec, FineTuneJobStatus, is_true
from .cost import PriceTable, parse_price_table
from .kube import Kube, is_status
from .manifests import (
    COMPONENT_TRAINER,
    COMPONENT_VALIDATION,
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    JobRef,
)
from .progress import Sample, scrape
from .queueing import LABEL_JOB_UID, KueueView
from .reconcile import Decision, JobInput, Observed, attempt_of, reconcile, scrape_target
from .settings import OperatorSettings

JSON = dict[str, Any]
Key = tuple[str, str]
PRICE_TTL_SECONDS = 30.0


class Triggers:
    """One asyncio.Event per job: set by watch events of its children, awaited by its loop."""

    def __init__(self) -> None:
        self._events: dict[Key, asyncio.Event] = {}

    def get(self, key: Key) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    def wake(self, key: Key) -> None:
        event = self._events.get(key)
        if event is not None:
            event.set()

    def forget(self, key: Key) -> None:
        self._events.pop(key, None)


@dataclass
class Prices:
    """The price ConfigMap, cached for PRICE_TTL_SECONDS and fetched by one caller at a time."""

    kube: Kube
    namespace: str
    name: str
    table: PriceTable = field(default_factory=PriceTable)
    fetched: float = -1e9
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, logger: logging.Logger | logging.LoggerAdapter[Any]) -> PriceTable:
        if time.monotonic() - self.fetched < PRICE_TTL_SECONDS:
            return self.table
        async with self.lock:
            if time.monotonic() - self.fetched < PRICE_TTL_SECONDS:
                return self.table
            try:
                data = await self.kube.read_config_map_data(self.namespace, self.name)
            except Exception as err:  # keep the last table; costs are estimates
                logger.warning(f"cannot read price ConfigMap {self.namespace}/{self.name}: {err}")
                data = None
            if data is None:
                logger.info(f"no price ConfigMap {self.namespace}/{self.name}: costs show as 0.00")
            table, problems = parse_price_table(data)
            for problem in problems:
                logger.warning(problem)
            self.table, self.fetched = table, time.monotonic()
        return self.table


@dataclass
class Context:
    """What the handlers share (kept in Kopf's memo)."""

    settings: OperatorSettings
    kube: Kube
    http: aiohttp.ClientSession
    triggers: Triggers
    prices: Prices


def _plain(values: Iterable[Any] | None) -> list[JSON]:
    return [v for v in (values or []) if isinstance(v, dict)]


def _component(obj: JSON) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT, ""))


def _controller(obj: JSON) -> str | None:
    """The UID of the object's controller (the owner reference with controller: true)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((str(r.get("uid")) for r in refs if r.get("controller") is True), None)


def _labelled_for(obj: JSON, job_name: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(LABEL_MANAGED_BY) == MANAGED_BY and labels.get(LABEL_JOB) == job_name


def observe(
    key: Key,
    owner_uid: str,
    pods_index: Mapping[Key, Iterable[JSON]],
    jobs_index: Mapping[Key, Iterable[JSON]],
) -> tuple[list[JSON], list[JSON], list[JSON]]:
    """The job's validation pods, trainer pods and trainer Jobs. Only children of this very object count:
    controlled by it (the controller owner reference's UID: a FineTuneJob deleted and created again under
    the same name must not see the children of its predecessor that the garbage collector has not
    removed yet) and labelled for it (an owner reference alone is easy to forge on a pod a tenant
    creates, and a trainer pod is controlled by its Job, not by us)."""
    name = key[1]
    jobs = [j for j in _plain(jobs_index.get(key)) if _controller(j) == owner_uid and _labelled_for(j, name)]
    job_uids = {str((j.get("metadata") or {}).get("uid")) for j in jobs}
    pods = [p for p in _plain(pods_index.get(key)) if _labelled_for(p, name)]
    validation = [p for p in pods if _component(p) == COMPONENT_VALIDATION and _controller(p) == owner_uid]
    trainer = [p for p in pods if _component(p) == COMPONENT_TRAINER and _controller(p) in job_uids]
    return validation, trainer, jobs


def parse_job(
    *,
    name: str,
    namespace: str,
    uid: str,
    generation: int,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
) -> JobInput:
    ref = JobRef(name=name, namespace=namespace, uid=uid)
    try:
        parsed_status = FineTuneJobStatus.model_validate(dict(status))
    except ValidationError:
        parsed_status = FineTuneJobStatus()
    try:
        return JobInput(ref, generation, FineTuneJobSpec.model_validate(dict(spec)), parsed_status)
    except ValidationError as err:
        return JobInput(ref, generation, None, parsed_status, spec_error=str(err).replace("\n", "; "))


def kueue_job(job: JobInput, trainer_jobs: Iterable[JSON]) -> JSON | None:
    """The current attempt's trainer Job when Kueue's view of it is needed: the job has a queue, the Job
    is not finished, and it waits (suspended), is to be suspended, or was not seen admitted yet."""
    if job.spec is None or not job.spec.queue_name:
        return None
    current = max(trainer_jobs, key=attempt_of, default=None)
    if current is None:
        return None
    conditions = {c.get("type") for c in (current.get("status") or {}).get("conditions") or []}
    if conditions & {"Complete", "SuccessCriteriaMet", "Failed"}:
        return None
    suspended = bool((current.get("spec") or {}).get("suspend"))
    if suspended or job.spec.suspend or not is_true(job.status.conditions, ConditionType.ADMITTED):
        return current
    return None


async def read_kueue(
    kube: Kube,
    namespace: str,
    queue_name: str,
    trainer_job: JSON,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> KueueView | None:
    """The Workload Kueue made for `trainer_job`, its LocalQueue and ClusterQueue. None when they cannot
    be read (the status then says nothing it does not know). The namespace's other Workloads are read
    only while this one waits, for its position."""
    uid = str((trainer_job.get("metadata") or {}).get("uid") or "")
    try:
        mine = await kube.kueue_list(namespace, "workloads", f"{LABEL_JOB_UID}={uid}")
        local_queue = await kube.kueue_get(namespace, "localqueues", queue_name)
    except Exception as err:
        if is_status(err, 404):
            return KueueView(installed=False)
        logger.warning(f"cannot read Kueue's Workload or LocalQueue {queue_name} in {namespace}: {err}")
        return None
    workload = max(
        mine, key=lambda w: str((w.get("metadata") or {}).get("creationTimestamp") or ""), default=None
    )
    cluster_queue, missing = None, False
    cq_name = str(((local_queue or {}).get("spec") or {}).get("clusterQueue") or "")
    if cq_name:
        try:
            cluster_queue = await kube.kueue_get(None, "clusterqueues", cq_name)
            missing = cluster_queue is None
        except Exception as err:  # the quota in the message is a help, not a must
            if is_status(err, 403):  # kueue.readClusterQueues off: expected, not worth a warning a loop
                logger.debug(f"not allowed to read ClusterQueue {cq_name}: {err}")
            else:
                logger.warning(f"cannot read ClusterQueue {cq_name}: {err}")
    others: list[JSON] = []
    if workload is not None and not (workload.get("status") or {}).get("admission"):
        try:
            others = await kube.kueue_list(namespace, "workloads")
        except Exception as err:
            logger.warning(f"cannot list Kueue Workloads in {namespace}: {err}")
    return KueueView(
        workload=workload,
        local_queue=local_queue,
        cluster_queue=cluster_queue,
        namespace_workloads=others,
        cluster_queue_missing=missing,
    )


async def apply(
    ctx: Context,
    *,
    body: kopf.Body,
    job: JobInput,
    decision: Decision,
    written: FineTuneJobStatus,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    known: set[tuple[str, str]] | None = None,
) -> FineTuneJobStatus:
    """Carry out a decision: children first, then status, then events (so a crash in between
    repeats the children, which are idempotent, never reports what did not happen). `known` holds the
    children this loop has already created (or found existing): asked again, they cost no API call."""
    ns = job.ref.namespace
    known = set() if known is None else known
    for obj in decision.create:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in known:
            continue
        created = await ctx.kube.create(obj)  # StaleChildError: a predecessor's child, retried later
        if obj["kind"] == "ConfigMap":
            # Asked for again before each attempt; a pod or Job is recreated if someone deleted it.
            known.add(key)
        if created:
            logger.info(f"created {obj['kind']} {obj['metadata']['name']}")
    for name, patch in decision.patch_jobs:
        try:
            await ctx.kube.patch_job(ns, name, patch)
        except Exception as err:
            if not is_status(err, 404):
                raise
        logger.info(f"patched Job {name}: {patch}")
    for name, patch in decision.patch_workloads:
        try:
            await ctx.kube.patch_workload(ns, name, patch)
        except Exception as err:
            if not is_status(err, 404):
                raise
        logger.info(f"patched Kueue Workload {name}: {patch}")
    new = decision.status.to_patch()
    if new != written.to_patch():
        await ctx.kube.patch_status(ns, job.ref.name, new)
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
    return decision.status


async def run_job(
    ctx: Context,
    *,
    name: str,
    namespace: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    pods_index: Mapping[Key, Iterable[JSON]],
    jobs_index: Mapping[Key, Iterable[JSON]],
    logger: logging.Logger | logging.LoggerAdapter[Any],
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    key = (namespace, name)
    trigger = ctx.triggers.get(key)
    settings = ctx.settings
    written: FineTuneJobStatus | None = None
    gpu_seconds_seen: dict[str, float] = {}
    known: set[tuple[str, str]] = set()
    last_scrape = 0.0
    try:
        while not stopped:
            trigger.clear()
            meta = body.get("metadata", {})
            job = parse_job(
                name=name,
                namespace=namespace,
                uid=str(meta.get("uid", "")),
                generation=int(meta.get("generation") or 0),
                spec=body.get("spec", {}),
                status=body.get("status", {}),
            )
            if written is not None:
                # Our own last write wins over a watch event that has not caught up with it yet.
                job = JobInput(job.ref, job.generation, job.spec, written, job.spec_error)
            validation, trainer_pods, trainer_jobs = observe(key, job.ref.uid, pods_index, jobs_index)
            sample: Sample | None = None
            target = scrape_target(trainer_pods, trainer_jobs)
            if target is not None and time.monotonic() - last_scrape >= settings.progress_interval * 0.9:
                sample = await scrape(ctx.http, target, settings.metrics_port, settings.scrape_timeout)
                last_scrape = time.monotonic()
            prices = await ctx.prices.get(logger)
            queued = kueue_job(job, trainer_jobs)
            kueue = None
            if queued is not None and job.spec is not None:
                kueue = await read_kueue(ctx.kube, namespace, job.spec.queue_name, queued, logger)
            observed = Observed(
                validation, trainer_jobs, trainer_pods, sample, prices, gpu_seconds_seen, kueue=kueue
            )
            started = time.monotonic()
            at = now()
            decision = reconcile(job, observed, settings, at)
            gpu_seconds_seen = decision.gpu_seconds_seen or gpu_seconds_seen
            try:
                written = await apply(
                    ctx, body=body, job=job, decision=decision, written=job.status, logger=logger, known=known
                )
            except Exception as err:
                metrics.METRICS.observe_reconcile(time.monotonic() - started, error=True)
                if is_status(err, 404) and not decision.create:
                    return  # the FineTuneJob is gone
                logger.warning(f"reconcile of {namespace}/{name} failed, retrying: {err}")
                written = None
                await _sleep(trigger, stopped, min(5.0, settings.resync_seconds))
                continue
            metrics.METRICS.observe_reconcile(time.monotonic() - started)
            metrics.METRICS.record_status(
                namespace,
                name,
                created=meta.get("creationTimestamp"),
                spec=job.spec,
                old=job.status,
                new=decision.status,
                now=at,
            )
            if decision.done:
                return
            timeout = settings.progress_interval if target is not None else settings.resync_seconds
            await _sleep(trigger, stopped, timeout)
    finally:
        ctx.triggers.forget(key)


async def _sleep(trigger: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    """Until a child event, the daemon's stop, or the timeout, whichever comes first."""
    woken = asyncio.ensure_future(trigger.wait())
    halted = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({woken, halted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (woken, halted):
            task.cancel()
