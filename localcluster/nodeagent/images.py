"""The node agent's image table: which local program stands in for which container image.

There is no container runtime here, so an "image" is only a name that maps to an entrypoint, a
default CMD and default environment, the way an image's config would. The table is the one in
docs/architecture.md ("Images and how the local node agent runs them").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

# The checkout this module runs from (localcluster/ is not installed in the venv).
REPO_ROOT: Final = str(Path(__file__).resolve().parents[2])
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Shell images: the host's /bin/sh and tools play busybox/alpine. Their real default CMD is a shell.
_SHELL_IMAGES = {"busybox": "sh", "alpine": "/bin/sh"}

# Project images: python modules run with the project's virtualenv interpreter.
_PYTHON_IMAGES = {
    "finetune-operator/trainer": "finetune_trainer",
    "finetune-operator/operator": "finetune_operator",
    "finetune-operator/trainer-stub": "localcluster.trainer_stub",
}


@dataclass(frozen=True)
class ImageConfig:
    """What an image's config would say: ENTRYPOINT, CMD, ENV (WORKDIR is always /)."""

    name: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    image_id: str = ""


class ImageNotFoundError(LookupError):
    """The image is not in the table: a real kubelet would fail to pull it."""


def repository(image: str) -> str:
    """The repository path of an image reference, without registry, tag or digest.

    `docker.io/library/busybox:1.36` -> `busybox`, `localhost:5000/finetune-operator/trainer:dev`
    -> `finetune-operator/trainer`.
    """
    ref = image.strip()
    ref = ref.split("@", 1)[0]
    parts = ref.split("/")
    # A tag is after the last ':' of the last path component (a registry may carry a port).
    last = parts[-1]
    if ":" in last:
        parts[-1] = last.split(":", 1)[0]
    if len(parts) > 1 and (("." in parts[0]) or (":" in parts[0]) or parts[0] == "localhost"):
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


def resolve_image(image: str, venv_bin: str) -> ImageConfig:
    """Look an image up in the table; raises ImageNotFoundError for anything else."""
    repo = repository(image)
    path = f"{venv_bin}:{HOST_PATH}"
    if repo in _SHELL_IMAGES:
        return ImageConfig(
            name=image,
            entrypoint=(),
            cmd=(_SHELL_IMAGES[repo],),
            env={"PATH": path},
            image_id=f"localcluster://{repo}",
        )
    if repo in _PYTHON_IMAGES:
        module = _PYTHON_IMAGES[repo]
        # Images built for Python set this; without it, logs would sit in stdio buffers.
        env = {"PATH": path, "PYTHONUNBUFFERED": "1"}
        if module.startswith("localcluster."):
            # Development tooling is not installed in the venv (it is no part of the distribution):
            # it runs from the checkout.
            env["PYTHONPATH"] = REPO_ROOT
        return ImageConfig(
            name=image,
            entrypoint=(f"{venv_bin}/python", "-m", module),
            cmd=(),
            env=env,
            image_id=f"localcluster://{repo}",
        )
    raise ImageNotFoundError(
        f'failed to pull and unpack image "{image}": the local node agent has no entry for '
        f'repository "{repo}" (known: {", ".join(sorted([*_SHELL_IMAGES, *_PYTHON_IMAGES]))})'
    )
