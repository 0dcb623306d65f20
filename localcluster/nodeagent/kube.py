"""Thin helpers over the kubernetes client: raw-JSON calls, retries, kubeconfig facts."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

log = logging.getLogger("nodeagent.kube")

JSON = dict[str, Any]
T = TypeVar("T")
TIMEOUT = (5, 30)


def load_client(kubeconfig: str) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    # One connection per concurrently syncing pod worker, plus the watch and the heartbeat.
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


def server_address(kubeconfig: str) -> tuple[str, int]:
    """Host and port of the API server as the kubeconfig's current context names it."""
    with open(kubeconfig, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    current = doc.get("current-context")
    contexts = {c["name"]: c["context"] for c in doc.get("contexts") or []}
    cluster_name = contexts.get(current, {}).get("cluster") if current else None
    clusters = {c["name"]: c["cluster"] for c in doc.get("clusters") or []}
    cluster = clusters.get(cluster_name) if cluster_name else next(iter(clusters.values()))
    if cluster is None:
        raise ValueError(f"{kubeconfig}: no cluster")
    url = urlparse(cluster["server"])
    return url.hostname or "127.0.0.1", url.port or 443


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> JSON:
    """Call a generated API method and return the response body as JSON (no model objects)."""
    resp = call(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
    data: JSON = json.loads(resp.data or b"{}")
    return data


def get_or_none(call: Callable[..., Any], *args: Any, **kwargs: Any) -> JSON | None:
    try:
        return raw(call, *args, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def describe(exc: BaseException) -> str:
    """One line for an API error (an ApiException's str() carries headers and the whole body)."""
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            message = ""
        return f"{exc.status} {exc.reason}: {message}".rstrip(": ")
    return str(exc)[:300]


def is_status(exc: BaseException, *codes: int) -> bool:
    return isinstance(exc, ApiException) and exc.status in codes


def retry(what: str, fn: Callable[[], T], attempts: int = 5, first_delay: float = 0.5) -> T:
    """Retry transient API failures (connection errors, 429, 5xx, conflicts) with backoff."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except ApiException as exc:
            if exc.status is not None and exc.status < 500 and exc.status not in (409, 429):
                raise
            if attempt == attempts:
                raise
            log.warning("api call failed, retrying", extra={"what": what, "status": exc.status})
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning("api call failed, retrying", extra={"what": what, "error": str(exc)})
        time.sleep(delay)
        delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")
