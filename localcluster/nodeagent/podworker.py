"""One thread per pod bound to the node: sandbox, containers, restarts, probes, deletion, status.

The worker is level-triggered like the kubelet's pod worker: every wake-up (a pod update from
the watch, a container exit, a timer) runs `sync`, which compares what should be with what is
and acts, then reports status if it changed.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from localcluster.nodeagent import kube, probes, status, volumes
from localcluster.nodeagent.events import EventRecorder
from localcluster.nodeagent.images import ImageNotFoundError, resolve_image
from localcluster.nodeagent.ipam import IPAM
from localcluster.nodeagent.podspec import (
    ConfigError,
    Objects,
    PodContext,
    build_launch_plan,
    referenced_objects,
)
from localcluster.nodeagent.runtime import (
    Instance,
    decode_config_map,
    decode_secret,
    instances,
    shim_python,
)
from localcluster.nodeagent.status import ContainerState, PodStatusInput, Terminated

log = logging.getLogger("nodeagent.pod")
JSON = dict[str, Any]

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0
DEFAULT_GRACE = 30
MAX_IDLE_WAIT = 60.0
TOKEN_REFRESH_MAX = 24 * 3600.0


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


def _mono_after(seconds: float) -> float:
    return time.monotonic() + seconds


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


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
        self.sandbox_ready = False
        self.sandbox_retry_at = 0.0
        self.sandbox_backoff = 1.0
        self.token_refresh_at = 0.0
        self.pod_ip = ""
        self.start_time: str | None = (pod.get("status") or {}).get("startTime")
        self.terminal_phase: str | None = None
        self.terminal_reason = ""
        self.terminal_message = ""
        self.finalized = False
        self.last_sent: JSON | None = None
        self.status_retry_at = 0.0
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
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

    def _loop(self) -> None:
        delay = 1.0
        while True:
            try:
                if self.stopping:
                    self._kill_all(grace=5, why="node agent stopping")
                    break
                if self.gone:
                    self._kill_all(grace=2, why="pod deleted from the API")
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
        for r in self.runners:
            numbers = instances(self.sandbox / "containers" / r.name)
            if not numbers:
                continue
            latest = Instance(self.sandbox / "containers" / r.name, numbers[-1])
            r.status.restart_count = numbers[-1]
            if len(numbers) > 1:
                r.previous = Instance(self.sandbox / "containers" / r.name, numbers[-2])
                r.previous.done.set()
                r.status.last_terminated = r.previous.result(self._policy(r))
            r.instance = latest
            r.status.image_id = resolve_image_id(r.status.image, self.facts.venv_bin)
            r.status.container_id = self._container_id(r, latest.number)
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
                self._record_exit(r, event=False)
        if self.pod_ip and self.sandbox.is_dir() and any(r.instance for r in self.runners):
            self.sandbox_ready = True
            if volumes.token_sources(self.pod):
                # How old the tokens on disk are is unknown: renew them soon.
                self.token_refresh_at = _mono_after(5.0)

    # ------------------------------------------------------------------ the sync

    def sync(self) -> float:
        with self.lock:
            pod = self.pod
        meta = pod["metadata"]
        now = time.monotonic()

        if meta.get("deletionTimestamp"):
            return self._sync_deleting(pod)

        for r in self.runners:
            if r.instance is not None and r.instance.done.is_set() and r.status.state == "running":
                self._record_exit(r)

        if self.terminal_phase is None:
            self._check_deadline(pod)

        if self.terminal_phase is None:
            if not self.sandbox_ready and now >= self.sandbox_retry_at:
                self._prepare_sandbox(pod)
            if self.sandbox_ready and self.token_refresh_at and now >= self.token_refresh_at:
                self._refresh_tokens(pod)
            if self.sandbox_ready:
                self._run_containers(pod)
                self._run_probes(pod)
            self._decide_terminal()

        self._report(pod)
        return self._next_wake()

    def _policy(self, r: Runner) -> str:
        return str(r.spec.get("terminationMessagePolicy") or "File")

    def _container_id(self, r: Runner, number: int) -> str:
        return f"local://{self.uid}/{r.name}/{number}"

    # ------------------------------------------------------------------ sandbox

    def _context(self, pod: JSON) -> PodContext:
        return PodContext(
            pod=pod,
            pod_ip=self.pod_ip,
            host_ip=self.facts.host_ip,
            api_host=self.facts.api_host,
            api_port=self.facts.api_port,
            node_allocatable=self.facts.allocatable,
        )

    def _fetch_objects(self, pod: JSON) -> Objects:
        refs = referenced_objects(pod)
        core = self.facts.core
        secrets = {
            n: decode_secret(kube.get_or_none(core.read_namespaced_secret, n, self.namespace))
            for n in sorted(refs.secrets)
        }
        cms = {
            n: decode_config_map(kube.get_or_none(core.read_namespaced_config_map, n, self.namespace))
            for n in sorted(refs.config_maps)
        }
        # The Node authorizer lets a node read the claims of its pods and the volumes bound to them.
        claims = {
            n: kube.get_or_none(core.read_namespaced_persistent_volume_claim, n, self.namespace)
            for n in sorted(refs.claims)
        }
        bound = (str((c.get("spec") or {}).get("volumeName") or "") for c in claims.values() if c)
        pv_names = sorted({name for name in bound if name})
        pvs = {n: kube.get_or_none(core.read_persistent_volume, n) for n in pv_names}
        return Objects(secrets=secrets, config_maps=cms, claims=claims, persistent_volumes=pvs)

    def _tokens(self, pod: JSON) -> dict[volumes.TokenSource, str]:
        """Tokens for the pod's projected serviceAccountToken sources; also schedules their
        refresh at 80% of the shortest lifetime (24h at most), as the kubelet does."""
        out: dict[volumes.TokenSource, str] = {}
        ttl = TOKEN_REFRESH_MAX
        sa = pod["spec"].get("serviceAccountName") or "default"
        for ts in volumes.token_sources(pod):
            spec: JSON = {
                "expirationSeconds": ts.expiration_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            }
            if ts.audience:
                spec["audiences"] = [ts.audience]
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
            resp = kube.raw(self.facts.core.create_namespaced_service_account_token, sa, self.namespace, body)
            out[ts] = resp["status"]["token"]
            expires = _parse_time(resp["status"].get("expirationTimestamp"))
            if expires is not None:
                ttl = min(ttl, 0.8 * (expires - time.time()))
        if out:
            self.token_refresh_at = _mono_after(max(ttl, 60.0))
        return out

    def _prepare_sandbox(self, pod: JSON) -> None:
        try:
            if not self.pod_ip:
                if pod["spec"].get("hostNetwork"):
                    self.pod_ip = self.facts.host_ip
                else:
                    self.pod_ip = self.facts.ipam.allocate(self.uid)
            if self.start_time is None:
                self.start_time = status.now()
            self.sandbox.mkdir(parents=True, exist_ok=True)
            (self.sandbox / "pod.json").write_text(
                json.dumps({"namespace": self.namespace, "name": self.name, "uid": self.uid}),
                encoding="utf-8",
            )
            ctx = self._context(pod)
            objects = self._fetch_objects(pod)
            tokens = self._tokens(pod)
            volumes.materialise(ctx, str(self.sandbox), objects, tokens)
        except (ConfigError, OSError) as exc:
            self._sandbox_failed(pod, str(exc))
            return
        except Exception as exc:
            if not kube.is_status(exc, 403, 404, 409, 422, 429, 500, 503):
                raise
            self._sandbox_failed(pod, f"API error: {kube.describe(exc)}")
            return
        self.sandbox_ready = True
        log.info("sandbox ready", extra=self._ctx(ip=self.pod_ip))

    def _refresh_tokens(self, pod: JSON) -> None:
        """Rewrite the projected volumes that hold service account tokens with fresh tokens."""
        try:
            tokens = self._tokens(pod)
            objects = self._fetch_objects(pod)
            ctx = self._context(pod)
            for vol in pod["spec"].get("volumes") or []:
                sources = (vol.get("projected") or {}).get("sources") or []
                if any("serviceAccountToken" in s for s in sources):
                    files = volumes.volume_files(ctx, vol, objects, tokens) or {}
                    volumes.write_files(self.sandbox / "volumes" / vol["name"], files)
            log.info("service account tokens refreshed", extra=self._ctx())
        except Exception as exc:
            log.warning("token refresh failed", extra=self._ctx(error=kube.describe(exc)))
            self.token_refresh_at = _mono_after(60.0)

    def _sandbox_failed(self, pod: JSON, message: str) -> None:
        log.warning("volume setup failed", extra=self._ctx(error=message))
        self.facts.events.pod_event(pod, "Warning", "FailedMount", f"MountVolume.SetUp failed: {message}")
        self.sandbox_retry_at = _mono_after(self.sandbox_backoff)
        self.sandbox_backoff = min(self.sandbox_backoff * 2, 16.0)

    # ------------------------------------------------------------------ containers

    def _run_containers(self, pod: JSON) -> None:
        init = [r for r in self.runners if r.init]
        for r in init:
            if r.status.succeeded:
                continue
            if r.status.state == "running":
                return
            if r.status.state == "terminated" or r.status.reason == "CrashLoopBackOff":
                if self.restart_policy != "Never":
                    self._maybe_restart(pod, r)
                return
            self._start(pod, r)
            return
        for r in self.runners:
            if r.init:
                continue
            if r.status.state == "running":
                continue
            if r.status.state == "terminated":
                self._maybe_restart(pod, r)
                continue
            if r.status.last_terminated is not None and r.status.reason == "CrashLoopBackOff":
                self._maybe_restart(pod, r)
                continue
            self._start(pod, r)

    def _should_restart(self, r: Runner) -> bool:
        term = r.status.terminated or r.status.last_terminated
        if term is None:
            return True
        if self.restart_policy == "Always" and not r.init:
            return True
        return self.restart_policy in ("Always", "OnFailure") and term.exit_code != 0

    def _maybe_restart(self, pod: JSON, r: Runner) -> None:
        if not self._should_restart(r):
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
        self._start(pod, r)

    def _start(self, pod: JSON, r: Runner) -> None:
        now = time.monotonic()
        image = r.spec.get("image", "")
        try:
            img = resolve_image(image, self.facts.venv_bin)
        except ImageNotFoundError as exc:
            if now < r.next_start:
                r.status.state, r.status.reason = "waiting", "ImagePullBackOff"
                r.status.message = f'Back-off pulling image "{image}"'
                return
            r.image_failures += 1
            r.status.state, r.status.reason, r.status.message = "waiting", "ErrImagePull", str(exc)
            self.facts.events.pod_event(
                pod, "Warning", "Failed", f"Failed to pull image {image!r}: {exc}", r.name
            )
            self.facts.events.pod_event(pod, "Warning", "Failed", "Error: ErrImagePull", r.name)
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
        inst = Instance(self.sandbox / "containers" / r.name, number)
        try:
            objects = self._fetch_objects(pod)
            plan = build_launch_plan(
                self._context(pod), r.spec, img, objects, str(self.sandbox), str(inst.termination_log)
            )
        except ConfigError as exc:
            r.status.state, r.status.reason, r.status.message = (
                "waiting",
                "CreateContainerConfigError",
                str(exc),
            )
            self.facts.events.pod_event(pod, "Warning", "Failed", f"Error: {exc}", r.name)
            r.config_error_until = now + 2.0
            return
        if r.instance is not None:
            r.previous = r.instance
        if inst.exists():
            shutil.rmtree(inst.dir, ignore_errors=True)
            inst.log_path.unlink(missing_ok=True)
        self.facts.events.pod_event(
            pod, "Normal", "Pulled", f'Container image "{image}" already present on machine', r.name
        )
        inst.launch(plan, shim_python())
        r.instance = inst
        r.status.image_id = img.image_id
        r.status.container_id = self._container_id(r, number)
        inst.wait_started(10.0)
        inst.watch(self.wake.set)
        self.facts.events.pod_event(pod, "Normal", "Created", f"Created container {r.name}", r.name)
        st = inst.state()
        if st is None:
            inst.done.wait(5.0)
            self._record_exit(r)
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
        self.facts.events.pod_event(pod, "Normal", "Started", f"Started container {r.name}", r.name)

    def _record_exit(self, r: Runner, event: bool = True) -> None:
        inst = r.instance
        if inst is None:
            return
        term: Terminated = inst.result(self._policy(r))
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
            with self.lock:
                pod = self.pod
            self.facts.events.pod_event(pod, "Warning", "Failed", f"Error: {term.message}", r.name)

    # ------------------------------------------------------------------ probes

    def _run_probes(self, pod: JSON) -> None:
        now = time.monotonic()
        for r in self.runners:
            if r.status.state != "running" or r.instance is None or not r.probes:
                continue
            pid = r.instance.container_pid()
            env = dict(_read_env(r.instance))
            for kind in probes.KINDS:
                p = r.probes.get(kind)
                if p is None or now < p.next_due:
                    continue
                if kind != "startupProbe" and not r.status.started:
                    continue
                if kind == "startupProbe" and r.status.started:
                    continue
                prefix = probes.exec_prefix_for(pid) if pid else None
                ok, message = probes.run_probe(p.spec, r.spec, self.pod_ip, prefix, env)
                changed = p.record(ok, time.monotonic())
                if not ok:
                    what = {
                        "startupProbe": "Startup",
                        "livenessProbe": "Liveness",
                        "readinessProbe": "Readiness",
                    }
                    self.facts.events.pod_event(
                        pod, "Warning", "Unhealthy", f"{what[kind]} probe failed: {message}", r.name
                    )
                if kind == "readinessProbe" and changed:
                    r.status.ready = p.result
                elif kind == "startupProbe" and changed and p.result:
                    r.status.started = True
                    r.status.ready = not r.init and "readinessProbe" not in r.probes
                elif kind in ("livenessProbe", "startupProbe") and changed and not p.result:
                    why = "liveness" if kind == "livenessProbe" else "startup"
                    self.facts.events.pod_event(
                        pod,
                        "Normal",
                        "Killing",
                        f"Container {r.name} failed {why} probe, will be restarted",
                        r.name,
                    )
                    grace = p.spec.get("terminationGracePeriodSeconds")
                    if grace is None:
                        grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE)
                    self._kill([r], int(grace))
                    self._record_exit(r)
                    break

    # ------------------------------------------------------------------ termination

    def _check_deadline(self, pod: JSON) -> None:
        deadline = pod["spec"].get("activeDeadlineSeconds")
        started = _parse_time(self.start_time)
        if deadline is None or started is None:
            return
        if time.time() - started < int(deadline):
            return
        self.facts.events.pod_event(
            pod, "Normal", "DeadlineExceeded", "Pod was active on the node longer than the specified deadline"
        )
        self._kill_all(
            grace=int(pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE)), why="deadline"
        )
        self.terminal_phase = status.FAILED
        self.terminal_reason = "DeadlineExceeded"
        self.terminal_message = "Pod was active on the node longer than the specified deadline"

    def _kill(self, runners: list[Runner], grace: int) -> None:
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
            with self.lock:
                new_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
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

    def _kill_all(self, grace: int, why: str) -> None:
        live = [r for r in self.runners if r.instance is not None and not r.instance.done.is_set()]
        if not live:
            return
        log.info("stopping containers", extra=self._ctx(why=why, grace=grace))
        with self.lock:
            pod = self.pod
        for r in live:
            self.facts.events.pod_event(pod, "Normal", "Killing", f"Stopping container {r.name}", r.name)
        self._kill(live, grace)
        for r in live:
            self._record_exit(r)

    def _sync_deleting(self, pod: JSON) -> float:
        if self.finalized:
            return MAX_IDLE_WAIT
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE)
        self._kill_all(int(grace), why="pod deleted")
        for r in self.runners:
            if r.instance is not None and r.status.state == "running":
                self._record_exit(r)
            if r.status.state == "waiting" and r.status.last_terminated is not None:
                r.status.state, r.status.terminated = "terminated", r.status.last_terminated
        if self.terminal_phase is None:
            init = [r.status for r in self.runners if r.init]
            app = [r.status for r in self.runners if not r.init]
            self.terminal_phase = status.pod_phase(self.restart_policy, init, app, terminal=True)
        self._report(pod, force=True)
        if self.last_sent is None:
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
            sandbox_ready=self.sandbox_ready,
            init=init,
            app=app,
            previous_conditions=(pod.get("status") or {}).get("conditions") or [],
            start_time=self.start_time,
            reason=self.terminal_reason,
            message=self.terminal_message,
        )
        patch = status.status_patch(inp)
        cmp = status.comparable(patch)
        if cmp == self.last_sent and not force:
            return
        if time.monotonic() < self.status_retry_at and not force:
            return
        try:
            kube.retry(
                "patch pod status",
                lambda: self.facts.core.patch_namespaced_pod_status(
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
            log.warning("status patch failed", extra=self._ctx(error=kube.describe(exc)))
            self.status_retry_at = _mono_after(2.0)
            return
        self.last_sent = cmp
        log.info("status", extra=self._ctx(phase=phase))

    def _next_wake(self) -> float:
        now = time.monotonic()
        dues = [now + MAX_IDLE_WAIT]
        if self.last_sent is None or self.status_retry_at > now:
            dues.append(max(self.status_retry_at, now + 1.0))
        if not self.sandbox_ready:
            dues.append(self.sandbox_retry_at)
        elif self.token_refresh_at:
            dues.append(self.token_refresh_at)
        if self.terminal_phase is None:
            for r in self.runners:
                dues.extend(p.next_due for p in r.probes.values())
                if r.status.state != "running":
                    dues.append(max(r.next_start, r.config_error_until))
                    if r.recheck_at > now:
                        dues.append(r.recheck_at)
            deadline = self.pod["spec"].get("activeDeadlineSeconds")
            started = _parse_time(self.start_time)
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
        log.info("pod cleaned up", extra=self._ctx())

    def log_instance(self, container: str, previous: bool) -> Instance | None:
        for r in self.runners:
            if r.name == container:
                return r.previous if previous else r.instance
        return None

    def container_names(self) -> list[str]:
        return [r.name for r in self.runners]


def _read_env(inst: Instance) -> dict[str, str]:
    spec = json.loads((inst.dir / "spec.json").read_text(encoding="utf-8"))
    env: dict[str, str] = spec.get("env") or {}
    return env


def resolve_image_id(image: str, venv_bin: str) -> str:
    try:
        return resolve_image(image, venv_bin).image_id
    except ImageNotFoundError:
        return ""
