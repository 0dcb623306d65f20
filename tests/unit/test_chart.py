"""The Helm chart, rendered with `helm template` and checked object by object: each values switch,
the security defaults, least-privilege RBAC, and the contracts with the operator (its FTO_* settings,
the trainer pods' labels and ports) and with the observability files (dashboards/, rules/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator import manifests, peering
from finetune_operator.settings import OperatorSettings

from tests.support.helm import (
    CHART,
    MONITORING_API,
    MONITORING_KINDS,
    REPO,
    Manifest,
    by_kind,
    container_env,
    helm,
    one,
    render,
    render_text,
)

MON = (MONITORING_API,)
RBAC_KINDS = ("Role", "ClusterRole")


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return render()


def deployment(ms: list[Manifest]) -> Manifest:
    return one(ms, "Deployment")


def pod_spec(ms: list[Manifest]) -> dict[str, Any]:
    return dict(deployment(ms)["spec"]["template"]["spec"])


def rules_of(ms: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/namespace/name, rule) for every RBAC rule rendered."""
    out = []
    for m in ms:
        if m["kind"] in RBAC_KINDS:
            where = f"{m['kind']}/{m['metadata'].get('namespace', '')}/{m['metadata']['name']}"
            out += [(where, r) for r in m.get("rules", [])]
    return out


def can(ms: list[Manifest], verb: str, resource: str, group: str = "") -> list[str]:
    """The roles that allow verb on group/resource."""
    return [
        where
        for where, r in rules_of(ms)
        if group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r["verbs"]
    ]


# --- lint, schema -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", "rbac.scope=namespace"],
        ["--set", "replicaCount=1", "--set", "peering.enabled=false"],
        ["-f", str(REPO / "helm" / "values-local.yaml")],
    ],
    ids=["default", "namespace-scope", "standalone", "local-values"],
)
def test_lint_strict_is_clean(values: list[str]) -> None:
    out = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout, out.stdout
    assert "[ERROR]" not in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"rbac.scope": "everything"}, "rbac.scope"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"operatorr": {}}, "operatorr"),
        ({"image.digest": "latest"}, "image.digest"),
        ({"trainer.metricsPort": 70000}, "trainer.metricsPort"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"peering.lifetimeSeconds": 1}, "peering.lifetimeSeconds"),
        ({"huggingface.endpoint": "hf-mirror.internal"}, "huggingface.endpoint"),
        ({"huggingface.endpoint": "https://user:pw@hf-mirror.internal"}, "huggingface.endpoint"),
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any], complaint: str) -> None:
    out = render_text(values, check=False)
    assert out.returncode != 0
    assert complaint.rsplit(".", maxsplit=1)[-1] in out.stderr, out.stderr


def test_schema_is_valid_json_schema_with_descriptions_where_it_matters() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False  # a typo in a top-level key is an error
    top = set(schema["properties"]) - {"global"}
    assert top == set(yaml.safe_load((CHART / "values.yaml").read_text()))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"peering.enabled": False}, "needs peering.enabled"),
        ({"peering.priority": 100}, "peering.priority must be"),
    ],
)
def test_unsafe_replica_combinations_fail(values: dict[str, Any], message: str) -> None:
    out = render_text(values, check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


# --- CRDs ---------------------------------------------------------------------------------------


def test_chart_crd_is_the_repository_crd() -> None:
    source = REPO / "crds" / "finetune.dev_finetunejobs.yaml"
    copy = CHART / "files" / "crds" / source.name
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(REPO)} differs from {source.relative_to(REPO)}: cp {source.relative_to(REPO)} "
        f"{copy.relative_to(REPO)}"
    )


