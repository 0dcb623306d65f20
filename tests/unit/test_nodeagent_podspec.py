from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from localcluster.nodeagent.images import ImageConfig, resolve_image
from localcluster.nodeagent.podspec import (
    ClaimSource,
    ConfigError,
    Identity,
    Mount,
    Objects,
    PodContext,
    build_launch_plan,
    claim_source,
    container_argv,
    container_env,
    expand,
    field_ref_value,
    mount_plan,
    parse_quantity,
    process_identity,
    referenced_objects,
)

VENV = "/repo/.venv/bin"


def make_pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "web", "tier": "a b"},
            "annotations": {"note": 'say "hi"'},
        },
        "spec": {"nodeName": "local-gpu-0", "serviceAccountName": "sa", "containers": [container], **spec},
    }


def ctx_for(pod: dict[str, Any]) -> PodContext:
    return PodContext(
        pod=pod,
        pod_ip="127.1.0.7",
        host_ip="127.0.0.1",
        api_host="127.0.0.1",
        api_port=16443,
        node_allocatable={"cpu": "16", "memory": "64Gi"},
    )


VARS = {"A": "1", "B": "two"}


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1ytwoz"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$A", "$A"),
        ("$(A", "$(A"),
        ("tail$", "tail$"),
        ("", ""),
        ("$$$(A)", "$1"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, out: str) -> None:
    assert expand(text, VARS.get) == out


def test_parse_quantity() -> None:
    assert parse_quantity("64Gi") == 64 * 1024**3
    assert parse_quantity("500m") * 1000 == 500
    assert parse_quantity("2") == 2
    assert parse_quantity("1e3") == 1000
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity("lots")


def test_field_refs() -> None:
    ctx = ctx_for(make_pod({"name": "c"}))
    assert field_ref_value(ctx, "metadata.name") == "p"
    assert field_ref_value(ctx, "metadata.namespace") == "ns"
    assert field_ref_value(ctx, "metadata.uid") == "u-1"
    assert field_ref_value(ctx, "spec.nodeName") == "local-gpu-0"
    assert field_ref_value(ctx, "spec.serviceAccountName") == "sa"
    assert field_ref_value(ctx, "status.podIP") == "127.1.0.7"
    assert field_ref_value(ctx, "status.hostIP") == "127.0.0.1"
    assert field_ref_value(ctx, "metadata.labels['app']") == "web"
    assert field_ref_value(ctx, 'metadata.labels["tier"]') == "a b"
    assert field_ref_value(ctx, "metadata.labels['absent']") == ""
    assert field_ref_value(ctx, "metadata.labels") == 'app="web"\ntier="a b"'
    assert field_ref_value(ctx, "metadata.annotations") == 'note="say \\"hi\\""'
    with pytest.raises(ConfigError):
        field_ref_value(ctx, "spec.bogus")


def test_env_precedence_value_from_and_expansion() -> None:
    container = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cm"}},
            {"prefix": "S_", "secretRef": {"name": "sec"}},
            {"configMapRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "MODE", "value": "override"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope", "optional": True}},
            },
            {"name": "OPT2", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "x", "optional": True}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(IP):$(PORT)/$(MODE)$(UNDEFINED)"},
            {"name": "API", "value": "$(KUBERNETES_SERVICE_HOST)"},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        ],
        "resources": {"requests": {"cpu": "250m"}},
    }
    objects = Objects(
        secrets={"sec": {"password": b"hunter2"}, "gone": None},
        config_maps={"cm": {"MODE": b"cm", "PORT": b"8080", "greeting": b"hello", "bad=key": b"x"}},
    )
    env = container_env(ctx_for(make_pod(container)), container, objects)
    assert env["MODE"] == "override"
    assert env["PORT"] == "8080"
    assert env["S_password"] == "hunter2"
    assert env["PW"] == "hunter2"
    assert env["GREETING"] == "hello"
    assert "OPT" not in env
    assert "OPT2" not in env
    assert "bad=key" not in env
    assert env["URL"] == "http://127.1.0.7:8080/override$(UNDEFINED)"
    assert env["API"] == "127.0.0.1"
    assert env["MEM"] == str(64 * 1024)  # unset limit reads as node allocatable
    assert env["CPU"] == "250"


@pytest.mark.parametrize(
    "ref",
    [
        {"secretKeyRef": {"name": "absent", "key": "x"}},
        {"secretKeyRef": {"name": "sec", "key": "absent"}},
        {"configMapKeyRef": {"name": "absent", "key": "x"}},
    ],
)
def test_missing_required_references_are_config_errors(ref: dict[str, Any]) -> None:
    container = {"name": "c", "env": [{"name": "X", "valueFrom": ref}]}
    objects = Objects(secrets={"sec": {"k": b"v"}, "absent": None}, config_maps={"absent": None})
    with pytest.raises(ConfigError, match=r"not found|couldn't find key"):
        container_env(ctx_for(make_pod(container)), container, objects)


