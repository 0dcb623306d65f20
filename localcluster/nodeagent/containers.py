"""The pod's containers, as a kubelet's container lifecycle runs them: resolve the image, build the
launch plan, start an instance through the sandbox shim, record how it ended, restart with back-off,
and stop with the grace period. Which image runs how is `images` (the image store) and `podspec`
(the plan); the process in its own root is `sandbox`."""

from __future__ import annotations

import logging
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster.nodeagent import probes
from localcluster.nodeagent.events import EventRecorder
from localcluster.nodeagent.images import ImageNotFoundError, resolve_image
from localcluster.nodeagent.podspec import ConfigError, Objects, PodContext, build_launch_plan
from localcluster.nodeagent.runtime import Instance, shim_python
from localcluster.nodeagent.status import ContainerState, Terminated

log = logging.getLogger("nodeagent.containers")
JSON = dict[str, Any]

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0


@dataclass
class Runner:
    """One container of the pod and its restart/probe bookkeeping."""

    spec: JSON
    init: bool
    status: ContainerState
    instance: Instance | None = None
    previous: Instance | None = None
    next_start: float = 0.0
    backoff: float = 0.0
    image_failures: int = 0
    config_error_until: float = 0.0
    recheck_at: float = 0.0
    probes: dict[str, probes.ProbeState] = field(default_factory=dict)
    started_mono: float = 0.0
    reported_exit: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def policy(self) -> str:
        return str(self.spec.get("terminationMessagePolicy") or "File")


def image_id(image: str, venv_bin: str) -> str:
    try:
        return resolve_image(image, venv_bin).image_id
    except ImageNotFoundError:
        return ""


