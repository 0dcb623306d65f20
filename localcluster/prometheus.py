"""Prometheus with Kubernetes service discovery against the local API server.

Scrape jobs follow the common annotation convention (`prometheus.io/scrape`, `/port`, `/path`)
on pods and on Services (through EndpointSlices), which is how a plain Prometheus in a cluster
finds targets without the Prometheus Operator.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from localcluster import procs
from localcluster.controlplane import APISERVER_URL
from localcluster.paths import HOST, LAYOUT, PORTS

URL = f"http://{HOST}:{PORTS.prometheus}"

RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "local:prometheus"}
rules:
- apiGroups: [""]
  resources: [pods, services, endpoints, nodes]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "local:prometheus"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "local:prometheus"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "local:prometheus"}
"""


def _sd(role: str) -> list[dict[str, Any]]:
    pki = LAYOUT.pki
    return [
        {
            "role": role,
            "api_server": APISERVER_URL,
            "tls_config": {
                "ca_file": str(pki / "ca.crt"),
                "cert_file": str(pki / "prometheus.crt"),
                "key_file": str(pki / "prometheus.key"),
            },
        }
    ]


def _annotation_relabels(kind: str) -> list[dict[str, Any]]:
    a = f"__meta_kubernetes_{kind}_annotation_prometheus_io"
    return [
        {"source_labels": [f"{a}_scrape"], "action": "keep", "regex": "true"},
        {
            "source_labels": [f"{a}_path"],
            "action": "replace",
            "target_label": "__metrics_path__",
            "regex": "(.+)",
        },
        {
            "source_labels": ["__address__", f"{a}_port"],
            "action": "replace",
            "regex": r"([^:]+)(?::\d+)?;(\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    ]


def config(rule_files: list[str] | None = None) -> dict[str, Any]:
    pod_relabels = [
        *_annotation_relabels("pod"),
        # Finished pods keep their IP in the API; scraping them only produces down targets.
        {"source_labels": ["__meta_kubernetes_pod_phase"], "action": "drop", "regex": "Succeeded|Failed"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
    ]
    svc_relabels = [
        *_annotation_relabels("service"),
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    return {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s", "scrape_timeout": "4s"},
        "rule_files": rule_files or [],
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                # A scraped series' own `namespace` label wins over the target's (the operator exports series
                # about jobs in other namespaces), as in the common kubernetes-pods job and with the
                # Prometheus Operator's honorLabels.
                "honor_labels": True,
                "kubernetes_sd_configs": _sd("pod"),
                "relabel_configs": pod_relabels,
            },
            {
                "job_name": "kubernetes-service-endpoints",
                "honor_labels": True,
                "kubernetes_sd_configs": _sd("endpointslice"),
                "relabel_configs": svc_relabels,
            },
        ],
    }


def binary() -> Path:
    """Our own build (see build-binaries.sh): Debian's lacks Kubernetes service discovery."""
    path = LAYOUT.bin / "prometheus"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make cluster-up`, which builds it")
    return path


def ready() -> bool:
    with urllib.request.urlopen(URL + "/-/ready", timeout=2) as r:  # noqa: S310
        return bool(r.status == 200)


def start() -> None:
    d = LAYOUT.prometheus
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "rules").mkdir(parents=True, exist_ok=True)
    conf = d / "prometheus.yml"
    conf.write_text(yaml.safe_dump(config([str(d / "rules" / "*.yaml")]), sort_keys=False))
    procs.start(
        "prometheus",
        [
            str(binary()),
            f"--config.file={conf}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address={HOST}:{PORTS.prometheus}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=2d",
        ],
    )
    procs.wait_until(ready, 60, "prometheus /-/ready", ["prometheus"])


def query(promql: str) -> list[dict[str, Any]]:
    """Instant query; returns the `result` list."""
    url = URL + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus query failed: {body}")
    return list(body["data"]["result"])
