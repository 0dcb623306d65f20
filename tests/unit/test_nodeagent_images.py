from __future__ import annotations

import json
from pathlib import Path

import pytest

from localcluster import imagestore
from localcluster.nodeagent.images import ImageNotFoundError, repository, resolve_image

VENV = "/repo/.venv/bin"


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("busybox", "busybox"),
        ("busybox:1.36", "busybox"),
        ("docker.io/library/busybox:latest", "busybox"),
        ("library/alpine:3.20", "alpine"),
        ("busybox@sha256:abc", "busybox"),
        ("finetune-operator/trainer:dev", "finetune-operator/trainer"),
        ("localhost:5000/finetune-operator/operator:0.1.0", "finetune-operator/operator"),
        ("ghcr.io/finetune-operator/trainer-stub", "finetune-operator/trainer-stub"),
        ("someorg/app:1", "someorg/app"),
    ],
)
def test_repository_strips_registry_tag_and_digest(image: str, repo: str) -> None:
    assert repository(image) == repo


def test_shell_images_default_to_a_shell_with_the_venv_first_on_path() -> None:
    img = resolve_image("busybox:1.36", VENV)
    assert img.entrypoint == ()
    assert img.cmd == ("sh",)
    assert img.env["PATH"].startswith(f"{VENV}:")
    assert resolve_image("alpine", VENV).cmd == ("/bin/sh",)


def store_with(tmp_path: Path, ref: str, config: dict[str, object], *, unpacked: bool = True) -> Path:
    """An image store holding one build of `ref` (what `make images` writes)."""
    store = tmp_path / "images"
    build = store / "operator-0123456789abcdef"
    if unpacked:
        (build / "bundle" / "rootfs" / "etc").mkdir(parents=True)
    build.mkdir(parents=True, exist_ok=True)
    (build / imagestore.IMAGE_FILE).write_text(
        json.dumps({"ref": ref, "digest": "sha256:ab12", "config": config})
    )
    with imagestore.locked(store):
        imagestore.tag(ref, build, store)
    return store


def test_project_images_come_from_the_image_store(tmp_path: Path) -> None:
    config: dict[str, object] = {
        "Entrypoint": ["python", "-m", "finetune_operator"],
        "Env": ["PATH=/opt/venv/bin:/usr/bin", "PYTHONPATH=/opt/finetune"],
        "WorkingDir": "/tmp",
        "User": "65532:65532",
    }
    store = store_with(tmp_path, "finetune-operator/operator:0.1.0", config)
    # any registry prefix names the same image, as a node's image cache would see it
    img = resolve_image("registry.example.com/finetune-operator/operator:0.1.0", VENV, store)
    assert img.entrypoint == ("python", "-m", "finetune_operator")
    assert img.cmd == ()
    assert img.env == {"PATH": "/opt/venv/bin:/usr/bin", "PYTHONPATH": "/opt/finetune"}
    assert (img.working_dir, img.user) == ("/tmp", "65532:65532")
    assert img.rootfs == str(store / "operator-0123456789abcdef" / "bundle" / "rootfs")
    assert img.image_id == "finetune-operator/operator:0.1.0@sha256:ab12"


def test_an_image_that_was_not_built_is_not_found(tmp_path: Path) -> None:
    store = store_with(tmp_path, "finetune-operator/operator:0.1.0", {})
    with pytest.raises(ImageNotFoundError, match="make images"):
        resolve_image("finetune-operator/operator:0.2.0", VENV, store)
    with pytest.raises(ImageNotFoundError, match="make images"):
        resolve_image("finetune-operator/trainer:0.1.0", VENV, store)
    half = store_with(tmp_path / "half", "finetune-operator/trainer:0.1.0", {}, unpacked=False)
    with pytest.raises(ImageNotFoundError):
        resolve_image("finetune-operator/trainer:0.1.0", VENV, half)


def test_unknown_images_are_not_found(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError, match="not found in the image store"):
        resolve_image("nginx:1.27", VENV, tmp_path)


def test_superseded_builds_are_pruned_but_not_other_images(tmp_path: Path) -> None:
    store = tmp_path / "images"
    old, new, stub = (
        store / n
        for n in ("trainer-aaaaaaaaaaaaaaaa", "trainer-bbbbbbbbbbbbbbbb", "trainer-stub-cccccccccccccccc")
    )
    for build in (old, new, stub):
        build.mkdir(parents=True)
    with imagestore.locked(store):
        imagestore.tag("finetune-operator/trainer:0.1.0", new, store)
        imagestore.tag("finetune-operator/trainer-stub:0.1.0", stub, store)
        assert imagestore.prune("trainer", new, store) == [old]
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == [
        "refs.json",
        new.name,
        stub.name,
    ]