def test_missing_env_from_source_is_a_config_error_unless_optional() -> None:
    container = {"name": "c", "envFrom": [{"secretRef": {"name": "absent"}}]}
    with pytest.raises(ConfigError):
        container_env(ctx_for(make_pod(container)), container, Objects(secrets={"absent": None}))


BUSYBOX = resolve_image("busybox", VENV)
# As the image store describes the trainer image (its Dockerfile's ENTRYPOINT, CMD, USER).
TRAINER = ImageConfig(
    name="finetune-operator/trainer:0.1.0",
    entrypoint=("/usr/bin/tini", "--", "python", "-m", "finetune_trainer"),
    cmd=("train", "--config", "/etc/finetune/config.json"),
    env={"PATH": "/opt/venv/bin:/usr/bin:/bin", "HOME": "/scratch"},
    rootfs="/images/trainer/rootfs",
    working_dir="/scratch",
    user="65532:65532",
)
OPERATOR = ImageConfig(
    name="finetune-operator/operator:0.1.0",
    entrypoint=("python", "-m", "finetune_operator"),
    cmd=(),
    env={"PATH": "/opt/venv/bin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
    rootfs="/images/operator/rootfs",
    working_dir="/tmp",
    user="65532:65532",
)


@pytest.mark.parametrize(
    ("image", "command", "args", "argv"),
    [
        (BUSYBOX, None, None, ["sh"]),
        (BUSYBOX, ["sh", "-c", "echo $(X)"], None, ["sh", "-c", "echo x"]),
        (BUSYBOX, None, ["-c", "true"], ["-c", "true"]),
        (
            TRAINER,
            None,
            None,
            [
                "/usr/bin/tini",
                "--",
                "python",
                "-m",
                "finetune_trainer",
                "train",
                "--config",
                "/etc/finetune/config.json",
            ],
        ),
        (
            TRAINER,
            None,
            ["train", "--config", "$(CFG)"],
            ["/usr/bin/tini", "--", "python", "-m", "finetune_trainer", "train", "--config", "/c.json"],
        ),
        (TRAINER, ["python", "-c", "pass"], ["a"], ["python", "-c", "pass", "a"]),
        (
            TRAINER,
            [],
            [],
            [
                "/usr/bin/tini",
                "--",
                "python",
                "-m",
                "finetune_trainer",
                "train",
                "--config",
                "/etc/finetune/config.json",
            ],
        ),
    ],
)
def test_command_replaces_entrypoint_and_args_replace_cmd(
    image: Any, command: list[str] | None, args: list[str] | None, argv: list[str]
) -> None:
    container: dict[str, Any] = {"name": "c"}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    assert container_argv(image, container, {"X": "x", "CFG": "/c.json"}) == argv


def test_referenced_objects_cover_env_env_from_and_volumes() -> None:
    container = {
        "name": "c",
        "envFrom": [{"secretRef": {"name": "s1"}}, {"configMapRef": {"name": "c1"}}],
        "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c2", "key": "k"}}},
        ],
    }
    pod = make_pod(
        container,
        initContainers=[{"name": "i", "envFrom": [{"secretRef": {"name": "s3"}}]}],
        volumes=[
            {"name": "v1", "secret": {"secretName": "s4"}},
            {"name": "v2", "configMap": {"name": "c3"}},
            {"name": "v3", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}},
            {"name": "v4", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
        ],
    )
    refs = referenced_objects(pod)
    assert refs.secrets == {"s1", "s2", "s3", "s4"}
    assert refs.config_maps == {"c1", "c2", "c3", "kube-root-ca.crt"}
    assert refs.claims == {"models"}


def test_mount_plan_sub_paths_read_only_and_termination_log() -> None:
    container = {
        "name": "c",
        "terminationMessagePath": "/tmp/msg",
        "env": [{"name": "SUB", "value": "dir"}],
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "cfg", "mountPath": "/etc/finetune"},
            {"name": "cfg", "mountPath": "/etc/one.json", "subPath": "config.json"},
            {"name": "scratch", "mountPath": "/data", "subPathExpr": "$(SUB)", "readOnly": True},
            {"name": "host", "mountPath": "/host"},
        ],
    }
    pod = make_pod(
        container,
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cm"}},
            {"name": "host", "hostPath": {"path": "/srv/data"}},
        ],
    )
    mounts = mount_plan(ctx_for(pod), "/sb", container, {"SUB": "dir"}, "/sb/term")
    assert mounts == [
        Mount("/sb/volumes/scratch", "/scratch"),
        Mount("/sb/volumes/cfg", "/etc/finetune", read_only=True),
        Mount("/sb/volumes/cfg/config.json", "/etc/one.json", read_only=True, create_source=True),
        Mount("/sb/volumes/scratch/dir", "/data", read_only=True, create_source=True),
        Mount("/srv/data", "/host"),
        Mount("/sb/term", "/tmp/msg", is_file=True),
    ]


