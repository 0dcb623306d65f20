"""The images `make images` built from the Dockerfiles, as shipped and as the node agent runs them.

A pod of a project image runs inside the image's own root filesystem (not the host's), with the
image's Entrypoint, Cmd, Env, WorkingDir and User, and honours runAsUser and readOnlyRootFilesystem.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from localcluster import imagestore
from tests.integration.test_node_agent import apply, get_pod, pod, wait_phase
from tests.support import images
from tests.support.kube import kubectl

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def stored(ref: str) -> imagestore.StoredImage:
    image = imagestore.lookup(ref)
    assert image is not None, f"{ref} is not in the image store: run `make images`"
    return image


def logs(namespace: str, name: str) -> str:
    return kubectl("logs", name, "-n", namespace).stdout


@pytest.mark.parametrize("ref", [images.OPERATOR, images.TRAINER, images.STUB])
def test_each_image_is_archived_with_its_package_list(ref: str) -> None:
    image = stored(ref)
    meta = json.loads((image.directory / imagestore.IMAGE_FILE).read_text())
    assert meta["ref"] == ref
    archive = image.directory / "image.oci.tar"
    assert archive.stat().st_size > 1_000_000
    freeze = (image.directory / "pip-freeze.txt").read_text().lower()
    assert "pydantic==2.14.3" in freeze
    # non-root, and nothing in the image may run as root by default
    assert image.user == "65532:65532"
    name = ref.split("/")[1].split(":", maxsplit=1)[0]
    link = REPO / "dist" / f"finetune-operator-{name}-{images.VERSION}.oci.tar"
    assert link.resolve() == archive.resolve()


def test_operator_image_holds_the_operator_and_nothing_else() -> None:
    image = stored(images.OPERATOR)
    root = image.rootfs
    assert (root / "opt/finetune/finetune_operator/handlers.py").is_file()
    assert (root / "opt/finetune/finetune_contract/outcomes.py").is_file()
    assert not list(root.glob("opt/**/finetune_trainer"))
    assert not list(root.glob("opt/**/localcluster"))
    # no installer or compiler at run time
    assert not list(root.glob("opt/venv/lib/python*/site-packages/pip"))
    assert not list(root.glob("usr/lib/python3*/site-packages/pip")) + list(
        root.glob("usr/local/lib/python3*/site-packages/pip")
    )
    assert not (root / "usr/bin/gcc").exists()
    freeze = (image.directory / "pip-freeze.txt").read_text()
    assert "kopf==1.45.2" in freeze
    assert "torch" not in freeze


def test_a_pod_runs_in_the_images_own_root_as_its_user(namespace: str) -> None:
    script = textwrap.dedent(
        """
        import os, pkgutil, importlib, sys
        import finetune_operator
        names = [m.name for m in pkgutil.walk_packages(finetune_operator.__path__, "finetune_operator.")]
        for name in names:
            importlib.import_module(name)
        print("imported", len(names))
        print("python", sys.executable)
        print("uid", os.getuid(), os.getgid())
        import getpass
        print("user", getpass.getuser())
        print("venv", os.path.isdir("/opt/venv"))
        print("checkout", os.path.exists(CHECKOUT))
        print("cwd", os.getcwd())
        try:
            open("/written-by-the-pod", "w").write("x")
            print("root writable")
        except OSError as exc:
            print("root", exc.strerror)
        try:
            import finetune_trainer
            print("trainer importable")
        except ImportError:
            print("trainer absent")
        """
    ).replace("CHECKOUT", repr(str(REPO)))
    c = {
        "name": "main",
        "image": images.OPERATOR,
        "command": ["python", "-c", script],
        "securityContext": RESTRICTED,
    }
    apply(namespace, pod("own-root", [c]))
    p = wait_phase(namespace, "own-root", "Succeeded", "Failed", timeout=90)
    out = logs(namespace, "own-root")
    assert p["status"]["phase"] == "Succeeded", out
    assert "python /opt/venv/bin/python\n" in out
    assert "uid 65532 65532\n" in out
    assert "user finetune\n" in out  # libraries (Kopf) look the uid up in the password database
    assert "venv True\n" in out
    assert "checkout False\n" in out  # the host's tree is not there
    assert "cwd /tmp\n" in out  # the image's WORKDIR
    assert "root Read-only file system\n" in out
    assert "trainer absent\n" in out
    assert int(out.split("imported ")[1].split()[0]) >= 15


def test_trainer_image_runs_its_entrypoint_as_65532_on_a_read_only_root(namespace: str) -> None:
    c = {"name": "trainer", "image": images.TRAINER, "args": ["--help"], "securityContext": RESTRICTED}
    apply(namespace, pod("trainer-help", [c]))
    p = wait_phase(namespace, "trainer-help", "Succeeded", "Failed", timeout=120)
    out = logs(namespace, "trainer-help")
    assert p["status"]["phase"] == "Succeeded", out
    assert "usage: finetune_trainer" in out
    probe = {
        "name": "probe",
        "image": images.TRAINER,
        "command": [
            "python",
            "-c",
            "import os, torch, peft; print(os.getuid(), os.environ['HOME'], torch.__version__)",
        ],
        "securityContext": RESTRICTED,
        # As the operator runs it: the only writable path is the scratch volume.
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    apply(namespace, pod("trainer-probe", [probe], volumes=[{"name": "scratch", "emptyDir": {}}]))
    p = wait_phase(namespace, "trainer-probe", "Succeeded", "Failed", timeout=180)
    out = logs(namespace, "trainer-probe")
    assert p["status"]["phase"] == "Succeeded", out
    assert out.startswith("65532 /scratch 2.15.0"), out


def test_run_as_user_and_an_unbuilt_image(namespace: str) -> None:
    as_other: dict[str, Any] = {
        "name": "main",
        "image": images.STUB,
        "command": ["python", "-c", "import os; print(os.getuid(), os.getgid(), sorted(os.getgroups()))"],
        "securityContext": {**RESTRICTED, "runAsUser": 1000, "runAsGroup": 3000},
    }
    apply(namespace, pod("as-1000", [as_other], securityContext={"fsGroup": 2000}))
    p = wait_phase(namespace, "as-1000", "Succeeded", "Failed", timeout=90)
    assert p["status"]["phase"] == "Succeeded", logs(namespace, "as-1000")
    assert logs(namespace, "as-1000").strip() == "1000 3000 [2000]"
    missing = {
        "name": "main",
        "image": f"finetune-operator/operator:{images.VERSION}-never-built",
        "securityContext": RESTRICTED,
    }
    apply(namespace, pod("never-built", [missing]))

    def pull_failed() -> dict[str, Any] | None:
        statuses = get_pod(namespace, "never-built").get("status", {}).get("containerStatuses") or []
        waiting = (statuses[0].get("state") or {}).get("waiting") or {} if statuses else {}
        return waiting if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") else None

    from tests.support.kube import wait_for

    waiting = wait_for(pull_failed, 30, "a pull failure")
    assert "make images" in waiting.get("message", "") or waiting["reason"] == "ImagePullBackOff"
