"""The node agent's images: the project's images from the machine's image store, shell images mapped.

Project images (`finetune-operator/operator`, `/trainer`, `/trainer-stub`) are the ones `make images`
built from the Dockerfiles and unpacked into the image store (localcluster.imagestore): a pod runs
inside the image's own root filesystem with its config's Entrypoint, Cmd, Env, WorkingDir and User.
An image that was not built is a pull failure (ErrImagePull, then ImagePullBackOff), as on a cluster.
`busybox` and `alpine` stay mapped to the host's shell and tools (tests use them for plain pods).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from localcluster import imagestore

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Shell images: the host's /bin/sh and tools play busybox/alpine. Their real default CMD is a shell.
_SHELL_IMAGES = {"busybox": "sh", "alpine": "/bin/sh"}


@dataclass(frozen=True)
class ImageConfig:
    """What an image's config says: ENTRYPOINT, CMD, ENV, WORKDIR, USER; and where its root is."""

    name: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    image_id: str = ""
    # The unpacked root filesystem; None: the host's tree (shell images).
    rootfs: str | None = None
    working_dir: str = ""
    user: str = ""


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


def resolve_image(image: str, venv_bin: str, store: Path | None = None) -> ImageConfig:
    """The image's config; ImageNotFoundError for an image that is neither built nor mapped."""
    repo = repository(image)
    if repo in _SHELL_IMAGES:
        return ImageConfig(
            name=image,
            entrypoint=(),
            cmd=(_SHELL_IMAGES[repo],),
            env={"PATH": f"{venv_bin}:{HOST_PATH}"},
            image_id=f"localcluster://{repo}",
        )
    stored = imagestore.lookup(image, store or imagestore.STORE)
    if stored is not None:
        return ImageConfig(
            name=image,
            entrypoint=stored.entrypoint,
            cmd=stored.cmd,
            env=stored.env,
            image_id=f"{stored.ref}@{stored.digest}" if stored.digest else stored.ref,
            rootfs=str(stored.rootfs),
            working_dir=stored.working_dir,
            user=stored.user,
        )
    hint = " (build the project's images with `make images`)" if repo.startswith("finetune-operator/") else ""
    raise ImageNotFoundError(f'failed to pull and unpack image "{image}": not found in the image store{hint}')
