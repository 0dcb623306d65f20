"""Pod status from container states: phase, conditions, containerStatuses. Pure.

Follows the kubelet's rules (pkg/kubelet/kubelet_pods.go getPhase / generateAPIPodStatus and
pkg/kubelet/status/generate.go) closely enough for the Job controller and kubectl to read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
TERMINAL_PHASES = (SUCCEEDED, FAILED)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_api_time(rfc3339: str | None) -> str | None:
    """Whole seconds, as metav1.Time serialises (the shim records nanoseconds)."""
    if not rfc3339:
        return None
    return rfc3339[:19] + "Z"


@dataclass
class Terminated:
    exit_code: int
    reason: str
    started_at: str | None
    finished_at: str | None
    message: str = ""
    signal: int | None = None

    def to_json(self, container_id: str) -> JSON:
        out: JSON = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": to_api_time(self.started_at),
            "finishedAt": to_api_time(self.finished_at),
        }
        if self.message:
            out["message"] = self.message
        if self.signal:
            out["signal"] = self.signal
        if container_id:
            out["containerID"] = container_id
        return out


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


@dataclass
class ContainerState:
    """The agent's view of one container (one entry of containerStatuses)."""

    name: str
    image: str
    image_id: str = ""
    container_id: str = ""
    # waiting | running | terminated
    state: str = "waiting"
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: str | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False

    @property
    def succeeded(self) -> bool:
        return self.state == "terminated" and self.terminated is not None and self.terminated.exit_code == 0

    @property
    def failed(self) -> bool:
        return self.state == "terminated" and self.terminated is not None and self.terminated.exit_code != 0

    def to_json(self) -> JSON:
        state: JSON
        if self.state == "running":
            state = {"running": {"startedAt": to_api_time(self.started_at)}}
        elif self.state == "terminated" and self.terminated is not None:
            state = {"terminated": self.terminated.to_json(self.container_id)}
        else:
            waiting: JSON = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        out: JSON = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.state == "running" and self.started,
            "state": state,
            "lastState": (
                {"terminated": self.last_terminated.to_json("")} if self.last_terminated is not None else {}
            ),
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def pod_phase(
    restart_policy: str,
    init: Sequence[ContainerState],
    app: Sequence[ContainerState],
    terminal: bool = False,
) -> str:
    """The kubelet's getPhase; `terminal` means the pod is being torn down and will not restart."""
    init_pending = 0
    for c in init:
        if c.succeeded:
            continue
        if c.failed and (restart_policy == "Never" or terminal):
            return FAILED
        init_pending += 1
    waiting = running = stopped = succeeded = 0
    for c in app:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            if c.succeeded:
                succeeded += 1
        elif c.last_terminated is not None:
            # Waiting to restart after a run: counts as stopped with the last exit code.
            stopped += 1
            if c.last_terminated.exit_code == 0:
                succeeded += 1
        else:
            waiting += 1
    if terminal and running == 0:
        return SUCCEEDED if app and stopped == succeeded and waiting == 0 else FAILED
    if init_pending > 0 or waiting > 0:
        return PENDING
    if running > 0:
        return RUNNING
    if stopped > 0:
        if restart_policy == "Always":
            return RUNNING
        if stopped == succeeded:
            return SUCCEEDED
        if restart_policy == "Never":
            return FAILED
        return RUNNING
    return PENDING


def _condition(
    previous: dict[str, JSON], ctype: str, status: bool, reason: str = "", message: str = ""
) -> JSON:
    value = "True" if status else "False"
    old = previous.get(ctype)
    transition = old.get("lastTransitionTime") if old and old.get("status") == value else None
    cond: JSON = {
        "type": ctype,
        "status": value,
        "lastProbeTime": None,
        "lastTransitionTime": transition or now(),
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def pod_conditions(
    previous: Sequence[JSON],
    phase: str,
    sandbox_ready: bool,
    init: Sequence[ContainerState],
    app: Sequence[ContainerState],
) -> list[JSON]:
    prev = {c.get("type", ""): c for c in previous}
    done = phase in TERMINAL_PHASES
    conds = [_condition(prev, "PodReadyToStartContainers", sandbox_ready and not done)]
    incomplete = [c.name for c in init if not c.succeeded]
    if done and not incomplete:
        conds.append(_condition(prev, "Initialized", True, "PodCompleted"))
    elif incomplete:
        conds.append(
            _condition(
                prev,
                "Initialized",
                False,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete)}]",
            )
        )
    else:
        conds.append(_condition(prev, "Initialized", True))
    unready = [c.name for c in app if not c.ready]
    for ctype in ("ContainersReady", "Ready"):
        if done:
            conds.append(_condition(prev, ctype, False, "PodCompleted"))
        elif unready:
            conds.append(
                _condition(
                    prev,
                    ctype,
                    False,
                    "ContainersNotReady",
                    f"containers with unready status: [{' '.join(unready)}]",
                )
            )
        else:
            conds.append(_condition(prev, ctype, True))
    return conds


@dataclass
class PodStatusInput:
    uid: str
    phase: str
    pod_ip: str
    host_ip: str
    sandbox_ready: bool
    init: list[ContainerState] = field(default_factory=list)
    app: list[ContainerState] = field(default_factory=list)
    previous_conditions: list[JSON] = field(default_factory=list)
    start_time: str | None = None
    reason: str = ""
    message: str = ""


def status_patch(inp: PodStatusInput) -> JSON:
    """A strategic-merge patch for pods/status. metadata.uid makes it a precondition (a pod that
    was deleted and recreated under the same name refuses a patch meant for the old one)."""
    status: JSON = {
        "phase": inp.phase,
        "conditions": pod_conditions(
            inp.previous_conditions, inp.phase, inp.sandbox_ready, inp.init, inp.app
        ),
        "hostIP": inp.host_ip,
        "hostIPs": [{"ip": inp.host_ip}],
        "containerStatuses": [c.to_json() for c in inp.app],
    }
    if inp.init:
        status["initContainerStatuses"] = [c.to_json() for c in inp.init]
    if inp.pod_ip:
        status["podIP"] = inp.pod_ip
        status["podIPs"] = [{"ip": inp.pod_ip}]
    if inp.start_time:
        status["startTime"] = inp.start_time
    if inp.reason:
        status["reason"] = inp.reason
    if inp.message:
        status["message"] = inp.message
    return {"metadata": {"uid": inp.uid}, "status": status}


def comparable(patch: JSON) -> JSON:
    """The patch without timestamps that change on every build, to decide whether to send it."""
    status = dict(patch["status"])
    status["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]
    ]
    return {"metadata": patch["metadata"], "status": status}