@pytest.mark.parametrize(
    ("mount", "volumes", "match"),
    [
        ({"name": "x", "mountPath": "/x"}, [], "no volume"),
        (
            {"name": "v", "mountPath": "/x", "subPath": "../escape"},
            [{"name": "v", "emptyDir": {}}],
            "subPath",
        ),
        (
            {"name": "v", "mountPath": "/x"},
            [{"name": "v", "nfs": {"server": "nfs.example", "path": "/export"}}],
            "unsupported volume type nfs",
        ),
        (
            {"name": "v", "mountPath": "/x"},
            [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}],
            'persistentvolumeclaim "c" not found',
        ),
    ],
)
def test_bad_mounts_are_config_errors(mount: dict[str, Any], volumes: list[Any], match: str) -> None:
    container = {"name": "c", "volumeMounts": [mount]}
    with pytest.raises(ConfigError, match=match):
        mount_plan(ctx_for(make_pod(container, volumes=volumes)), "/sb", container, {}, "/sb/t")


def test_launch_plan_puts_it_together() -> None:
    container = {
        "name": "c",
        "image": "finetune-operator/operator:0.1.0",
        "command": ["python", "-c", "print('$(GREETING)')"],
        "env": [{"name": "GREETING", "value": "hi"}],
        "workingDir": "/work",
        "securityContext": {"readOnlyRootFilesystem": True},
    }
    pod = make_pod(container)
    plan = build_launch_plan(ctx_for(pod), container, OPERATOR, Objects(), "/sb", "/sb/t")
    assert plan.argv == ["python", "-c", "print('hi')"]
    assert plan.env["PATH"] == "/opt/venv/bin:/usr/bin:/bin"  # the image's ENV
    assert plan.env["HOSTNAME"] == "p"
    assert plan.env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert plan.env["KUBERNETES_SERVICE_PORT"] == "16443"
    assert plan.env["GREETING"] == "hi"
    assert plan.env["PYTHONUNBUFFERED"] == "1"
    assert plan.working_dir == "/work"
    assert plan.read_only_root is True
    assert plan.termination_message_path == "/dev/termination-log"
    assert plan.rootfs == "/images/operator/rootfs"
    assert plan.identity == Identity(uid=65532, gid=65532)
    # WORKDIR applies when the pod sets none
    container.pop("workingDir")
    assert (
        build_launch_plan(ctx_for(pod), container, OPERATOR, Objects(), "/sb", "/sb/t").working_dir == "/tmp"
    )


@pytest.mark.parametrize(
    ("pod_sc", "container_sc", "image", "identity"),
    [
        ({}, {}, OPERATOR, Identity(65532, 65532)),  # the image's USER
        (
            {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            {},
            OPERATOR,
            Identity(1000, 1000, (1000,)),
        ),
        ({"runAsUser": 1000}, {"runAsUser": 2000, "runAsGroup": 3000}, OPERATOR, Identity(2000, 3000)),
        ({"supplementalGroups": [5, 6], "fsGroup": 7}, {}, TRAINER, Identity(65532, 65532, (5, 6, 7))),
        ({}, {}, BUSYBOX, None),  # the host's shell tools run as the agent unless told otherwise
        ({"runAsUser": 1000}, {}, BUSYBOX, Identity(1000, 0)),
    ],
)
def test_who_the_container_runs_as(
    pod_sc: dict[str, Any], container_sc: dict[str, Any], image: ImageConfig, identity: Identity | None
) -> None:
    container = {"name": "c", "securityContext": container_sc}
    pod = make_pod(container)
    pod["spec"]["securityContext"] = pod_sc
    assert process_identity(pod, container, image) == identity


@pytest.mark.parametrize(
    ("pod_sc", "image", "needle"),
    [
        ({"runAsNonRoot": True}, BUSYBOX, "runAsNonRoot and image will run as root"),
        ({"runAsNonRoot": True, "runAsUser": 0}, OPERATOR, "runAsNonRoot and image will run as root"),
        ({"runAsNonRoot": True}, replace(OPERATOR, user="operator"), "non-numeric user"),
        ({}, replace(OPERATOR, user="nobody-here", rootfs="/nonexistent"), "unable to find user nobody-here"),
    ],
)
def test_run_as_non_root_is_enforced(pod_sc: dict[str, Any], image: ImageConfig, needle: str) -> None:
    container = {"name": "c"}
    pod = make_pod(container)
    pod["spec"]["securityContext"] = pod_sc
    with pytest.raises(ConfigError, match=needle):
        process_identity(pod, container, image)


# ---------------------------------------------------------------------------------------------
# persistentVolumeClaim volumes: the claim's bound PV, as the kubelet resolves it.


def claim(
    name: str = "models", *, phase: str = "Bound", volume: str = "pv-models", **meta: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": "pvc-uid", **meta},
        "spec": {"volumeName": volume} if volume else {},
        "status": {"phase": phase},
    }


def host_path_pv(path: str = "/srv/models", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "pv-models"},
        "spec": {
            "hostPath": {"path": path, "type": "Directory"},
            "claimRef": {"namespace": "ns", "name": "models", "uid": "pvc-uid"},
            "accessModes": ["ReadOnlyMany"],
            "capacity": {"storage": "1Gi"},
            **spec,
        },
    }


