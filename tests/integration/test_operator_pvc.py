"""A FineTuneJob whose base model is on a PersistentVolumeClaim, against the real API server, scheduler,
PV controller, Job controller and node agent, with the stub trainer (which checks the model where the
pod has it mounted, with the trainer's own check)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from finetune_contract.uris import PVC_MOUNT_PATH
from safetensors.numpy import save_file

from tests.integration.test_operator_lifecycle import crd, env, make_job, operator  # noqa: F401  (fixtures)
from tests.support import operator as ops
from tests.support.kube import kubectl, kubectl_json, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def models_claim(env: dict[str, str], tmp_path: Path) -> Iterator[Path]:  # noqa: F811
    """PVC `models` in the test namespace, bound by the PV controller to a hostPath PV holding a small
    Hugging Face layout at tiny/; yields the PV's directory."""
    ns = env["namespace"]
    root = tmp_path / "models"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    save_file({"w": np.zeros((4, 4), dtype=np.float32)}, str(root / "tiny" / "model.safetensors"))
    # The trainer runs as uid 1000 (from its image): the model must be readable to it, as on any cluster
    # (safetensors writes its files owner-only).
    for path in (root, root / "tiny", *(root / "tiny").iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    pv_name = f"{ns}-models"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            # Reserved for this test's claim, so no other claim can take it.
            "claimRef": {"namespace": ns, "name": "models"},
            "hostPath": {"path": str(root), "type": "Directory"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": ns},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "resources": {"requests": {"storage": "1Mi"}},
        },
    }
    ops.apply(pv)
    try:
        ops.apply(pvc)
        wait_for(
            lambda: kubectl_json("get", "pvc", "models", "-n", ns)["status"].get("phase") == "Bound",
            30,
            "the PV controller to bind models",
        )
        yield root
    finally:
        kubectl("delete", "pvc", "models", "-n", ns, "--wait=false", check=False)
        kubectl("delete", "pv", pv_name, "--wait=false", check=False)


def base_model_mounts(pod: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    mounts = [
        m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] in {v["name"] for v in volumes}
    ]
    return volumes, mounts


def test_pvc_base_model_trains_with_the_claim_mounted_read_only(
    env: dict[str, str],  # noqa: F811
    s3_env: dict[str, str],
    operator: ops.Operator,  # noqa: F811
    models_claim: Path,
) -> None:
    ns = env["namespace"]
    job = make_job(
        env,
        s3_env,
        "pvcjob",
        ops.chat_rows(12),
        {"stepSeconds": 0.2},
        extra={"baseModel": {"uri": "pvc://models/tiny"}},
    )
    ops.apply(job)
    obj = ops.wait_phase("pvcjob", ns, {"Succeeded", "Failed"}, 120, operator)
    st = obj["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert {c["type"]: c["status"] for c in st["conditions"]}["Validated"] == "True"

    config = kubectl_json("get", "configmap", "pvcjob-config", "-n", ns)["data"]["config.json"]
    assert json.loads(config)["baseModel"] == {"uri": "pvc://models/tiny", "mountPath": PVC_MOUNT_PATH}
    pods = ops.children(ns, "pods", "pvcjob")
    components = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods)
    assert components == ["trainer", "validation"]
    for pod in pods:
        assert pod["status"]["phase"] == "Succeeded"
        volumes, mounts = base_model_mounts(pod)
        assert [v["persistentVolumeClaim"] for v in volumes] == [{"claimName": "models", "readOnly": True}]
        assert [(m["mountPath"], m.get("readOnly")) for m in mounts] == [(PVC_MOUNT_PATH, True)]
    # The model was only read.
    assert sorted(p.name for p in (models_claim / "tiny").iterdir()) == ["config.json", "model.safetensors"]


def test_a_path_that_is_not_on_the_claim_fails_validation_as_invalid_model(
    env: dict[str, str],  # noqa: F811
    s3_env: dict[str, str],
    operator: ops.Operator,  # noqa: F811
    models_claim: Path,
) -> None:
    ns = env["namespace"]
    ops.apply(
        make_job(
            env, s3_env, "nomodel", ops.chat_rows(4), extra={"baseModel": {"uri": "pvc://models/absent"}}
        )
    )
    obj = ops.wait_phase("nomodel", ns, {"Succeeded", "Failed"}, 90, operator)
    st = obj["status"]
    assert st["phase"] == "Failed", json.dumps(st, indent=1)
    failed = ops.condition(obj, "Failed")
    assert failed is not None
    assert failed["reason"] == "InvalidModel"
    # Seen from inside the pod, through the mount.
    assert f"{PVC_MOUNT_PATH}/absent" in failed["message"]
    assert st.get("attempts", 0) == 0
    assert ops.gpu_pods_ever(ns, "nomodel") == []


def test_a_missing_claim_keeps_the_job_validating_with_the_claims_name(
    env: dict[str, str],  # noqa: F811
    s3_env: dict[str, str],
    operator: ops.Operator,  # noqa: F811
) -> None:
    ns = env["namespace"]
    ops.apply(
        make_job(env, s3_env, "noclaim", ops.chat_rows(4), extra={"baseModel": {"uri": "pvc://weights/m"}})
    )

    def stalled() -> dict[str, Any] | None:
        obj = ops.ftj("noclaim", ns)
        c = ops.condition(obj, "Stalled")
        return obj if c and c["status"] == "True" else None

    obj = wait_for(stalled, 60, "noclaim to stall on its claim")
    st = obj["status"]
    assert st["phase"] == "Validating"
    stalled_cond = ops.condition(obj, "Stalled")
    assert stalled_cond is not None
    assert stalled_cond["reason"] == "Unschedulable"
    # The real scheduler's message, and the claim and namespace to fix.
    assert 'persistentvolumeclaim "weights" not found' in st["message"]
    assert 'PersistentVolumeClaim "weights" of baseModel.uri cannot be used' in st["message"]
    assert f'namespace "{ns}"' in st["message"]
    assert ops.condition(obj, "Failed") is None
