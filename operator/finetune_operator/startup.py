"""Operator start and stop: Kopf settings and the shared clients in the memo."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import Any, cast

import aiohttp
import kopf

from . import metrics
from .kube import Kube, load_api_client
from .service import Context, Prices, Triggers
from .settings import ANNOTATION_PREFIX, FINALIZER, OperatorSettings

REPORTING_COMPONENT = "finetune-operator"


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf builds an "essence" of every watched object on every event to detect changes for
    on.create/update handlers — a deep copy of the whole body (a pod with managedFields: ~3 ms). This
    operator has no such handlers (it is level-based: daemons, indexes, events), so the essence is
    never compared, and an empty one took a third of the operator's CPU off the 200-job bench. Add
    change handlers, and this class must go."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})


@kopf.on.startup()
async def configure(
    *,
    settings: kopf.OperatorSettings,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    ours = OperatorSettings.from_env()
    settings.persistence.finalizer = FINALIZER
    # Kopf's own bookkeeping goes to annotations under our prefix, never into the public status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Kopf posts events for every handler outcome at INFO; ours are posted explicitly.
    settings.posting.level = logging.WARNING
    # `kubectl describe` shows "From: finetune-operator" (Kopf would say "kopf"); the instance is the
    # replica, so a user can tell which one acted.
    settings.posting.reporting_component = REPORTING_COMPONENT
    settings.posting.reporting_instance = os.environ.get("POD_NAME") or socket.gethostname()
    settings.posting.event_name_prefix = f"{REPORTING_COMPONENT}-"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.batching.error_delays = (1, 2, 5, 10)
    api = load_api_client(ours.api_workers)
    kube = Kube(api, ours.api_workers)
    memo.context = Context(
        settings=ours,
        kube=kube,
        http=aiohttp.ClientSession(),
        triggers=Triggers(),
        prices=Prices(kube, ours.operator_namespace, ours.price_configmap),
    )
    if ours.metrics_listen_port:
        metrics.METRICS.serve(ours.metrics_listen_port, ours.metrics_listen_host)
    # A standalone operator is always the one doing the work; under peering (FTO_PEERING_NAME),
    # peering.py keeps the gauge in step with the replica's actual role.
    if not os.environ.get("FTO_PEERING_NAME", "").strip():
        metrics.METRICS.set_leader(True)
    logger.info(f"finetune-operator started: trainer image {ours.trainer_image}")


@kopf.on.cleanup()
async def close(*, memo: Any, **_: Any) -> None:
    ctx = memo.get("context")
    if isinstance(ctx, Context):
        await ctx.http.close()
        ctx.kube.close()
