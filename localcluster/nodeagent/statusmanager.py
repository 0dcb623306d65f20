"""The pod's status, as a kubelet's status manager reports it: built from the containers' states
(`status.status_patch`, pure), patched only when it changed, retried after a failure."""

from __future__ import annotations

import logging
import time
from typing import Any

from localcluster.nodeagent import kube, status
from localcluster.nodeagent.status import PodStatusInput

log = logging.getLogger("nodeagent.status")
JSON = dict[str, Any]
RETRY_SECONDS = 2.0


class StatusManager:
    def __init__(self, core: Any, pod: JSON) -> None:
        self.core = core
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.last_sent: JSON | None = None
        self.retry_at = 0.0

    def report(self, inp: PodStatusInput, force: bool = False) -> None:
        patch = status.status_patch(inp)
        cmp = status.comparable(patch)
        if cmp == self.last_sent and not force:
            return
        if time.monotonic() < self.retry_at and not force:
            return
        try:
            kube.retry(
                "patch pod status",
                lambda: self.core.patch_namespaced_pod_status(
                    self.name,
                    self.namespace,
                    patch,
                    _content_type="application/strategic-merge-patch+json",
                    _request_timeout=kube.TIMEOUT,
                ),
                attempts=3,
            )
        except Exception as exc:
            if kube.is_status(exc, 404):
                return
            log.warning(
                "status patch failed",
                extra={"pod": f"{self.namespace}/{self.name}", "error": kube.describe(exc)},
            )
            self.retry_at = time.monotonic() + RETRY_SECONDS
            return
        self.last_sent = cmp
        log.info(
            "status", extra={"pod": f"{self.namespace}/{self.name}", "uid": self.uid, "phase": inp.phase}
        )

    @property
    def unsent(self) -> bool:
        return self.last_sent is None or self.retry_at > time.monotonic()
