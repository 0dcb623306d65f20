"""One thread per pod bound to the node: the kubelet's pod worker.

The worker is level-triggered: every wake-up (a pod update from the watch, a container exit, a timer)
runs `sync`, which compares what should be with what is and acts, then reports status if it changed.
It holds the pod's own state (IP, start time, terminal phase) and drives the managers along a
kubelet's lines: `VolumeManager` (volumes and tokens), `ContainerManager` (images, instances,
restarts, stopping), `prober.run_probes` and `StatusManager` (status patches).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from localcluster.nodeagent import kube, prober, probes, status
from localcluster.nodeagent.containers import ContainerManager, Runner, image_id
from localcluster.nodeagent.dns import ClusterHosts
from localcluster.nodeagent.events import EventRecorder
from localcluster.nodeagent.ipam import IPAM
from localcluster.nodeagent.podspec import ConfigError, PodContext
from localcluster.nodeagent.runtime import Instance, instances
from localcluster.nodeagent.status import ContainerState, PodStatusInput
from localcluster.nodeagent.statusmanager import StatusManager
from localcluster.nodeagent.volumemanager import VolumeManager, parse_time

log = logging.getLogger("nodeagent.pod")
JSON = dict[str, Any]

DEFAULT_GRACE = 30
MAX_IDLE_WAIT = 60.0


@dataclass
class NodeFacts:
    """What every pod worker needs from the agent."""

    core: client.CoreV1Api
    node_name: str
    host_ip: str
    api_host: str
    api_port: int
    allocatable: dict[str, str]
    state_dir: Path
    venv_bin: str
    ipam: IPAM
    events: EventRecorder
    hosts: ClusterHosts


class PodWorker:
    def __init__(self, facts: NodeFacts, pod: JSON) -> None:
        self.facts = facts
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.sandbox = facts.state_dir / self.uid
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.gone = False
        self.stopping = False
        self.finished = threading.Event()
        self.pod_ip = ""
        self.start_time: str | None = (pod.get("status") or {}).get("startTime")
        self.terminal_phase: str | None = None
        self.terminal_reason = ""
        self.terminal_message = ""
        self.finalized = False
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.volumes = VolumeManager(facts.core, facts.events, pod, self.sandbox)
        self.containers = ContainerManager(
            events=facts.events,
            venv_bin=facts.venv_bin,
            sandbox=self.sandbox,
            pod=pod,
            wake=self.wake.set,
            current_pod=self._current_pod,
        )
        self.status = StatusManager(facts.core, pod)
        self.runners: list[Runner] = [
            Runner(spec=c, init=True, status=ContainerState(name=c["name"], image=c.get("image", "")))
            for c in spec.get("initContainers") or []
        ] + [
            Runner(spec=c, init=False, status=ContainerState(name=c["name"], image=c.get("image", "")))
            for c in spec.get("containers") or []
        ]
        phase = (pod.get("status") or {}).get("phase")
        if phase in status.TERMINAL_PHASES:
            self.terminal_phase = phase
        self._restore()
        self.thread = threading.Thread(
            target=self._loop, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.thread.start()

    def update(self, pod: JSON) -> None:
        with self.lock:
            self.pod = pod
        self.wake.set()

    def deleted(self) -> None:
        self.gone = True
        self.wake.set()

    def stop(self) -> None:
        """Agent shutdown: stop the containers, keep the sandbox (the pod still exists)."""
        self.stopping = True
        self.wake.set()

    def _current_pod(self) -> JSON:
        with self.lock:
            return self.pod

    def _loop(self) -> None:
        delay = 1.0
        while True:
            try:
                if self.stopping:
                    self.containers.kill_all(self.runners, grace=5, why="node agent stopping")
                    break
                if self.gone:
                    self.containers.kill_all(self.runners, grace=2, why="pod deleted from the API")
                    self._cleanup()
                    break
                timeout = self.sync()
                delay = 1.0
            except Exception:
                log.exception("pod sync failed", extra=self._ctx())
                timeout = delay
                delay = min(delay * 2, 30.0)
            self.wake.wait(timeout)
            self.wake.clear()
        self.finished.set()

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"pod": f"{self.namespace}/{self.name}", "uid": self.uid, **extra}

    # ------------------------------------------------------------------ restore after restart

    def _restore(self) -> None:
        """Rebuild container states from the sandbox left by a previous agent run."""
        ip = self.facts.ipam.get(self.uid)
        if ip and self.sandbox.is_dir():
            self.pod_ip = ip
            self.facts.hosts.set(self.uid, self.pod, ip)
        for r in self.runners:
            directory = self.containers.instance_dir(r)
            numbers = instances(directory)
            if not numbers:
                continue
            latest = Instance(directory, numbers[-1])
            r.status.restart_count = numbers[-1]
            if len(numbers) > 1:
                r.previous = Instance(directory, numbers[-2])
                r.previous.done.set()
                r.status.last_terminated = r.previous.result(r.policy)
            r.instance = latest
            r.status.image_id = image_id(r.status.image, self.facts.venv_bin)
            r.status.container_id = self.containers.container_id(r, latest.number)
            if latest.running():
                st = latest.state() or {}
                r.status.state = "running"
                r.status.started_at = st.get("startedAt")
                r.status.started = True
                r.started_mono = time.monotonic()
                r.probes = probes.new_probes(r.spec, time.monotonic())
                r.status.ready = "readinessProbe" not in r.probes
                latest.watch(self.wake.set)
                log.info("adopted running container", extra=self._ctx(container=r.name))
            else:
                latest.done.set()
                self.containers.record_exit(r, event=False)
        if self.pod_ip and self.sandbox.is_dir() and any(r.instance for r in self.runners):
            self.volumes.adopt(self.pod)

    # ------------------------------------------------------------------ the sync

    def sync(self) -> float:
        pod = self._current_pod()
        now = time.monotonic()
        if pod["metadata"].get("deletionTimestamp"):
            return self._sync_deleting(pod)
        for r in self.runners:
            if r.instance is not None and r.instance.done.is_set() and r.status.state == "running":
                self.containers.record_exit(r)
        if self.terminal_phase is None:
            self._check_deadline(pod)
        if self.terminal_phase is None:
            vm = self.volumes
            if not vm.ready and now >= vm.retry_at:
                self._prepare_sandbox(pod)
            if vm.ready and vm.token_refresh_at and now >= vm.token_refresh_at:
                vm.refresh_tokens(pod, self._context(pod))
            if vm.ready:
                self.containers.run(pod, self.runners, self._context(pod), vm.objects)
                prober.run_probes(
                    pod, self.runners, self.pod_ip, self.facts.events, self._restart_after_probe
                )
            self._decide_terminal()
        self._report(pod)
        return self._next_wake()

    def _restart_after_probe(self, r: Runner, grace: int) -> None:
        self.containers.kill([r], grace)
        self.containers.record_exit(r)

    def _context(self, pod: JSON) -> PodContext:
        return PodContext(
            pod=pod,
            pod_ip=self.pod_ip,
            host_ip=self.facts.host_ip,
            api_host=self.facts.api_host,
            api_port=self.facts.api_port,
            node_allocatable=self.facts.allocatable,
            hosts_file=str(self.facts.hosts.path),
        )

    def _prepare_sandbox(self, pod: JSON) -> None:
        """The pod's IP, its directory and its volumes (before any container starts)."""
        try:
            if not self.pod_ip:
                if pod["spec"].get("hostNetwork"):
                    self.pod_ip = self.facts.host_ip
                else:
                    self.pod_ip = self.facts.ipam.allocate(self.uid)
            self.facts.hosts.set(self.uid, pod, self.pod_ip)
            if self.start_time is None:
                self.start_time = status.now()
            self.sandbox.mkdir(parents=True, exist_ok=True)
            (self.sandbox / "pod.json").write_text(
                json.dumps({"namespace": self.namespace, "name": self.name, "uid": self.uid}),
                encoding="utf-8",
            )
        except (ConfigError, OSError) as exc:
            self.volumes.failed(pod, str(exc))
            return
        if self.volumes.set_up(pod, self._context(pod)):
            log.info("sandbox ready", extra=self._ctx(ip=self.pod_ip))

    # ------------------------------------------------------------------ termination

    def _check_deadline(self, pod: JSON) -> None:
        deadline = pod["spec"].get("activeDeadlineSeconds")
        started = parse_time(self.start_time)
        if deadline is None or started is None or time.time() - started < int(deadline):
            return
        message = "Pod was active on the node longer than the specified deadline"
        self.facts.events.pod_event(pod, "Normal", "DeadlineExceeded", message)
        grace = int(pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE))
        self.containers.kill_all(self.runners, grace=grace, why="deadline")
        self.terminal_phase = status.FAILED
        self.terminal_reason = "DeadlineExceeded"
        self.terminal_message = message

    def _sync_deleting(self, pod: JSON) -> float:
        if self.finalized:
            return MAX_IDLE_WAIT
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE)
        self.containers.kill_all(self.runners, int(grace), why="pod deleted")
        for r in self.runners:
            if r.instance is not None and r.status.state == "running":
                self.containers.record_exit(r)
            if r.status.state == "waiting" and r.status.last_terminated is not None:
                r.status.state, r.status.terminated = "terminated", r.status.last_terminated
        if self.terminal_phase is None:
            init = [r.status for r in self.runners if r.init]
            app = [r.status for r in self.runners if not r.init]
            self.terminal_phase = status.pod_phase(self.restart_policy, init, app, terminal=True)
        self._report(pod, force=True)
        if self.status.last_sent is None:
            return 1.0
        try:
            kube.retry(
                "delete pod",
                lambda: self.facts.core.delete_namespaced_pod(
                    self.name,
                    self.namespace,
                    grace_period_seconds=0,
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                    _request_timeout=kube.TIMEOUT,
                ),
            )
        except Exception as exc:
            if not kube.is_status(exc, 404, 409):
                raise
        self.finalized = True
        log.info("pod finalized", extra=self._ctx(phase=self.terminal_phase))
        return MAX_IDLE_WAIT

    def _decide_terminal(self) -> None:
        init = [r.status for r in self.runners if r.init]
        app = [r.status for r in self.runners if not r.init]
        phase = status.pod_phase(self.restart_policy, init, app)
        if phase in status.TERMINAL_PHASES:
            self.terminal_phase = phase

    # ------------------------------------------------------------------ status

    def _report(self, pod: JSON, force: bool = False) -> None:
        init = [r.status for r in self.runners if r.init]
        app = [r.status for r in self.runners if not r.init]
        phase = self.terminal_phase or status.pod_phase(self.restart_policy, init, app)
        inp = PodStatusInput(
            uid=self.uid,
            phase=phase,
            pod_ip=self.pod_ip,
            host_ip=self.facts.host_ip,
            sandbox_ready=self.volumes.ready,
            init=init,
            app=app,
            previous_conditions=(pod.get("status") or {}).get("conditions") or [],
            start_time=self.start_time,
            reason=self.terminal_reason,
            message=self.terminal_message,
        )
        self.status.report(inp, force=force)

    def _next_wake(self) -> float:
        now = time.monotonic()
        dues = [now + MAX_IDLE_WAIT]
        if self.status.unsent:
            dues.append(max(self.status.retry_at, now + 1.0))
        if not self.volumes.ready:
            dues.append(self.volumes.retry_at)
        elif self.volumes.token_refresh_at:
            dues.append(self.volumes.token_refresh_at)
        if self.terminal_phase is None:
            for r in self.runners:
                dues.extend(p.next_due for p in r.probes.values())
                if r.status.state != "running":
                    dues.append(max(r.next_start, r.config_error_until))
                    if r.recheck_at > now:
                        dues.append(r.recheck_at)
            deadline = self.pod["spec"].get("activeDeadlineSeconds")
            started = parse_time(self.start_time)
            if deadline is not None and started is not None:
                dues.append(now + max(0.0, started + int(deadline) - time.time()))
        return max(0.05, min(dues) - now)

    # ------------------------------------------------------------------ cleanup & logs

    def _cleanup(self) -> None:
        for r in self.runners:
            if r.instance is not None and not r.instance.done.is_set():
                r.instance.kill_shim()
        shutil.rmtree(self.sandbox, ignore_errors=True)
        self.facts.ipam.release(self.uid)
        self.facts.hosts.remove(self.uid)
        log.info("pod cleaned up", extra=self._ctx())

    def log_instance(self, container: str, previous: bool) -> Instance | None:
        for r in self.runners:
            if r.name == container:
                return r.previous if previous else r.instance
        return None

    def container_names(self) -> list[str]:
        return [r.name for r in self.runners]