def test_claim_source_is_the_bound_pvs_host_path_or_local_path() -> None:
    objects = Objects(claims={"models": claim()}, persistent_volumes={"pv-models": host_path_pv()})
    assert claim_source("ns", "models", objects) == ClaimSource("/srv/models", host_path_type="Directory")
    local = {"metadata": {"name": "pv-models"}, "spec": {"local": {"path": "/mnt/disks/ssd1"}}}
    objects = Objects(claims={"models": claim()}, persistent_volumes={"pv-models": local})
    assert claim_source("ns", "models", objects) == ClaimSource("/mnt/disks/ssd1", local=True)


@pytest.mark.parametrize(
    ("claims", "pvs", "match"),
    [
        ({}, {}, 'error processing PVC ns/models: persistentvolumeclaim "models" not found'),
        ({"models": None}, {}, 'persistentvolumeclaim "models" not found'),
        ({"models": claim(phase="Pending", volume="")}, {}, "PVC is not bound \\(phase Pending\\)"),
        ({"models": claim(deletionTimestamp="2026-01-01T00:00:00Z")}, {}, "being deleted"),
        ({"models": claim()}, {"pv-models": None}, 'persistentvolume "pv-models" not found'),
        (
            {"models": claim()},
            {"pv-models": host_path_pv(claimRef={"name": "models", "uid": "someone-else"})},
            "bound to another claim",
        ),
        ({"models": claim()}, {"pv-models": host_path_pv(volumeMode="Block")}, "only Filesystem"),
        (
            {"models": claim()},
            {"pv-models": {"spec": {"nfs": {"server": "s", "path": "/e"}, "capacity": {"storage": "1Gi"}}}},
            "cannot mount \\(nfs\\)",
        ),
    ],
    ids=["absent", "not-found", "unbound", "terminating", "no-pv", "claimref", "block", "nfs"],
)
def test_unusable_claims_are_config_errors(claims: dict[str, Any], pvs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        claim_source("ns", "models", Objects(claims=claims, persistent_volumes=pvs))


def test_claim_mounts_are_read_only_when_the_volume_or_the_mount_says_so() -> None:
    container = {
        "name": "c",
        "volumeMounts": [
            {"name": "ro-claim", "mountPath": "/mnt/base-model"},
            {"name": "rw-claim", "mountPath": "/data"},
            {"name": "rw-claim", "mountPath": "/data-ro", "readOnly": True},
            {"name": "rw-claim", "mountPath": "/one", "subPath": "sub/dir"},
        ],
    }
    pod = make_pod(
        container,
        volumes=[
            {"name": "ro-claim", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
            {"name": "rw-claim", "persistentVolumeClaim": {"claimName": "models"}},
        ],
    )
    objects = Objects(claims={"models": claim()}, persistent_volumes={"pv-models": host_path_pv()})
    mounts = mount_plan(ctx_for(pod), "/sb", container, {}, "/sb/t", objects)
    assert mounts[:-1] == [
        Mount("/srv/models", "/mnt/base-model", read_only=True),
        Mount("/srv/models", "/data"),
        Mount("/srv/models", "/data-ro", read_only=True),
        Mount("/srv/models/sub/dir", "/one", create_source=True),
    ]
    image = resolve_image("busybox:1.36", VENV)
    plan = build_launch_plan(ctx_for(pod), {**container, "command": ["true"]}, image, objects, "/sb", "/sb/t")
    assert plan.mounts[0] == Mount("/srv/models", "/mnt/base-model", read_only=True)
