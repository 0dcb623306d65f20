"""`python -m localcluster.imagebuild` (`make images`): build the project's images from their Dockerfiles.

Daemonless, with buildah (`--isolation chroot`, the vfs storage driver: what works as root on this kind
of machine, where no container runtime runs). No registry can be reached here, so the Dockerfiles'
default bases (`python:*-slim`, `nvidia/cuda:*`) cannot be pulled: each image is built on a stand-in
base made from Debian packages with mmdebstrap (Debian 12 with python3, python3-venv,
python-is-python3 and ca-certificates), passed with `--build-arg`; every other line of each
Dockerfile runs unchanged. Builds reach the package index with the host's pip configuration and CA
certificates mounted read-only.

Each image is cached in the image store (localcluster.imagestore) under the hash of what went into it
(Dockerfile, base recipe, pyproject.toml, the sources it copies), so a second run with nothing changed
takes seconds. Per image the store keeps the OCI archive (`image.oci.tar`, for `skopeo copy
oci-archive:...`), `pip-freeze.txt` and the unpacked root filesystem the node agent runs pods in;
`dist/` in the checkout gets links to the archives and package lists.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from localcluster import imagestore
from localcluster.paths import REPO_ROOT

BASE_SUITE: Final = "bookworm"
BASE_PACKAGES: Final = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_RECIPE: Final = f"mmdebstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {BASE_SUITE}"
# buildah's storage and its temporary files (a commit writes the whole new layer there first) live in
# the cache beside the image store, not under /var: one filesystem to size and to clean, and a small
# /var/tmp cannot fail a build that the cache's disk has room for.
BUILDAH_DIR: Final = imagestore.STORE.parent / "buildah"
STORAGE: Final = (
    "--storage-driver",
    "vfs",
    "--root",
    str(BUILDAH_DIR / "storage"),
    "--runroot",
    str(BUILDAH_DIR / "run"),
)
# What a build may read of the host: the package index configuration and its CA certificates.
HOST_MOUNTS: Final = ("/etc/pip.conf", "/etc/ssl/certs")
# What the store holds per image (part of the key: a store written another way is rebuilt).
STORE_FORMAT: Final = "oci-archive with uncompressed layers, rootfs by umoci raw unpack"
DIST: Final = REPO_ROOT / "dist"


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    base_arg: str  # the Dockerfile ARG that names its base image
    sources: tuple[str, ...]  # what it COPYs from the checkout

    def ref(self, version: str) -> str:
        return f"finetune-operator/{self.name}:{version}"


IMAGES: Final = (
    Image(
        "operator",
        "operator/Dockerfile",
        "PYTHON_IMAGE",
        ("contract/finetune_contract", "operator/finetune_operator"),
    ),
    Image(
        "trainer",
        "trainer_image/Dockerfile",
        "CUDA_BASE",
        ("contract/finetune_contract", "trainer_image/finetune_trainer"),
    ),
    Image(
        "trainer-stub",
        "localcluster/trainer_stub.Dockerfile",
        "PYTHON_IMAGE",
        ("contract/finetune_contract", "trainer_image/finetune_trainer", "localcluster/trainer_stub.py"),
    ),
)


def project_version() -> str:
    return str(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"])


def _files(rel: str) -> list[Path]:
    path = REPO_ROOT / rel
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def build_key(image: Image, base_key: str) -> str:
    """Everything that decides the image's content: a change to any of it is a new build."""
    digest = hashlib.sha256()
    for part in (image.name, base_key, BASE_RECIPE, STORE_FORMAT):
        digest.update(part.encode() + b"\0")
    for path in [
        REPO_ROOT / image.dockerfile,
        REPO_ROOT / "pyproject.toml",
        *(f for s in image.sources for f in _files(s)),
    ]:
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _buildah_env() -> dict[str, str]:
    tmp = BUILDAH_DIR / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp)}


def _run(cmd: list[str], log: Path, what: str) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=_buildah_env())
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{what} failed (exit {proc.returncode}); the end of {log}:\n" + "\n".join(tail))


def _has_image(ref: str) -> bool:
    return (
        subprocess.run(
            ["buildah", *STORAGE, "inspect", "--type", "image", ref], capture_output=True, env=_buildah_env()
        ).returncode
        == 0
    )


