from __future__ import annotations

import pytest

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


@pytest.mark.parametrize(
    ("image", "module"),
    [
        ("finetune-operator/trainer:dev", "finetune_trainer"),
        ("finetune-operator/operator:dev", "finetune_operator"),
        ("finetune-operator/trainer-stub:x", "localcluster.trainer_stub"),
    ],
)
def test_project_images_run_their_module_with_the_venv_python(image: str, module: str) -> None:
    img = resolve_image(image, VENV)
    assert img.entrypoint == (f"{VENV}/python", "-m", module)
    assert img.cmd == ()
    assert img.env["PYTHONUNBUFFERED"] == "1"


def test_unknown_images_are_not_found() -> None:
    with pytest.raises(ImageNotFoundError, match="no entry for repository"):
        resolve_image("nginx:1.27", VENV)
