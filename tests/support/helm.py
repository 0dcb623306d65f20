"""Render and install the Helm chart (helm/finetune-operator) from tests, the way users run helm."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "finetune-operator"
MONITORING_API = "monitoring.coreos.com/v1"
MONITORING_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})

Manifest = dict[str, Any]


def helm_binary() -> str:
    """helm from PATH, else the one the local environment built (make binaries)."""
    found = shutil.which("helm")
    if found:
        return found
    candidates = [REPO / ".dev" / "bin" / "helm"]
    candidates += sorted(Path.home().glob(".cache/finetune-operator/bin/*/helm"), reverse=True)
    for path in candidates:
        if path.exists():
            return str(path)
    raise AssertionError("helm not found: run `make binaries` (or put helm on PATH)")


def helm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def set_args(values: Mapping[str, Any] | None) -> list[str]:
    """{"a.b": 1, "c": [x, y]} -> --set-json a.b=1 --set-json c=[...] (types survive)."""
    import json

    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def render_text(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = "fto-system",
    release: str = "fto",
    api_versions: Iterable[str] = (),
    chart: Path = CHART,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    args = ["template", release, str(chart), "--namespace", namespace, *set_args(values)]
    for api in api_versions:
        args += ["--api-versions", api]
    return helm(*args, check=check, timeout=60)


def render(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = "fto-system",
    release: str = "fto",
    api_versions: Iterable[str] = (),
    chart: Path = CHART,
) -> list[Manifest]:
    """Every object `helm template` renders, parsed."""
    text = render_text(
        values, namespace=namespace, release=release, api_versions=api_versions, chart=chart
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    """The release's objects of `kind`; Helm hooks (created only around install or uninstall) are not
    among them and are checked on their own."""
    return [
        m
        for m in manifests
        if m["kind"] == kind and "helm.sh/hook" not in m["metadata"].get("annotations", {})
    ]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in by_kind(manifests, kind) if name is None or m["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
    )
    return found[0]


def container_env(deployment: Manifest) -> dict[str, Any]:
    """name -> value (or the valueFrom dict) of the operator container."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