class ContainerManager:
    def __init__(
        self,
        *,
        events: EventRecorder,
        venv_bin: str,
        sandbox: Path,
        pod: JSON,
        wake: Callable[[], None],
        current_pod: Callable[[], JSON],
    ) -> None:
        self.events = events
        self.venv_bin = venv_bin
        self.sandbox = sandbox
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.restart_policy: str = pod["spec"].get("restartPolicy") or "Always"
        self.wake = wake
        self.current_pod = current_pod

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"pod": f"{self.namespace}/{self.name}", "uid": self.uid, **extra}

    def container_id(self, r: Runner, number: int) -> str:
        return f"local://{self.uid}/{r.name}/{number}"

    def instance_dir(self, r: Runner) -> Path:
        return self.sandbox / "containers" / r.name

    def run(
        self, pod: JSON, runners: list[Runner], ctx: PodContext, objects: Callable[[JSON], Objects]
    ) -> None:
        """Init containers one after the other to success, then every app container (re)started."""
        for r in (r for r in runners if r.init):
            if r.status.succeeded:
                continue
            if r.status.state == "running":
                return
            if r.status.state == "terminated" or r.status.reason == "CrashLoopBackOff":
                if self.restart_policy != "Never":
                    self.maybe_restart(pod, r, ctx, objects)
                return
            self.start(pod, r, ctx, objects)
            return
        for r in runners:
            if r.init or r.status.state == "running":
                continue
            if r.status.state == "terminated" or (
                r.status.last_terminated is not None and r.status.reason == "CrashLoopBackOff"
            ):
                self.maybe_restart(pod, r, ctx, objects)
                continue
            self.start(pod, r, ctx, objects)

    def should_restart(self, r: Runner) -> bool:
        term = r.status.terminated or r.status.last_terminated
        if term is None:
            return True
        if self.restart_policy == "Always" and not r.init:
            return True
        return self.restart_policy in ("Always", "OnFailure") and term.exit_code != 0

    def maybe_restart(
        self, pod: JSON, r: Runner, ctx: PodContext, objects: Callable[[JSON], Objects]
    ) -> None:
        if not self.should_restart(r):
            return
        if time.monotonic() < r.next_start:
            if r.status.state == "terminated":
                r.status.last_terminated = r.status.terminated
                r.status.terminated = None
            r.status.state = "waiting"
            r.status.reason = "CrashLoopBackOff"
            r.status.message = (
                f"back-off {int(r.backoff)}s restarting failed container={r.name} "
                f"pod={self.name}_{self.namespace}({self.uid})"
            )
            return
        if r.status.state == "terminated":
            r.status.last_terminated = r.status.terminated
            r.status.terminated = None
        r.status.restart_count += 1
        self.start(pod, r, ctx, objects)

    def start(self, pod: JSON, r: Runner, ctx: PodContext, objects: Callable[[JSON], Objects]) -> None:
        now = time.monotonic()
        image = r.spec.get("image", "")
        try:
            img = resolve_image(image, self.venv_bin)
        except ImageNotFoundError as exc:
            if now < r.next_start:
                r.status.state, r.status.reason = "waiting", "ImagePullBackOff"
                r.status.message = f'Back-off pulling image "{image}"'
                return
            r.image_failures += 1
            r.status.state, r.status.reason, r.status.message = "waiting", "ErrImagePull", str(exc)
            self.events.pod_event(pod, "Warning", "Failed", f"Failed to pull image {image!r}: {exc}", r.name)
            self.events.pod_event(pod, "Warning", "Failed", "Error: ErrImagePull", r.name)
            r.backoff = min(BACKOFF_INITIAL * 2 ** (r.image_failures - 1), BACKOFF_MAX)
            r.next_start = now + r.backoff
            # Show ErrImagePull for a moment, then ImagePullBackOff, as a kubelet does.
            r.recheck_at = now + 1.0
            return
        if r.image_failures:
            # The pull back-off is over; crash back-off starts afresh.
            r.image_failures, r.backoff, r.next_start = 0, 0.0, 0.0
        if now < r.config_error_until:
            return
        number = r.status.restart_count
        inst = Instance(self.instance_dir(r), number)
        try:
            plan = build_launch_plan(
                ctx, r.spec, img, objects(pod), str(self.sandbox), str(inst.termination_log)
            )
        except ConfigError as exc:
            r.status.state, r.status.reason, r.status.message = (
                "waiting",
                "CreateContainerConfigError",
                str(exc),
            )
            self.events.pod_event(pod, "Warning", "Failed", f"Error: {exc}", r.name)
            r.config_error_until = now + 2.0
            return
        if r.instance is not None:
            r.previous = r.instance
        if inst.exists():
            shutil.rmtree(inst.dir, ignore_errors=True)
            inst.log_path.unlink(missing_ok=True)
        self.events.pod_event(
            pod, "Normal", "Pulled", f'Container image "{image}" already present on machine', r.name
        )
        inst.launch(plan, shim_python())
        r.instance = inst
        r.status.image_id = img.image_id
        r.status.container_id = self.container_id(r, number)
        inst.wait_started(10.0)
        inst.watch(self.wake)
        self.events.pod_event(pod, "Normal", "Created", f"Created container {r.name}", r.name)
        st = inst.state()
        if st is None:
            inst.done.wait(5.0)
            self.record_exit(r)
            return
        r.status.state, r.status.reason, r.status.message = "running", "", ""
        r.status.started_at = st.get("startedAt")
        r.status.terminated = None
        r.started_mono = time.monotonic()
        r.reported_exit = False
        r.probes = probes.new_probes(r.spec, r.started_mono)
        r.status.started = "startupProbe" not in r.probes
        r.status.ready = not r.init and "readinessProbe" not in r.probes and r.status.started
        log.info("container started", extra=self._ctx(container=r.name, argv0=plan.argv[0], n=number))
        self.events.pod_event(pod, "Normal", "Started", f"Started container {r.name}", r.name)

    def record_exit(self, r: Runner, event: bool = True) -> None:
        inst = r.instance
        if inst is None:
            return
        term: Terminated = inst.result(r.policy)
        r.status.state = "terminated"
        r.status.terminated = term
        r.status.ready = False
        r.status.started = False
        r.probes = {}
        ran = time.monotonic() - r.started_mono if r.started_mono else 0.0
        if ran >= BACKOFF_RESET_AFTER:
            r.backoff = 0.0
        # The first restart is immediate, then 10s doubling up to 5 minutes (kubelet's backoff).
        r.next_start = time.monotonic() + r.backoff
        r.backoff = BACKOFF_INITIAL if r.backoff == 0 else min(r.backoff * 2, BACKOFF_MAX)
        log.info(
            "container exited",
            extra=self._ctx(container=r.name, exit_code=term.exit_code, reason=term.reason),
        )
        if event and term.reason == "StartError":
            self.events.pod_event(self.current_pod(), "Warning", "Failed", f"Error: {term.message}", r.name)

    def kill(self, runners: list[Runner], grace: int) -> None:
        """SIGTERM, the grace period (cut short by a shorter deletion grace), then SIGKILL."""
        live = [r for r in runners if r.instance is not None and not r.instance.done.is_set()]
        if not live:
            return
        for r in live:
            assert r.instance is not None
            r.instance.signal(signal.SIGTERM)
        deadline = time.monotonic() + max(grace, 0)
        while time.monotonic() < deadline:
            if all(r.instance is not None and r.instance.done.is_set() for r in live):
                return
            new_grace = self.current_pod()["metadata"].get("deletionGracePeriodSeconds")
            if new_grace is not None and int(new_grace) < grace:
                # A shorter grace period (e.g. a forced delete) cuts the wait short.
                deadline = min(deadline, time.monotonic() + int(new_grace))
                grace = int(new_grace)
            time.sleep(0.1)
        for r in live:
            assert r.instance is not None
            if not r.instance.done.is_set():
                r.instance.signal(signal.SIGKILL)
        end = time.monotonic() + 5.0
        for r in live:
            assert r.instance is not None
            if not r.instance.done.wait(max(0.0, end - time.monotonic())):
                r.instance.kill_shim()
                r.instance.done.wait(2.0)

    def kill_all(self, runners: list[Runner], grace: int, why: str) -> None:
        live = [r for r in runners if r.instance is not None and not r.instance.done.is_set()]
        if not live:
            return
        log.info("stopping containers", extra=self._ctx(why=why, grace=grace))
        pod = self.current_pod()
        for r in live:
            self.events.pod_event(pod, "Normal", "Killing", f"Stopping container {r.name}", r.name)
        self.kill(live, grace)
        for r in live:
            self.record_exit(r)
