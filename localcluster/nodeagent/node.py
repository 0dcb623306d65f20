"""The Node object: registration, status heartbeat and the node Lease that keeps it alive."""

from __future__ import annotations

import logging
import platform
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster.nodeagent import kube
from localcluster.nodeagent.ipam import POD_CIDR

log = logging.getLogger("nodeagent.node")
JSON = dict[str, Any]

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40
RENEW_INTERVAL = 10.0
# The Lease is what the node lifecycle controller watches; the status heartbeat can be rarer.
STATUS_EVERY = 3
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    host_ip: str
    kubelet_port: int
    gpus: int
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    ephemeral_storage: str = "100Gi"
    pod_cidr: str = POD_CIDR


def capacity(cfg: NodeConfig) -> dict[str, str]:
    return {
        "cpu": cfg.cpu,
        "memory": cfg.memory,
        "pods": str(cfg.pods),
        "ephemeral-storage": cfg.ephemeral_storage,
        "nvidia.com/gpu": str(cfg.gpus),
    }


def labels(cfg: NodeConfig) -> dict[str, str]:
    # Only labels NodeRestriction lets a node set on itself (no *.kubernetes.io except these).
    return {
        "kubernetes.io/hostname": cfg.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": _arch(),
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": _arch(),
        "node.kubernetes.io/instance-type": "localcluster",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": GPU_PRODUCT,
        "nvidia.com/gpu.count": str(cfg.gpus),
        "nvidia.com/gpu.memory": "81559",
    }


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
                if value:
                    return value
        except OSError:
            continue
    return uuid.uuid5(uuid.NAMESPACE_DNS, socket.gethostname()).hex


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def node_status(cfg: NodeConfig, kubelet_version: str, previous: list[JSON] | None = None) -> JSON:
    """The node's full status; condition transition times are kept from `previous`."""
    prev = {c.get("type"): c for c in previous or []}
    now = _now()

    def cond(ctype: str, value: str, reason: str, message: str) -> JSON:
        old = prev.get(ctype)
        since = old.get("lastTransitionTime") if old and old.get("status") == value else None
        return {
            "type": ctype,
            "status": value,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since or now,
        }

    cap = capacity(cfg)
    return {
        "capacity": cap,
        "allocatable": cap,
        "conditions": [
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "local node agent is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": cfg.host_ip},
            {"type": "Hostname", "address": cfg.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": _machine_id(),
            "systemUUID": _machine_id(),
            "bootID": _boot_id(),
            "kernelVersion": platform.release(),
            "osImage": "localcluster node agent (processes on the host)",
            "containerRuntimeVersion": "localcluster://0.1.0",
            "kubeletVersion": kubelet_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _arch(),
        },
    }


class NodeManager:
    """Registers the node, then keeps its Lease and Ready heartbeat fresh from a thread."""

    def __init__(self, api: client.ApiClient, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.version = client.VersionApi(api)
        self.kubelet_version = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-heartbeat", daemon=True)

    def register(self) -> None:
        info = kube.retry("get version", lambda: kube.raw(self.version.get_code), attempts=30)
        self.kubelet_version = str(info.get("gitVersion", "v0.0.0"))
        node = kube.get_or_none(self.core.read_node, self.cfg.name)
        body: JSON = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.cfg.name, "labels": labels(self.cfg)},
            "spec": {"podCIDR": self.cfg.pod_cidr, "podCIDRs": [self.cfg.pod_cidr]},
        }
        if node is None:
            try:
                kube.retry("create node", lambda: kube.raw(self.core.create_node, body))
                log.info("node registered", extra={"node": self.cfg.name})
            except ApiException as exc:
                if exc.status != 409:
                    raise
        else:
            patch: JSON = {"metadata": {"labels": labels(self.cfg)}}
            if not node.get("spec", {}).get("podCIDR"):
                patch["spec"] = body["spec"]
            kube.retry("patch node", lambda: kube.raw(self.core.patch_node, self.cfg.name, patch))
            log.info("node re-registered", extra={"node": self.cfg.name})
        self.update_status()
        self.renew_lease()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def update_status(self) -> None:
        node = kube.raw(self.core.read_node, self.cfg.name)
        previous = node.get("status", {}).get("conditions") or []
        patch = {"status": node_status(self.cfg, self.kubelet_version, previous)}
        kube.raw(
            self.core.patch_node_status,
            self.cfg.name,
            patch,
            _content_type="application/strategic-merge-patch+json",
        )

    def renew_lease(self) -> None:
        lease = kube.get_or_none(self.coordination.read_namespaced_lease, self.cfg.name, LEASE_NAMESPACE)
        spec = {
            "holderIdentity": self.cfg.name,
            "leaseDurationSeconds": LEASE_DURATION,
            "renewTime": _micro_now(),
        }
        if lease is None:
            node = kube.raw(self.core.read_node, self.cfg.name)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.cfg.name,
                    "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": self.cfg.name,
                            "uid": node["metadata"]["uid"],
                        }
                    ],
                },
                "spec": spec,
            }
            kube.raw(self.coordination.create_namespaced_lease, LEASE_NAMESPACE, body)
            return
        lease["spec"].update(spec)
        kube.raw(self.coordination.replace_namespaced_lease, self.cfg.name, LEASE_NAMESPACE, lease)

    def _run(self) -> None:
        beats = 0
        while not self._stop.wait(RENEW_INTERVAL):
            beats += 1
            try:
                self.renew_lease()
            except Exception as exc:
                log.warning("lease renewal failed", extra={"error": kube.describe(exc)})
            if beats % STATUS_EVERY:
                continue
            try:
                self.update_status()
            except ApiException as exc:
                if exc.status == 404:
                    log.warning("node object gone, registering again")
                    self._safe_register()
                else:
                    log.warning("node status update failed", extra={"status": exc.status})
            except Exception as exc:
                log.warning("node status update failed", extra={"error": kube.describe(exc)})

    def _safe_register(self) -> None:
        try:
            self.register()
        except Exception as exc:
            log.warning("node registration failed", extra={"error": kube.describe(exc)})
