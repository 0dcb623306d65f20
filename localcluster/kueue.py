"""Kueue, the queueing and quota controller GPU clusters run, as a host process against the local API server.

Installed as its release manifests install it, with three differences a host process needs:
- Its webhook Service is an `ExternalName` Service for localhost: EndpointSlices refuse loopback
  addresses, and the API server resolves an ExternalName Service straight to that name. Webhook and
  conversion client configs name the port Kueue listens on, since no Service port maps onto it.
- Kueue keeps its internal certificate management (it writes its serving certificate into a Secret and
  the CA into the webhook configurations and CRDs); a kubelet would mount that Secret into the pod's
  certificate directory, so `start` copies it there.
- Only the webhooks of the objects this project uses (batch/v1 Job and Kueue's own kinds), the Job ones
  limited to Jobs with a queue label, so a stopped Kueue blocks no pod, Deployment or other Job (the
  release's webhooks have failurePolicy Fail for every object of their kind).

Kueue acts as its own user (`kueue`, a client certificate) with the release's ClusterRole, not as admin.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from localcluster import controlplane, procs
from localcluster.paths import HOST, KUEUE_VERSION, LAYOUT, NODE_GPUS, PORTS

NAME: Final = "kueue"
NAMESPACE: Final = "kueue-system"
SERVICE: Final = "kueue-webhook-service"
SECRET: Final = "kueue-webhook-server-cert"  # noqa: S105 (a Secret's name)
USER: Final = "kueue"
# Kueue's cert rotator injects its CA into exactly these CRDs' conversion webhooks and waits until it
# could; a CRD applied without a conversion stanza would keep it waiting forever.
CONVERSION_CRDS: Final = ("clusterqueues", "cohorts", "localqueues", "multikueueclusters", "workloads")
# Webhook paths kept from the release (the rest serve integrations this environment does not enable).
WEBHOOK_KINDS: Final = ("batch-v1-job", "kueue-x-k8s-io-v1beta2-")
# The queue the local environment offers: every GPU of the node, and room for the CPU, memory and scratch
# that trainer pods ask for (a ClusterQueue must cover every resource a workload requests).
CLUSTER_QUEUE: Final = "gpus"
FLAVOR: Final = "local-gpu"
DEMO_NAMESPACE: Final = "default"
CPU_QUOTA: Final = "64"
MEMORY_QUOTA: Final = "256Gi"
# Trainer pods request their scratch volume as ephemeral-storage.
STORAGE_QUOTA: Final = "1Ti"


def _state() -> Path:
    return LAYOUT.root / "kueue"


def _webhook_client(path: str) -> dict[str, Any]:
    return {"service": {"name": SERVICE, "namespace": NAMESPACE, "path": path, "port": PORTS.kueue_webhook}}


def _docs(path: Path) -> Iterator[dict[str, Any]]:
    yield from (d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))


def crds(manifests: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((manifests / "crds").glob("*.yaml")):
        for crd in _docs(path):
            if crd["spec"]["names"]["plural"] in CONVERSION_CRDS:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": _webhook_client("/convert"),
                        "conversionReviewVersions": ["v1"],
                    },
                }
            out.append(crd)
    return out


def webhooks(manifests: Path) -> list[dict[str, Any]]:
    """The release's webhook configurations named as Kueue's cert rotator expects (`<base>-mutating-...`),
    with only the kept webhooks, each pointed at this host; the Job ones only for Jobs with a queue."""
    out = []
    for doc in _docs(manifests / "webhooks.yaml"):
        kind = "mutating" if doc["kind"] == "MutatingWebhookConfiguration" else "validating"
        kept = []
        for hook in doc.get("webhooks", []):
            path = hook["clientConfig"]["service"]["path"]
            if not any(k in path for k in WEBHOOK_KINDS):
                continue
            hook["clientConfig"] = _webhook_client(path)
            if "batch-v1-job" in path:
                # Only Jobs that ask for a queue: Kueue leaves the others alone anyway
                # (manageJobsWithoutQueueName false), and they must not fail while Kueue is down.
                hook["objectSelector"] = {
                    "matchExpressions": [{"key": "kueue.x-k8s.io/queue-name", "operator": "Exists"}]
                }
            kept.append(hook)
        doc["metadata"] = {"name": f"kueue-{kind}-webhook-configuration"}
        doc["webhooks"] = kept
        out.append(doc)
    return out


def rbac(manifests: Path) -> list[dict[str, Any]]:
    role = next(_docs(manifests / "role.yaml"))
    role["metadata"] = {"name": "kueue-manager-role"}
    # The release names its webhook configurations without a prefix and each installer adds one (as
    # `webhooks` does): the rotator may update only the names it is given.
    for rule in role["rules"]:
        if "resourceNames" in rule:
            rule["resourceNames"] = [
                f"kueue-{n}" if n.endswith("-webhook-configuration") else n for n in rule["resourceNames"]
            ]
    secrets = next(_docs(manifests / "secrets-role.yaml"))
    secrets["metadata"] = {"name": "kueue-manager-secrets-role", "namespace": NAMESPACE}
    user = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]
    return [
        role,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kueue-manager-rolebinding"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role["metadata"]["name"],
            },
            "subjects": user,
        },
        secrets,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "kueue-manager-secrets-rolebinding", "namespace": NAMESPACE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": secrets["metadata"]["name"],
            },
            "subjects": user,
        },
    ]


def install_objects(manifests: Path) -> list[dict[str, Any]]:
    """Everything applied before Kueue starts (server-side, so a second `up` changes nothing)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {"type": "ExternalName", "externalName": "localhost"},
    }
    # Kueue may update this Secret but not create it (the release's Role has no create).
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
    }
    return [namespace, *crds(manifests), service, secret, *rbac(manifests), *webhooks(manifests)]


