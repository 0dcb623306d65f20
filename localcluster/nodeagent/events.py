"""Kubernetes Events about pods (what `kubectl describe pod` shows), sent from a background thread
so that a slow API server never holds up a pod worker."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

log = logging.getLogger("nodeagent.events")
JSON = dict[str, Any]


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventRecorder:
    def __init__(self, api: client.ApiClient, node_name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.node_name = node_name
        self._queue: queue.Queue[JSON | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def pod_event(
        self, pod: JSON, etype: str, reason: str, message: str, container: str | None = None
    ) -> None:
        meta = pod.get("metadata", {})
        involved: JSON = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        ts = _micro_now()
        body: JSON = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": etype,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": ts[:19] + "Z",
            "lastTimestamp": ts[:19] + "Z",
            "count": 1,
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
        }
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            log.warning("event queue full, dropping event", extra={"reason": reason})

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            try:
                self.core.create_namespaced_event(
                    body["metadata"]["namespace"], body, _request_timeout=(5, 10)
                )
            except Exception as exc:
                log.info("could not record event", extra={"reason": body["reason"], "error": str(exc)})

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