def stand_in_base(log: Path) -> tuple[str, str]:
    """(reference in buildah's storage, key) of the Debian stand-in base, built once per recipe."""
    key = hashlib.sha256(BASE_RECIPE.encode()).hexdigest()[:16]
    ref = f"localhost/finetune-operator/base:{key}"
    if _has_image(ref):
        return ref, key
    tarball = imagestore.STORE / f"base-{key}.tar"
    if not tarball.exists():
        print(f"building the stand-in base ({BASE_RECIPE})", flush=True)
        tmp = tarball.with_name(f".{tarball.stem}.part.tar")  # the .tar suffix picks mmdebstrap's format
        _run([*BASE_RECIPE.split(), str(tmp)], log, "mmdebstrap")
        tmp.rename(tarball)
    ctr = subprocess.run(
        ["buildah", *STORAGE, "from", "scratch"],
        capture_output=True,
        text=True,
        check=True,
        env=_buildah_env(),
    ).stdout.strip()
    try:
        _run(["buildah", *STORAGE, "add", ctr, str(tarball), "/"], log, "buildah add")
        path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        _run(["buildah", *STORAGE, "config", "--env", path, "--cmd", "/bin/sh", ctr], log, "buildah config")
        _run(["buildah", *STORAGE, "commit", "-q", ctr, ref], log, "buildah commit")
    finally:
        subprocess.run(["buildah", *STORAGE, "rm", ctr], capture_output=True, env=_buildah_env())
    return ref, key


def _image_config(layout: Path) -> tuple[dict[str, object], str, int]:
    """(the image config, the manifest digest, layers' size) of the one image in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    manifest_desc = index["manifests"][0]
    algo, hexd = manifest_desc["digest"].split(":", 1)
    manifest = json.loads((layout / "blobs" / algo / hexd).read_text())
    algo, hexd = manifest["config"]["digest"].split(":", 1)
    config = json.loads((layout / "blobs" / algo / hexd).read_text())
    size = sum(int(layer["size"]) for layer in manifest["layers"])
    return dict(config.get("config") or {}), str(manifest_desc["digest"]), size


def _pip_freeze(rootfs: Path) -> str:
    """The Python distributions installed in the image, read with the image's own interpreter."""
    code = (
        "import importlib.metadata as m; "
        "print('\\n'.join(sorted({f'{d.metadata[\"Name\"]}=={d.version}' for d in m.distributions()}, key=str.lower)))"
    )
    for python in ("/opt/venv/bin/python", "/usr/bin/python3"):
        # lexists: the venv's python is a symlink that resolves only inside the image
        if os.path.lexists(rootfs / python.lstrip("/")):
            out = subprocess.run(["chroot", str(rootfs), python, "-c", code], capture_output=True, text=True)
            if out.returncode == 0:
                return out.stdout
    return ""


