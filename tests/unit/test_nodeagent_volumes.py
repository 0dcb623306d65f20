from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from localcluster.nodeagent.podspec import ConfigError, Objects, PodContext
from localcluster.nodeagent.volumes import TokenSource, materialise, token_sources, volume_files

KUBE_API_ACCESS = {
    "name": "kube-api-access-abcde",
    "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {
                "downwardAPI": {
                    "items": [
                        {
                            "path": "namespace",
                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                        }
                    ]
                }
            },
        ],
    },
}


def ctx(volumes: list[dict[str, Any]]) -> PodContext:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"a": "1"}},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "2"}}}], "volumes": volumes},
    }
    return PodContext(pod=pod, pod_ip="127.1.0.2", host_ip="127.0.0.1", api_host="127.0.0.1", api_port=16443)


OBJECTS = Objects(
    secrets={"creds": {"user": b"u", "password": b"p"}, "absent": None},
    config_maps={"kube-root-ca.crt": {"ca.crt": b"PEM"}, "cfg": {"a.json": b"{}", "b": b"2"}},
)


def test_kube_api_access_volume() -> None:
    tokens = {TokenSource("", 3607): "jwt"}
    assert token_sources({"spec": {"volumes": [KUBE_API_ACCESS]}}) == [TokenSource("", 3607)]
    files = volume_files(ctx([KUBE_API_ACCESS]), KUBE_API_ACCESS, OBJECTS, tokens)
    assert files == {"token": (b"jwt", 420), "ca.crt": (b"PEM", 420), "namespace": (b"ns", 420)}


def test_token_audience_and_expiry_come_from_the_source() -> None:
    vol = {
        "name": "t",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "vt"}}
            ]
        },
    }
    assert token_sources({"spec": {"volumes": [vol]}}) == [TokenSource("vault", 600)]
    with pytest.raises(ConfigError):
        volume_files(ctx([vol]), vol, OBJECTS, {})


def test_secret_items_modes_and_optional() -> None:
    vol = {
        "name": "s",
        "secret": {
            "secretName": "creds",
            "defaultMode": 0o400,
            "items": [{"key": "password", "path": "pw/file", "mode": 0o440}],
        },
    }
    assert volume_files(ctx([vol]), vol, OBJECTS, {}) == {"pw/file": (b"p", 0o440)}
    whole = {"name": "s", "secret": {"secretName": "creds"}}
    assert volume_files(ctx([whole]), whole, OBJECTS, {}) == {
        "user": (b"u", 0o644),
        "password": (b"p", 0o644),
    }
    optional = {"name": "s", "secret": {"secretName": "absent", "optional": True}}
    assert volume_files(ctx([optional]), optional, OBJECTS, {}) == {}
    required = {"name": "s", "secret": {"secretName": "absent"}}
    with pytest.raises(ConfigError, match="not found"):
        volume_files(ctx([required]), required, OBJECTS, {})
    bad_key = {"name": "s", "secret": {"secretName": "creds", "items": [{"key": "nope", "path": "x"}]}}
    with pytest.raises(ConfigError, match="does not exist"):
        volume_files(ctx([bad_key]), bad_key, OBJECTS, {})


def test_config_map_and_downward_api_volumes() -> None:
    cm = {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "a.json", "path": "config.json"}]}}
    assert volume_files(ctx([cm]), cm, OBJECTS, {}) == {"config.json": (b"{}", 0o644)}
    dapi = {
        "name": "d",
        "downwardAPI": {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"}},
            ]
        },
    }
    assert volume_files(ctx([dapi]), dapi, OBJECTS, {}) == {"labels": (b'a="1"', 0o644), "cpu": (b"2", 0o644)}


def test_item_paths_may_not_escape() -> None:
    vol = {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "b", "path": "../../etc/passwd"}]}}
    with pytest.raises(ConfigError, match="invalid volume item path"):
        volume_files(ctx([vol]), vol, OBJECTS, {})


def test_empty_dir_and_host_path_have_no_files() -> None:
    for vol in ({"name": "e", "emptyDir": {}}, {"name": "h", "hostPath": {"path": "/x"}}):
        assert volume_files(ctx([vol]), vol, OBJECTS, {}) is None


def test_materialise_writes_files_with_modes(tmp_path: Path) -> None:
    host = tmp_path / "host" / "made"
    vols = [
        {"name": "s", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "e", "emptyDir": {}},
        {"name": "h", "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}},
    ]
    materialise(ctx(vols), str(tmp_path / "sb"), OBJECTS, {})
    pw = tmp_path / "sb" / "volumes" / "s" / "password"
    assert pw.read_bytes() == b"p"
    assert stat.S_IMODE(pw.stat().st_mode) == 0o400
    assert (tmp_path / "sb" / "volumes" / "e").is_dir()
    assert host.is_dir()
    missing = [{"name": "h", "hostPath": {"path": str(tmp_path / "nope"), "type": "Directory"}}]
    with pytest.raises(ConfigError, match="not a directory"):
        materialise(ctx(missing), str(tmp_path / "sb2"), OBJECTS, {})


def claim_objects(pv_spec: dict[str, Any], phase: str = "Bound") -> Objects:
    pvc = {
        "metadata": {"name": "models", "namespace": "ns", "uid": "pvc-uid"},
        "spec": {"volumeName": "pv-1"},
        "status": {"phase": phase},
    }
    pv = {"metadata": {"name": "pv-1"}, "spec": {"claimRef": {"uid": "pvc-uid"}, **pv_spec}}
    return Objects(claims={"models": pvc}, persistent_volumes={"pv-1": pv})


def test_materialise_checks_the_pv_behind_a_claim_and_copies_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "config.json").write_text("{}")
    vols = [{"name": "m", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}]
    objects = claim_objects({"hostPath": {"path": str(models), "type": "Directory"}})
    assert volume_files(ctx(vols), vols[0], objects, {}) is None
    materialise(ctx(vols), str(tmp_path / "sb"), objects, {})
    # Bound in place: no directory of its own under the sandbox.
    assert not (tmp_path / "sb" / "volumes" / "m").exists()
    assert sorted(p.name for p in models.iterdir()) == ["config.json"]

    created = tmp_path / "made-by-pv"
    materialise(
        ctx(vols),
        str(tmp_path / "sb"),
        claim_objects({"hostPath": {"path": str(created), "type": "DirectoryOrCreate"}}),
        {},
    )
    assert created.is_dir()
    materialise(ctx(vols), str(tmp_path / "sb"), claim_objects({"local": {"path": str(models)}}), {})


@pytest.mark.parametrize(
    ("objects", "match"),
    [
        (Objects(), 'persistentvolumeclaim "models" not found'),
        (claim_objects({"hostPath": {"path": "/x"}}, phase="Pending"), "not bound"),
        (
            claim_objects({"hostPath": {"path": "/nonexistent/models", "type": "Directory"}}),
            "not a directory",
        ),
        (claim_objects({"local": {"path": "/nonexistent/models"}}), "does not exist on this node"),
    ],
    ids=["missing", "unbound", "hostpath-type", "local-missing"],
)
def test_materialise_refuses_claims_it_cannot_mount(tmp_path: Path, objects: Objects, match: str) -> None:
    vols = [{"name": "m", "persistentVolumeClaim": {"claimName": "models"}}]
    with pytest.raises(ConfigError, match=match):
        materialise(ctx(vols), str(tmp_path / "sb"), objects, {})
