"""Kopf handlers: thin. They pick the inputs out of Kopf's kwargs and call the service.

- indexes of our pods and Jobs by (namespace, FineTuneJob name): the reconcile reads children from
  here, never from the API;
- watch events of those children and spec changes of a FineTuneJob wake that job's loop;
- one daemon per FineTuneJob runs its reconcile loop (service.run_job) until it is terminal.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from . import metrics, service
from .api import GROUP, PLURAL, VERSION
from .manifests import LABEL_JOB, LABEL_MANAGED_BY, MANAGED_BY

OURS = {LABEL_MANAGED_BY: MANAGED_BY}


def _slim(body: kopf.Body) -> dict[str, Any]:
    """What the reconcile reads of a child; a copy, so the index never aliases a watch event."""
    meta = body.get("metadata", {})
    spec = body.get("spec", {})
    slim_spec: dict[str, Any] = {
        k: spec[k] for k in ("nodeName", "suspend", "containers", "completions") if k in spec
    }
    return copy.deepcopy(
        {
            "metadata": {
                k: meta[k]
                for k in (
                    "name",
                    "uid",
                    "labels",
                    "annotations",
                    "ownerReferences",
                    "creationTimestamp",
                    "deletionTimestamp",
                )
                if k in meta
            },
            "spec": slim_spec,
            "status": dict(body.get("status", {})),
        }
    )


def _key(namespace: str | None, labels: kopf.Labels) -> tuple[str, str] | None:
    job = labels.get(LABEL_JOB)
    return (namespace, job) if namespace and job else None


@kopf.index("pods", labels=OURS)
def pods_by_job(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = _key(namespace, labels)
    return {key: _slim(body)} if key else {}


@kopf.index("batch", "v1", "jobs", labels=OURS)
def jobs_by_job(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = _key(namespace, labels)
    return {key: _slim(body)} if key else {}


@kopf.on.event("pods", labels=OURS)
def pod_changed(*, namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    key = _key(namespace, labels)
    if key:
        memo.context.triggers.wake(key)


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
def job_changed(*, namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    key = _key(namespace, labels)
    if key:
        memo.context.triggers.wake(key)


@kopf.on.event(GROUP, VERSION, PLURAL)
def finetunejob_changed(
    *,
    type: str | None,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: Any,
    **_: Any,
) -> None:
    if type == "DELETED" and namespace:
        metrics.METRICS.forget_job(namespace, name)
        return
    # Our own status writes do not change the generation; a spec edit (suspend, retries) does.
    if namespace and meta.get("generation") != status.get("observedGeneration"):
        memo.context.triggers.wake((namespace, name))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def finetunejob(
    *,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    # Kopf passes each index by its function's name.
    await service.run_job(
        memo.context,
        name=name,
        namespace=namespace or "",
        body=body,
        stopped=stopped,
        pods_index=kwargs["pods_by_job"],
        jobs_index=kwargs["jobs_by_job"],
        logger=logger,
    )
