"""`python -m finetune_operator.release`: take the operator's finalizer off the FineTuneJobs it handled.

The chart runs it as a `helm uninstall` post-delete hook. Kopf keeps a finalizer on every job while a
daemon runs for it; with the operator gone nobody would remove it, and deleting a job, its namespace
or the CRD would wait for ever. Only the finalizer goes: the jobs, their children and their data stay
(a job deleted afterwards is garbage-collected with its children at once).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .api import GROUP, PLURAL, VERSION
from .kube import load_api_client
from .settings import FINALIZER

log = logging.getLogger("finetune_operator.release")


def without_ours(finalizers: Sequence[str] | None) -> list[str] | None:
    """The finalizers to keep, or None when ours is not there (nothing to do)."""
    current = list(finalizers or [])
    if FINALIZER not in current:
        return None
    return [f for f in current if f != FINALIZER]


def release(api: client.CustomObjectsApi, namespaces: Sequence[str]) -> int:
    """Remove our finalizer from every job in `namespaces` (all when empty); how many were released."""
    if namespaces:
        items = [
            item
            for ns in namespaces
            for item in api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        ]
    else:
        items = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    released = 0
    for item in items:
        released += _release_one(api, item)
    return released


def _release_one(api: client.CustomObjectsApi, item: dict[str, Any]) -> int:
    meta = item["metadata"]
    for _ in range(5):
        keep = without_ours(meta.get("finalizers"))
        if keep is None:
            return 0
        # The resourceVersion makes it a compare-and-swap: another writer's finalizer is never dropped.
        body = {"metadata": {"finalizers": keep, "resourceVersion": meta["resourceVersion"]}}
        try:
            api.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body)
        except ApiException as exc:
            if exc.status == 404:
                return 0
            if exc.status != 409:
                raise
            meta = api.get_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"])[
                "metadata"
            ]
            continue
        log.info("released %s/%s", meta["namespace"], meta["name"])
        return 1
    raise RuntimeError(f"{meta['namespace']}/{meta['name']} kept changing; run the uninstall hook again")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    namespaces = [n.strip() for n in os.environ.get("FTO_NAMESPACES", "").split(",") if n.strip()]
    api = client.CustomObjectsApi(load_api_client(4))
    count = release(api, namespaces)
    log.info("removed %s from %d FineTuneJob(s)", FINALIZER, count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
