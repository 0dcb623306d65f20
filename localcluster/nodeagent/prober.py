"""The pod's probes, as a kubelet's prober manager runs them: startup first, then liveness and
readiness on their periods; a failed startup or liveness probe restarts the container."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from localcluster.nodeagent import probes
from localcluster.nodeagent.containers import Runner
from localcluster.nodeagent.events import EventRecorder
from localcluster.nodeagent.runtime import Instance

JSON = dict[str, Any]
DEFAULT_GRACE = 30
_WHAT = {"startupProbe": "Startup", "livenessProbe": "Liveness", "readinessProbe": "Readiness"}


def _read_env(inst: Instance) -> dict[str, str]:
    spec = json.loads((inst.dir / "spec.json").read_text(encoding="utf-8"))
    env: dict[str, str] = spec.get("env") or {}
    return env


def run_probes(
    pod: JSON,
    runners: list[Runner],
    pod_ip: str,
    events: EventRecorder,
    restart: Callable[[Runner, int], None],
) -> None:
    """Run the probes that are due; `restart(runner, grace)` stops a container that failed one."""
    now = time.monotonic()
    for r in runners:
        if r.status.state != "running" or r.instance is None or not r.probes:
            continue
        pid = r.instance.container_pid()
        env = _read_env(r.instance)
        for kind in probes.KINDS:
            p = r.probes.get(kind)
            if p is None or now < p.next_due:
                continue
            if kind != "startupProbe" and not r.status.started:
                continue
            if kind == "startupProbe" and r.status.started:
                continue
            prefix = probes.exec_prefix_for(pid) if pid else None
            ok, message = probes.run_probe(p.spec, r.spec, pod_ip, prefix, env)
            changed = p.record(ok, time.monotonic())
            if not ok:
                events.pod_event(
                    pod, "Warning", "Unhealthy", f"{_WHAT[kind]} probe failed: {message}", r.name
                )
            if kind == "readinessProbe" and changed:
                r.status.ready = p.result
            elif kind == "startupProbe" and changed and p.result:
                r.status.started = True
                r.status.ready = not r.init and "readinessProbe" not in r.probes
            elif kind in ("livenessProbe", "startupProbe") and changed and not p.result:
                why = "liveness" if kind == "livenessProbe" else "startup"
                events.pod_event(
                    pod,
                    "Normal",
                    "Killing",
                    f"Container {r.name} failed {why} probe, will be restarted",
                    r.name,
                )
                grace = p.spec.get("terminationGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE)
                restart(r, int(grace))
                break
