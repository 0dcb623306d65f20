"""The machine's store of built project images: what `make images` writes and the node agent runs.

    <FTO_CACHE>/images/
        <name>-<key>/               one build, keyed by the hash of everything that went into it
            image.oci.tar           the OCI archive a platform team copies to its registry
            pip-freeze.txt          the Python packages installed in it
            bundle/rootfs/          the unpacked root filesystem (umoci), what a pod runs in
            image.json              reference, image config (Entrypoint, Cmd, Env, WorkingDir, User), sizes
        refs.json                   image reference -> build directory, like a registry's tags

The store is per machine, like a node's image cache: every local environment on it sees the same
images, and a reference points at the last build of its tag.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster.paths import CACHE_DIR

STORE = CACHE_DIR / "images"
REFS = "refs.json"
IMAGE_FILE = "image.json"


@dataclass(frozen=True)
class StoredImage:
    ref: str
    directory: Path
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    user: str = ""
    digest: str = ""

    @property
    def rootfs(self) -> Path:
        return self.directory / "bundle" / "rootfs"


def normalize(ref: str) -> str:
    """`docker.io/finetune-operator/trainer:0.1.0` and `finetune-operator/trainer:0.1.0` are one image;
    a reference without a tag means `latest`."""
    ref = ref.strip().split("@", 1)[0]
    parts = ref.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if ":" not in parts[-1]:
        parts[-1] += ":latest"
    return "/".join(parts)


def _read_refs(store: Path) -> dict[str, str]:
    try:
        data = json.loads((store / REFS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


@contextmanager
def locked(store: Path = STORE) -> Iterator[None]:
    """One writer at a time (two `make images` in parallel, or a build beside a test run)."""
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def tag(ref: str, directory: Path, store: Path = STORE) -> None:
    """Point a reference at a build (call under `locked`)."""
    refs = _read_refs(store)
    refs[normalize(ref)] = directory.name
    tmp = store / f".{REFS}.tmp"
    tmp.write_text(json.dumps(refs, indent=2, sort_keys=True))
    os.replace(tmp, store / REFS)


def lookup(ref: str, store: Path = STORE) -> StoredImage | None:
    """The build a reference points at, if it exists and is complete."""
    name = _read_refs(store).get(normalize(ref))
    if name is None:
        return None
    directory = store / name
    try:
        meta: dict[str, Any] = json.loads((directory / IMAGE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not (directory / "bundle" / "rootfs").is_dir():
        return None
    config = meta.get("config") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    return StoredImage(
        ref=normalize(ref),
        directory=directory,
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        env=env,
        working_dir=str(config.get("WorkingDir") or ""),
        user=str(config.get("User") or ""),
        digest=str(meta.get("digest") or ""),
    )


def prune(name: str, keep: Path, store: Path = STORE) -> list[Path]:
    """Remove the other builds of image `name` that no reference points at (call under `locked`):
    a trainer build is gigabytes, and a tag moves on with every change of its sources."""
    referenced = set(_read_refs(store).values())
    removed = []
    for build in store.glob(f"{name}-*"):
        rest = build.name[len(name) + 1 :]
        # "<name>-<16 hex>" only: trainer-<key> must not take trainer-stub-<key> along.
        if build == keep or build.name in referenced or len(rest) != 16 or not rest.isalnum():
            continue
        shutil.rmtree(build, ignore_errors=True)
        removed.append(build)
    return removed