def queue_objects() -> list[dict[str, Any]]:
    """A ResourceFlavor and a ClusterQueue with the node's GPUs, open to every namespace, and a LocalQueue
    of the same name in the demo's namespace (`default`): `queueName: gpus` there queues a job in Kueue.
    Not named `default`, which Kueue's LocalQueueDefaulting would apply to every Job of the namespace."""
    return [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": FLAVOR},
        },
        cluster_queue(CLUSTER_QUEUE, NODE_GPUS),
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": CLUSTER_QUEUE, "namespace": DEMO_NAMESPACE},
            "spec": {"clusterQueue": CLUSTER_QUEUE},
        },
    ]


def cluster_queue(name: str, gpus: int, *, preemption: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "namespaceSelector": {},
        "resourceGroups": [
            {
                "coveredResources": ["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"],
                "flavors": [
                    {
                        "name": FLAVOR,
                        "resources": [
                            {"name": "cpu", "nominalQuota": CPU_QUOTA},
                            {"name": "memory", "nominalQuota": MEMORY_QUOTA},
                            {"name": "ephemeral-storage", "nominalQuota": STORAGE_QUOTA},
                            {"name": "nvidia.com/gpu", "nominalQuota": gpus},
                        ],
                    }
                ],
            }
        ],
    }
    if preemption:
        spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": spec,
    }


def config() -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"{HOST}:{PORTS.kueue_health}"},
        "metrics": {"bindAddress": f"{HOST}:{PORTS.kueue_metrics}"},
        "webhook": {"host": HOST, "port": PORTS.kueue_webhook, "certDir": str(_state() / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": SERVICE,
            "webhookSecretName": SECRET,
        },
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
    }


def argv(binary: Path, config_path: Path) -> list[str]:
    # The visibility API is an aggregated API server, which would need a Service the API server can
    # route to; nothing here uses it.
    return [
        str(binary),
        f"--config={config_path}",
        "--feature-gates=VisibilityOnDemand=false",
        "--zap-log-level=2",
    ]


def _health(path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{PORTS.kueue_health}{path}", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _secret_data() -> dict[str, str]:
    try:
        body = controlplane.api_get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")
    except OSError:
        return {}
    return dict(json.loads(body).get("data") or {})


def _mount_certs() -> bool:
    """What a kubelet's Secret volume would do: the serving certificate Kueue wrote, into its cert dir."""
    data = _secret_data()
    if not data.get("tls.crt") or not data.get("tls.key"):
        return False
    certs = _state() / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    for key in ("tls.crt", "tls.key", "ca.crt"):
        if key in data:
            path = certs / key
            path.write_bytes(base64.b64decode(data[key]))
            path.chmod(0o600)
    return True


def start(bin_dir: Path, apply: Callable[[list[dict[str, Any]]], None]) -> None:
    """Install and start Kueue from `bin_dir` (its binary, and its release's manifests in
    kueue-manifests/, as build-binaries.sh caches them); `apply(objects)` applies manifests
    server-side as admin."""
    if procs.running_pid(NAME) is not None:
        return
    manifests = bin_dir / "kueue-manifests"
    if not (bin_dir / "kueue").exists() or not manifests.is_dir():
        raise RuntimeError(
            f"Kueue {KUEUE_VERSION} is not built at {bin_dir}: run `python -m localcluster build`"
        )
    state = _state()
    state.mkdir(parents=True, exist_ok=True)
    kubeconfig = LAYOUT.pki / f"{USER}-kubeconfig"  # issued with the other identities (controlplane)
    apply(install_objects(manifests))
    # Certificates of an earlier run may not match the Secret any more; Kueue waits for the copy below.
    shutil.rmtree(state / "certs", ignore_errors=True)
    config_path = state / "config.yaml"
    config_path.write_text(yaml.safe_dump(config()))
    procs.start(NAME, argv(bin_dir / "kueue", config_path), env=dict(os.environ, KUBECONFIG=str(kubeconfig)))
    procs.wait_until(_mount_certs, 90, "Kueue's webhook certificate in Secret " + SECRET, [NAME])
    procs.wait_until(lambda: _health("/readyz"), 120, "Kueue /readyz", [NAME])
    apply(queue_objects())