def build(image: Image, version: str, base_ref: str, base_key: str, log: Path) -> Path:
    """Build one image (or find it cached); returns its store directory."""
    key = build_key(image, base_key)
    directory = imagestore.STORE / f"{image.name}-{key}"
    ref = image.ref(version)
    if (directory / imagestore.IMAGE_FILE).exists():
        with imagestore.locked():
            imagestore.tag(ref, directory)
            imagestore.prune(image.name, directory)
        print(f"{ref}: cached ({directory.name})", flush=True)
        return directory
    started = time.monotonic()
    print(f"{ref}: building from {image.dockerfile}", flush=True)
    work = imagestore.STORE / f".{image.name}-{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # --force-rm: a failed build's container is a full copy of the image so far (vfs), not kept
    # (buildah takes it only with --no-cache, which changes nothing here: there are no cached layers).
    cmd = ["buildah", *STORAGE, "build", "--isolation", "chroot", "--no-cache", "--force-rm"]
    iidfile = work / "image-id"
    cmd += ["-f", image.dockerfile, "-t", ref, "--iidfile", str(iidfile)]
    cmd += ["--build-arg", f"{image.base_arg}={base_ref}"]
    for path in HOST_MOUNTS:
        if os.path.exists(path):
            cmd += ["-v", f"{path}:{path}:ro"]
    _run([*cmd, "."], log, f"building {ref}")
    layout = work / "layout"
    image_id = iidfile.read_text().strip().removeprefix("sha256:")
    iidfile.unlink()
    # Layers are exported uncompressed: gzip of the trainer's 6.4 GB would cost minutes of CPU on every
    # cold build and more to undo in the unpack; a registry push compresses (skopeo --dest-compress).
    # skopeo, not `buildah push`: buildah 1.28 gzips layers for an `oci:` destination even with
    # --disable-compression (containers/image compresses unless the destination is told it may take
    # uncompressed layers, and only skopeo says so).
    _run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-oci-accept-uncompressed-layers",
            f"containers-storage:[vfs@{BUILDAH_DIR / 'storage'}+{BUILDAH_DIR / 'run'}]{image_id}",
            f"oci:{layout}:{version}",
        ],
        log,
        f"exporting {ref}",
    )
    # The layout holds the image now; vfs keeps a full copy of every image, and the trainer's is
    # gigabytes: freed before the unpack and the archive add two more copies.
    subprocess.run(["buildah", *STORAGE, "rmi", ref], capture_output=True, env=_buildah_env())
    # `raw unpack`: the root filesystem only. A pod needs nothing else, and `umoci unpack` would also
    # hash every file into an mtree manifest (for `umoci repack`, never used here): measured on the
    # trainer image, a fifth of the unpack's CPU.
    rootfs = work / "bundle" / "rootfs"
    rootfs.parent.mkdir()
    _run(["umoci", "raw", "unpack", "--image", f"{layout}:{version}", str(rootfs)], log, "umoci unpack")
    config, digest, size = _image_config(layout)
    # --remove-files: each blob leaves the layout as it enters the archive, so the trainer's gigabytes
    # are not on disk twice more.
    _run(
        ["tar", "--remove-files", "-cf", str(work / "image.oci.tar"), "-C", str(layout), "."],
        log,
        "archiving",
    )
    shutil.rmtree(layout, ignore_errors=True)
    (work / "pip-freeze.txt").write_text(_pip_freeze(rootfs))
    unpacked = sum(p.lstat().st_size for p in rootfs.rglob("*") if not p.is_symlink())
    meta = {
        "ref": ref,
        "key": key,
        "digest": digest,
        "config": config,
        "archiveBytes": size,
        "unpackedBytes": unpacked,
        "base": base_ref,
        "buildSeconds": round(time.monotonic() - started, 1),
    }
    (work / imagestore.IMAGE_FILE).write_text(json.dumps(meta, indent=2))
    with imagestore.locked():
        shutil.rmtree(directory, ignore_errors=True)
        work.rename(directory)
        imagestore.tag(ref, directory)
        imagestore.prune(image.name, directory)
    print(
        f"{ref}: built in {meta['buildSeconds']}s, {size / 1e6:.0f} MB archive, {unpacked / 1e6:.0f} MB unpacked",
        flush=True,
    )
    return directory


def link_dist(directory: Path, image: Image, version: str) -> None:
    DIST.mkdir(exist_ok=True)
    for name, suffix in (("image.oci.tar", ".oci.tar"), ("pip-freeze.txt", ".pip-freeze.txt")):
        link = DIST / f"finetune-operator-{image.name}-{version}{suffix}"
        link.unlink(missing_ok=True)
        link.symlink_to(directory / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.imagebuild", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help="images to build (default: all)", choices=[[]] + [i.name for i in IMAGES]
    )
    args = parser.parse_args(argv)
    for tool in ("buildah", "skopeo", "umoci", "mmdebstrap"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: `make images` installs it (Debian package {tool})", file=sys.stderr)
            return 1
    version = project_version()
    imagestore.STORE.mkdir(parents=True, exist_ok=True)
    BUILDAH_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILDAH_DIR / ".build.lock", "w") as lock:
        # One `make images` at a time on a machine: it owns buildah's storage while it runs.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_all(set(args.names) or {i.name for i in IMAGES}, version)


def _discard_leftovers() -> None:
    """What an interrupted build left: its working container (a full copy of the image so far) and
    the commit's half-written layer. Nothing else uses this storage, and no build is running."""
    subprocess.run(["buildah", *STORAGE, "rm", "--all"], capture_output=True, env=_buildah_env())
    # Images left untagged (a build interrupted between its commit and the export): full copies too.
    subprocess.run(["buildah", *STORAGE, "rmi", "--prune"], capture_output=True, env=_buildah_env())
    shutil.rmtree(BUILDAH_DIR / "tmp", ignore_errors=True)
    for stale in imagestore.STORE.glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _build_all(wanted: set[str], version: str) -> int:
    _discard_leftovers()
    log = imagestore.STORE / "build.log"
    base_ref, base_key = stand_in_base(log)

    def build_one(image: Image) -> None:
        # One log per image: the builds run side by side.
        directory = build(image, version, base_ref, base_key, log.with_name(f"build-{image.name}.log"))
        link_dist(directory, image, version)

    # Side by side: a build waits on the package index, on disk and on one core at a time, so the small
    # images finish while the trainer's large one is still installing.
    chosen = [i for i in IMAGES if i.name in wanted]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen) or 1) as pool:
        for future in [pool.submit(build_one, image) for image in chosen]:
            future.result()
    return 0


if __name__ == "__main__":
    sys.exit(main())