def test_crds_are_templated_kept_on_uninstall_and_unchanged(default: list[Manifest]) -> None:
    crds = {m["metadata"]["name"]: m for m in by_kind(default, "CustomResourceDefinition")}
    assert set(crds) == {"finetunejobs.finetune.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for crd in crds.values():
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    source = yaml.safe_load((REPO / "crds" / "finetune.dev_finetunejobs.yaml").read_text())
    rendered = crds["finetunejobs.finetune.dev"]
    assert rendered["spec"] == source["spec"]
    assert source["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()


def test_crds_switch_off() -> None:
    assert by_kind(render({"crds.install": False}), "CustomResourceDefinition") == []


# --- Deployment ---------------------------------------------------------------------------------


def test_deployment_runs_two_peered_replicas_with_probes_and_resources(default: list[Manifest]) -> None:
    dep = deployment(default)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "finetune-operator/operator:0.1.0"
    assert container["command"] == ["python", "-m", "finetune_operator.peering"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    env = container_env(dep)
    assert env["FTO_LIVENESS_ENDPOINT"] == "http://$(POD_IP):8081/healthz"
    assert env["FTO_PEERING_NAME"] == "fto-finetune-operator"
    assert env["FTO_PEERING_PRIORITY"] == "oldest"
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"]
    assert one(default, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_pod_security_defaults(default: list[Manifest]) -> None:
    spec = pod_spec(default)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is True  # the operator itself needs its token
    assert spec["serviceAccountName"] == "fto-finetune-operator"
    c = spec["containers"][0]["securityContext"]
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in spec["containers"][0]["volumeMounts"]
    sa = one(default, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False  # nothing else using the account gets it


def test_rendered_env_is_what_the_operator_reads() -> None:
    """The chart's FTO_* variables parse into the operator's own settings with the values given."""
    ms = render(
        {
            "trainer.image": "registry.example/trainer:1.2",
            "trainer.metricsPort": 9500,
            "prices.name": "team-prices",
            "operator.s3Endpoint": "http://minio.storage:9000",
            "huggingface.endpoint": "https://hf-mirror.internal:8443/hub/",
            "operator.resyncSeconds": 7,
            "operator.stallSeconds": 600,
            "validation.nodeSelector": {"pool": "cpu", "zone": "a"},
            "watchNamespaces": ["team-a", "team-b"],
            "peering.lifetimeSeconds": 15,
        }
    )
    env = {k: v for k, v in container_env(deployment(ms)).items() if isinstance(v, str)}
    env = {k: v.replace("$(POD_IP)", "10.0.0.7") for k, v in env.items()}
    settings = OperatorSettings.from_env(env)
    assert settings.trainer_image == "registry.example/trainer:1.2"
    assert settings.metrics_port == 9500
    assert settings.price_configmap == "team-prices"
    assert settings.operator_namespace == "fto-system"
    assert settings.s3_endpoint == "http://minio.storage:9000"
    assert settings.hf_endpoint == "https://hf-mirror.internal:8443/hub"
    assert settings.resync_seconds == 7
    assert settings.stall_seconds == 600
    assert settings.validation_node_selector == {"pool": "cpu", "zone": "a"}
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.metrics_listen_port == 8080
    p = peering.from_env(env)
    assert p is not None
    assert p.name == "fto-finetune-operator"
    assert p.lifetime == 15
    assert p.priority != (peering.from_env(env) or p).priority  # each replica draws its own


def test_hub_endpoint_defaults_to_the_public_hub(default: list[Manifest]) -> None:
    env = container_env(deployment(default))
    assert env["FTO_HF_ENDPOINT"] == ""
    settings = OperatorSettings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.hf_endpoint == ""  # the pods of hf:// jobs get no HF_ENDPOINT: huggingface.co


def test_standalone_single_replica() -> None:
    ms = render({"replicaCount": 1, "peering.enabled": False})
    container = pod_spec(ms)["containers"][0]
    assert "command" not in container  # the image's entrypoint: python -m finetune_operator
    assert not [k for k in container_env(deployment(ms)) if k.startswith("FTO_PEERING")]
    assert by_kind(ms, "PodDisruptionBudget") == []
    assert can(ms, "patch", "clusterkopfpeerings", "kopf.dev") == []
    assert can(ms, "patch", "kopfpeerings", "kopf.dev") == []


def test_image_tag_and_digest() -> None:
    assert pod_spec(render({"image.tag": "1.2.3"}))["containers"][0]["image"].endswith(":1.2.3")
    digest = "sha256:" + "a" * 64
    ms = render({"image.repository": "r.example/fto", "image.digest": digest})
    assert pod_spec(ms)["containers"][0]["image"] == f"r.example/fto@{digest}"


def test_config_changes_roll_the_pods(default: list[Manifest]) -> None:
    """`helm upgrade` with changed settings must restart the operator (it reads them at start)."""

    def checksum(ms: list[Manifest]) -> str:
        return str(deployment(ms)["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(default) == checksum(render())
    assert checksum(default) != checksum(render({"operator.resyncSeconds": 5}))
    assert checksum(default) != checksum(render({"prices.data": {"default": "9.99"}}))


def test_scheduling_values_pass_through() -> None:
    ms = render(
        {
            "nodeSelector": {"pool": "system"},
            "tolerations": [{"key": "system", "operator": "Exists"}],
            "priorityClassName": "system-cluster-critical",
            "podAnnotations": {"a": "b"},
            "podLabels": {"team": "ml"},
            "imagePullSecrets": [{"name": "pull"}],
            "operator.extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        }
    )
    spec = pod_spec(ms)
    assert spec["nodeSelector"] == {"pool": "system"}
    assert spec["tolerations"][0]["key"] == "system"
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["imagePullSecrets"] == [{"name": "pull"}]
    meta = deployment(ms)["spec"]["template"]["metadata"]
    assert meta["annotations"]["a"] == "b"
    assert meta["labels"]["team"] == "ml"
    assert container_env(deployment(ms))["HTTPS_PROXY"] == "http://proxy:3128"


# --- RBAC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [{}, {"rbac.scope": "namespace"}, {"watchNamespaces": ["a", "b"]}],
    ids=["cluster", "namespace", "cluster-some-namespaces"],
)
def test_rbac_is_least_privilege(values: dict[str, Any]) -> None:
    ms = render(values)
    for where, rule in rules_of(ms):
        assert "*" not in rule["verbs"], where
        assert "*" not in rule["resources"], where
        assert "*" not in rule.get("apiGroups", []), where
        assert "secrets" not in rule["resources"], f"{where} grants Secrets"
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), (
            where
        )
    # What the operator does, and only that.
    assert can(ms, "watch", "finetunejobs", "finetune.dev")
    assert can(ms, "patch", "finetunejobs/status", "finetune.dev")
    assert can(ms, "update", "finetunejobs/finalizers", "finetune.dev")
    assert can(ms, "create", "pods")
    assert can(ms, "watch", "pods")
    assert can(ms, "create", "jobs", "batch")
    assert can(ms, "patch", "jobs", "batch")
    assert can(ms, "create", "configmaps")
    assert can(ms, "create", "events")
    assert not can(ms, "update", "finetunejobs", "finetune.dev")
    assert not can(ms, "get", "configmaps") or all("prices" in w for w in can(ms, "get", "configmaps"))
    prices = one(ms, "Role", "fto-finetune-operator-prices")
    assert prices["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["finetune-operator-prices"],
            "verbs": ["get"],
        }
    ]
    # Kueue: a queued job's Workload and queues; suspend through the Workload.
    assert can(ms, "list", "workloads", "kueue.x-k8s.io")
    assert can(ms, "patch", "workloads", "kueue.x-k8s.io")
    assert can(ms, "get", "localqueues", "kueue.x-k8s.io")
    assert can(ms, "get", "clusterqueues", "kueue.x-k8s.io")
    assert not can(ms, "create", "workloads", "kueue.x-k8s.io")
    assert not can(ms, "patch", "clusterqueues", "kueue.x-k8s.io")
    assert not can(ms, "get", "nodes")
    assert not can(ms, "create", "deployments", "apps")
    assert not can(ms, "create", "customresourcedefinitions", "apiextensions.k8s.io")


def test_cluster_scope_binds_cluster_wide_and_uses_a_cluster_peering(default: list[Manifest]) -> None:
    names = {m["metadata"]["name"] for m in by_kind(default, "ClusterRoleBinding")}
    assert names == {
        "fto-finetune-operator",
        "fto-finetune-operator-discovery",
        "fto-finetune-operator-kueue",
    }
    assert by_kind(default, "RoleBinding") == [one(default, "RoleBinding", "fto-finetune-operator-prices")]
    assert can(default, "patch", "clusterkopfpeerings", "kopf.dev")
    assert container_env(deployment(default))["FTO_NAMESPACES"] == ""
    assert not can(default, "list", "namespaces")


def test_namespace_scope_grants_only_in_watched_namespaces() -> None:
    ms = render({"rbac.scope": "namespace", "watchNamespaces": ["team-a", "team-b"]})
    roles = {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in by_kind(ms, "Role")}
    assert roles == {
        ("team-a", "fto-finetune-operator"),
        ("team-b", "fto-finetune-operator"),
        ("fto-system", "fto-finetune-operator-prices"),
    }
    # The only cluster-wide grants: reading which CRDs and namespaces exist (Kopf's discovery) and, unless
    # turned off, Kueue's ClusterQueues (get).
    (cluster_role,) = [m for m in by_kind(ms, "ClusterRole") if m["metadata"]["name"].endswith("-discovery")]
    assert {tuple(r["verbs"]) for r in cluster_role["rules"]} == {("list", "watch")}
    (kueue,) = [m for m in by_kind(ms, "ClusterRole") if m["metadata"]["name"].endswith("-kueue")]
    assert kueue["rules"] == [
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["clusterqueues"], "verbs": ["get"]}
    ]
    off = render({"rbac.scope": "namespace", "kueue.readClusterQueues": False})
    assert [m["metadata"]["name"] for m in by_kind(off, "ClusterRole")] == ["fto-finetune-operator-discovery"]
    assert not can(ms, "patch", "clusterkopfpeerings", "kopf.dev")
    assert container_env(deployment(ms))["FTO_NAMESPACES"] == "team-a,team-b"
    # Without watchNamespaces: the release namespace.
    ms = render({"rbac.scope": "namespace"})
    assert container_env(deployment(ms))["FTO_NAMESPACES"] == "fto-system"


def test_cluster_scope_limited_to_some_namespaces_binds_there() -> None:
    ms = render({"watchNamespaces": ["team-a"]})
    bindings = [m for m in by_kind(ms, "RoleBinding") if m["roleRef"]["kind"] == "ClusterRole"]
    assert [(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings] == [
        ("team-a", "fto-finetune-operator")
    ]
    assert "fto-finetune-operator" not in {m["metadata"]["name"] for m in by_kind(ms, "ClusterRoleBinding")}


def test_rbac_and_service_account_switches() -> None:
    ms = render({"rbac.create": False, "serviceAccount.create": False, "serviceAccount.name": "ops"})
    assert not [m for m in ms if m["apiVersion"].startswith("rbac.")]
    assert by_kind(ms, "ServiceAccount") == []
    assert pod_spec(ms)["serviceAccountName"] == "ops"


# --- metrics, monitoring, dashboards ------------------------------------------------------------


def test_monitoring_objects_need_the_prometheus_operator_api(default: list[Manifest]) -> None:
    assert not [m for m in default if m["kind"] in MONITORING_KINDS]
    ms = render(api_versions=MON)
    assert {m["kind"] for m in ms if m["kind"] in MONITORING_KINDS} == MONITORING_KINDS


@pytest.mark.parametrize(
    ("switch", "kind"),
    [
        ("metrics.serviceMonitor.enabled", "ServiceMonitor"),
        ("metrics.podMonitor.enabled", "PodMonitor"),
        ("metrics.prometheusRule.enabled", "PrometheusRule"),
    ],
)
def test_each_monitoring_switch(switch: str, kind: str) -> None:
    assert by_kind(render({switch: False}, api_versions=MON), kind) == []
    assert len(by_kind(render({switch: True}, api_versions=MON), kind)) == 1


def test_service_monitor_scrapes_the_metrics_service() -> None:
    ms = render({"metrics.serviceMonitor.labels": {"release": "kube-prometheus"}}, api_versions=MON)
    svc, sm = one(ms, "Service"), one(ms, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["fto-system"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The Service selects the operator pods, on their metrics port.
    labels = deployment(ms)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_pod_monitor_matches_the_trainer_pods_the_operator_renders() -> None:
    ms = render(api_versions=MON)
    pm = one(ms, "PodMonitor")
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector == {
        manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY,
        manifests.LABEL_COMPONENT: manifests.COMPONENT_TRAINER,
    }
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"  # the trainer container's port name
    scoped = one(render({"watchNamespaces": ["team-a"]}, api_versions=MON), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_prometheus_rule_carries_every_group_of_rules_dir() -> None:
    rule = one(
        render({"metrics.prometheusRule.labels": {"role": "alerts"}}, api_versions=MON), "PrometheusRule"
    )
    expected = []
    for path in sorted((CHART / "rules").glob("*.yaml")):
        expected += yaml.safe_load(path.read_text())["groups"]
    assert expected, "helm/finetune-operator/rules/ has no rule groups"
    assert rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["role"] == "alerts"
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert "alert" in r or "record" in r
            assert r["expr"]


def test_dashboards_become_labelled_config_maps(default: list[Manifest]) -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files, "helm/finetune-operator/dashboards/ has no dashboards"
    maps = [m for m in by_kind(default, "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]
    assert len(maps) == len(files)
    data = {k: v for m in maps for k, v in m["data"].items()}
    for path in files:
        assert json.loads(data[path.name]) == json.loads(path.read_text())
        assert json.loads(data[path.name]).get("uid"), f"{path.name} needs a fixed uid"
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)
    ms = render({"dashboards.namespace": "monitoring", "dashboards.labels": {"grafana_dashboard": "ml"}})
    maps = [m for m in by_kind(ms, "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]
    assert {m["metadata"]["namespace"] for m in maps} == {"monitoring"}
    assert {m["metadata"]["labels"]["grafana_dashboard"] for m in maps} == {"ml"}
    off = render({"dashboards.enabled": False})
    assert not [m for m in by_kind(off, "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]


def test_dashboards_and_rules_render_from_any_file_set(tmp_path: Path) -> None:
    """The templates do not depend on today's files: a new dashboard or rule file just appears."""
    chart = tmp_path / "finetune-operator"
    shutil.copytree(CHART, chart)
    (chart / "dashboards" / "Extra_Board.json").write_text(json.dumps({"uid": "extra", "title": "x"}))
    (chart / "rules" / "extra.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "extra", "rules": [{"alert": "X", "expr": "vector(1)"}]}]})
    )
    ms = render(chart=chart, api_versions=MON)
    one(ms, "ConfigMap", "fto-finetune-operator-dashboard-extra-board")
    assert "extra" in [g["name"] for g in one(ms, "PrometheusRule")["spec"]["groups"]]


def test_metrics_switch(default: list[Manifest]) -> None:
    annotations = deployment(default)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    ms = render({"metrics.enabled": False}, api_versions=MON)
    assert by_kind(ms, "Service") == []
    assert by_kind(ms, "ServiceMonitor") == []
    assert by_kind(ms, "PodMonitor") == []
    assert container_env(deployment(ms))["FTO_METRICS_PORT"] == "0"
    assert "prometheus.io/scrape" not in deployment(ms)["spec"]["template"]["metadata"]["annotations"]
    ms = render({"metrics.scrapeAnnotations": False})
    assert "prometheus.io/scrape" not in deployment(ms)["spec"]["template"]["metadata"]["annotations"]


# --- network policy, prices, notes --------------------------------------------------------------


def test_network_policy(default: list[Manifest]) -> None:
    np = one(default, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= (
        deployment(default)["spec"]["template"]["metadata"]["labels"].items()
    )
    assert np["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    egress_ports = [p["port"] for e in np["spec"]["egress"] for p in e["ports"]]
    assert {443, 6443, 9400, 53} <= set(egress_ports)
    local = render(
        {"networkPolicy.apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [16443]}, "networkPolicy.dns": False}
    )
    egress = one(local, "NetworkPolicy")["spec"]["egress"]
    assert egress[0] == {
        "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
        "ports": [{"port": 16443, "protocol": "TCP"}],
    }
    assert 53 not in [p["port"] for e in egress for p in e["ports"]]
    assert by_kind(render({"networkPolicy.enabled": False}), "NetworkPolicy") == []


def test_price_table(default: list[Manifest]) -> None:
    cm = one(default, "ConfigMap", "finetune-operator-prices")
    assert cm["metadata"]["namespace"] == "fto-system"
    assert cm["data"]["default"] == "2.00"
    assert cm["data"]["default.tokensPerSecond"] == "1000"
    assert all(isinstance(v, str) for v in cm["data"].values())
    ms = render({"prices.create": False})
    assert not [m for m in by_kind(ms, "ConfigMap") if m["metadata"]["name"] == "finetune-operator-prices"]


def notes(tmp_path: Path, *values: str) -> str:
    """NOTES.txt rendered offline (`helm install --dry-run` needs a cluster): wrapped in a ConfigMap."""
    chart = tmp_path / "finetune-operator"
    shutil.copytree(CHART, chart)
    body = "\n".join("    " + line for line in (CHART / "templates" / "NOTES.txt").read_text().splitlines())
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n" + body + "\n"
    )
    out = helm(
        "template", "fto", str(chart), "-n", "fto-system", "--show-only", "templates/notes.yaml", *values
    )
    return str(yaml.safe_load(out.stdout)["data"]["notes"])


def test_notes_say_what_was_installed(tmp_path: Path) -> None:
    text = notes(tmp_path, "--set", "rbac.scope=namespace")
    assert "FineTuneJobs in namespaces: fto-system" in text
    assert "one active at a time through Kopf peering" in text
    assert "monitoring.coreos.com/v1) is not served here" in text
    assert "kept on `helm uninstall`" in text
    text = notes(tmp_path / "mon", "--api-versions", MONITORING_API)
    assert "all namespaces" in text
    assert "ServiceMonitor: yes" in text


def test_every_object_is_namespaced_to_the_release_or_cluster_scoped(default: list[Manifest]) -> None:
    cluster_scoped = {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for m in render(api_versions=MON):
        ns = m["metadata"].get("namespace")
        assert (m["kind"] in cluster_scoped) == (ns is None), f"{m['kind']}/{m['metadata']['name']}"
        assert m["metadata"]["labels"]["app.kubernetes.io/instance"] == "fto"


def test_the_egress_policy_allows_the_configured_endpoints_and_is_bound_to_the_watched_namespaces() -> None:
    rendered = render(
        {
            "operator.s3Endpoint": "http://minio:9000/",
            "egress.s3Endpoints": ["https://s3.corp"],
            "watchNamespaces": ["a", "b"],
        }
    )
    [policy] = [m for m in rendered if m["kind"] == "ValidatingAdmissionPolicy"]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["allowed"]) == ["http://minio:9000", "https://s3.corp"]
    [binding] = [m for m in rendered if m["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    selector = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]
    assert selector["values"] == ["a", "b"]
    # All namespaces: no selector; switched off: nothing rendered.
    [binding] = [m for m in render() if m["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert "matchResources" not in binding["spec"]
    assert not [m for m in render({"egress.admissionPolicy": False}) if "Admission" in m["kind"]]


def test_the_jobs_pods_get_a_network_policy_in_each_watched_namespace() -> None:
    rendered = render(
        {
            "watchNamespaces": ["a", "b"],
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team": "obs",
        }
    )
    policies = [
        m for m in rendered if m["kind"] == "NetworkPolicy" and m["metadata"]["name"].endswith("-jobs")
    ]
    assert [p["metadata"]["namespace"] for p in policies] == ["a", "b"]
    spec = policies[0]["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "finetune-operator"}
    assert spec["podSelector"]["matchExpressions"][0]["values"] == ["validation", "trainer"]
    metrics = spec["ingress"][0]
    assert metrics["ports"] == [{"port": 9400, "protocol": "TCP"}]
    assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "fto-system"
    }
    assert metrics["from"][1] == {"namespaceSelector": {"matchLabels": {"team": "obs"}}}
    block = spec["egress"][0]["to"][0]["ipBlock"]
    assert block == {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}  # no metadata service
    assert {p["port"] for p in spec["egress"][0]["ports"]} == {80, 443, 8333, 9000}
    # Only listed CIDRs, every port.
    rendered = render(
        {
            "watchNamespaces": ["a"],
            "networkPolicy.jobs.egress.cidrs": ["10.1.2.0/24"],
            "networkPolicy.jobs.egress.ports": [],
        }
    )
    [policy] = [m for m in rendered if m["metadata"]["name"].endswith("-jobs")]
    assert policy["spec"]["egress"][0] == {
        "to": [{"ipBlock": {"cidr": "10.1.2.0/24", "except": ["169.254.0.0/16"]}}]
    }
    # Namespace scope: the release namespace; all namespaces: none (there is no namespace to put it in).
    assert [
        m["metadata"]["namespace"]
        for m in render({"rbac.scope": "namespace"})
        if m["metadata"]["name"].endswith("-jobs")
    ] == ["fto-system"]
    assert not [m for m in render() if m["metadata"]["name"].endswith("-jobs")]


def test_the_uninstall_hook_only_releases_finalizers_and_cleans_up_after_itself() -> None:
    hook = [
        m
        for m in render({"watchNamespaces": ["a", "b"]})
        if m["metadata"]["name"] == "fto-finetune-operator-uninstall"
    ]
    assert sorted((m["kind"], m["metadata"]["namespace"]) for m in hook) == [
        ("Job", "fto-system"),
        ("Role", "a"),
        ("Role", "b"),
        ("RoleBinding", "a"),
        ("RoleBinding", "b"),
        ("ServiceAccount", "fto-system"),
    ]
    for m in hook:
        annotations = m["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-delete"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    # The account and its rules come before the Job.
    weights = {m["kind"]: int(m["metadata"]["annotations"]["helm.sh/hook-weight"]) for m in hook}
    assert weights["Role"] < weights["Job"]
    [role] = [m for m in hook if m["kind"] == "Role"][:1]
    assert role["rules"] == [
        {"apiGroups": ["finetune.dev"], "resources": ["finetunejobs"], "verbs": ["get", "list", "patch"]}
    ]
    [job] = [m for m in hook if m["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "finetune_operator.release"]
    assert container["env"] == [{"name": "FTO_NAMESPACES", "value": "a,b"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # All namespaces: a ClusterRole; switched off: nothing.
    kinds = {m["kind"] for m in render() if m["metadata"]["name"] == "fto-finetune-operator-uninstall"}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job"}
    assert not [
        m
        for m in render({"uninstall.releaseFinalizers": False})
        if m["metadata"]["name"].endswith("-uninstall")
    ]
