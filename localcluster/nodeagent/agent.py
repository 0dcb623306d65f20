"""Wiring: node registration, the pod watch, one worker per pod, the kubelet API, shutdown."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from localcluster.nodeagent import kube, kubeletapi
from localcluster.nodeagent.dns import ClusterHosts
from localcluster.nodeagent.events import EventRecorder
from localcluster.nodeagent.ipam import IPAM, POD_CIDR
from localcluster.nodeagent.node import NodeConfig, NodeManager, capacity
from localcluster.nodeagent.podworker import NodeFacts, PodWorker
from localcluster.nodeagent.runtime import Instance, instances

log = logging.getLogger("nodeagent")
JSON = dict[str, Any]
WATCH_TIMEOUT = 300
STOP_WAIT = 20.0


@dataclass(frozen=True)
class AgentConfig:
    kubeconfig: str
    node_name: str
    state_dir: Path
    pki_dir: Path
    gpus: int
    port: int
    address: str
    cpu: str
    memory: str
    pods: int
    pod_cidr: str = POD_CIDR


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.api = kube.load_client(cfg.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        api_host, api_port = kube.server_address(cfg.kubeconfig)
        node_cfg = NodeConfig(
            name=cfg.node_name,
            host_ip=cfg.address,
            kubelet_port=cfg.port,
            gpus=cfg.gpus,
            cpu=cfg.cpu,
            memory=cfg.memory,
            pods=cfg.pods,
            pod_cidr=cfg.pod_cidr,
        )
        self.node = NodeManager(self.api, node_cfg)
        self.events = EventRecorder(self.api, cfg.node_name)
        self.facts = NodeFacts(
            core=self.core,
            node_name=cfg.node_name,
            host_ip=cfg.address,
            api_host=api_host,
            api_port=api_port,
            allocatable=capacity(node_cfg),
            state_dir=cfg.state_dir,
            venv_bin=os.path.join(sys.prefix, "bin"),
            ipam=IPAM(cfg.state_dir / "ipam.json", cfg.pod_cidr),
            events=self.events,
            hosts=ClusterHosts(cfg.state_dir / "hosts"),
        )
        self.server: kubeletapi.KubeletServer | None = None

    # ------------------------------------------------------------------ run / stop

    def run(self) -> int:
        # Two agents on one state dir would both run every pod: the second one refuses to start.
        lock = open(self.cfg.state_dir / "agent.lock", "w")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.error(
                "another node agent is running on this state dir", extra={"dir": str(self.cfg.state_dir)}
            )
            return 1
        cert, key = kubeletapi.mint_serving_cert(
            self.cfg.pki_dir, self.cfg.state_dir / "pki", self.cfg.node_name, self.cfg.address
        )
        try:
            self.server, _ = kubeletapi.serve(
                self.cfg.address, self.cfg.port, cert, key, self.cfg.pki_dir / "ca.crt", self.resolve_log
            )
        except OSError as exc:
            log.error("cannot serve the kubelet API", extra={"port": self.cfg.port, "error": str(exc)})
            return 1
        log.info("kubelet API listening", extra={"address": self.cfg.address, "port": self.cfg.port})
        self.node.register()
        self.node.start()
        threading.Thread(target=self._watch_loop, name="pod-watch", daemon=True).start()
        while not self.stop_event.wait(5.0):
            self._reap_workers()
        self._shutdown()
        return 0

    def request_stop(self, signum: int, _frame: Any) -> None:
        log.info("stopping", extra={"signal": signum})
        self.stop_event.set()

    def _shutdown(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.stop()
        deadline = time.monotonic() + STOP_WAIT
        for w in workers:
            w.finished.wait(max(0.0, deadline - time.monotonic()))
        self.node.stop()
        self.events.stop()
        if self.server is not None:
            self.server.stopping.set()
            self.server.shutdown()
        log.info("stopped")

    # ------------------------------------------------------------------ pods

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.cfg.node_name}"
        rv: str | None = None
        delay = 1.0
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    data = kube.raw(self.core.list_pod_for_all_namespaces, field_selector=selector)
                    rv = str(data["metadata"]["resourceVersion"])
                    self._sync_list(data.get("items") or [])
                w = watch.Watch()
                for ev in w.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=rv,
                    timeout_seconds=WATCH_TIMEOUT,
                    allow_watch_bookmarks=True,
                    _request_timeout=(5, WATCH_TIMEOUT + 30),
                ):
                    if self.stop_event.is_set():
                        w.stop()
                        break
                    obj: JSON = ev["raw_object"]
                    if ev["type"] == "ERROR":
                        if obj.get("code") == 410:
                            rv = None
                            break
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    rv = str(obj["metadata"]["resourceVersion"])
                    if ev["type"] != "BOOKMARK":
                        self._handle(ev["type"], obj)
                delay = 1.0
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                    continue
                log.warning("pod watch failed", extra={"status": exc.status, "reason": exc.reason})
                self.stop_event.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:
                log.warning("pod watch failed", extra={"error": kube.describe(exc)})
                self.stop_event.wait(delay)
                delay = min(delay * 2, 30.0)

    def _sync_list(self, pods: list[JSON]) -> None:
        seen = set()
        for pod in pods:
            seen.add(pod["metadata"]["uid"])
            self._handle("ADDED", pod)
        with self.lock:
            stale = [w for uid, w in self.workers.items() if uid not in seen]
        for w in stale:
            w.deleted()
        self._clean_orphans(seen)

    def _handle(self, etype: str, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if etype == "DELETED":
                if worker is not None:
                    worker.deleted()
                return
            if worker is None:
                if self.stop_event.is_set():
                    return
                worker = PodWorker(self.facts, pod)
                self.workers[uid] = worker
                worker.start()
                log.info(
                    "pod added", extra={"pod": f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"}
                )
                return
        worker.update(pod)

    def _reap_workers(self) -> None:
        with self.lock:
            for uid in [u for u, w in self.workers.items() if w.finished.is_set()]:
                del self.workers[uid]

    def _clean_orphans(self, live: set[str]) -> None:
        """Sandboxes of pods that no longer exist: stop what is left of them and remove them."""
        with self.lock:
            known = set(self.workers)
        for path in self.cfg.state_dir.iterdir():
            if not (path / "pod.json").exists() or path.name in live or path.name in known:
                continue
            for cdir in (path / "containers").glob("*"):
                for n in instances(cdir):
                    Instance(cdir, n).kill_shim()
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed orphaned sandbox", extra={"uid": path.name})
        for uid in self.facts.ipam.uids() - live - known:
            self.facts.ipam.release(uid)

    # ------------------------------------------------------------------ logs

    def resolve_log(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> kubeletapi.LogTarget | tuple[int, str]:
        with self.lock:
            matches = [w for w in self.workers.values() if (w.namespace, w.name) == (namespace, pod)]
        if not matches:
            return 404, f'pod "{pod}" in namespace "{namespace}" not found on node {self.cfg.node_name}'
        worker = matches[-1]
        if container not in worker.container_names():
            return 400, f'container "{container}" in pod "{pod}" is not valid'
        inst = worker.log_instance(container, previous)
        if inst is None:
            if previous:
                return 400, f'previous terminated container "{container}" in pod "{pod}" not found'
            return 400, f'container "{container}" in pod "{pod}" is waiting to start'
        return kubeletapi.LogTarget(path=inst.log_path, done=inst.done.is_set)


class JsonFormatter(logging.Formatter):
    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._standard:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(log_file: str | None) -> None:
    handler: logging.Handler
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # The client logs every retried connection at WARNING with URLs; keep those, drop debug noise.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


def run(cfg: AgentConfig, log_file: str | None) -> int:
    setup_logging(log_file)
    agent = Agent(cfg)
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
    log.info("starting", extra={"node": cfg.node_name, "state_dir": str(cfg.state_dir), "pid": os.getpid()})
    return agent.run()
