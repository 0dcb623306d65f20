"""Small helpers for tests that talk to the real API server through kubectl, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def kubectl(
    *args: str, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run kubectl from the local environment's PATH with its KUBECONFIG."""
    proc = subprocess.run(
        ["kubectl", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` on timeout.

    Exceptions inside the predicate count as "not yet" (objects may not exist yet), and the
    last one is shown if time runs out.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def enforce_restricted(namespace: str) -> None:
    """Pod Security "restricted", enforced by the real API server: every pod the product creates in this
    namespace (operator, validation, trainer) must be admitted under it, or the test fails there."""
    kubectl(
        "label",
        "--overwrite",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
