"""A pvc:// base model: the read-only claim volume of both pods, the trainer config that points at the
mount, and a claim the scheduler cannot bind surfacing with the claim's name."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_contract.config import TrainerConfig
from finetune_contract.uris import PVC_MOUNT_PATH
from finetune_operator import manifests, names
from finetune_operator.api import ConditionType, FineTuneJobSpec, Phase
from finetune_operator.failures import pod_blocker
from finetune_operator.manifests import JobRef
from finetune_operator.settings import OperatorSettings

from tests.unit.test_operator_reconcile import VALIDATED, cond, make_spec, run, terminated, tjob, tpod
from tests.unit.test_operator_reconcile import pod as child_pod

REF = JobRef(name="bot", namespace="team-a", uid="uid-1")
SETTINGS = OperatorSettings(trainer_image="finetune-operator/trainer:dev", s3_endpoint="http://s3:9000")


def spec(uri: str) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": uri},
            "dataset": {"train": "s3://data/train.jsonl"},
            "output": {"uri": "s3://out/bot/"},
            "storage": {"credentialsSecretRef": {"name": "s3-creds"}},
        }
    )


def pod_specs(s: FineTuneJobSpec) -> list[dict[str, Any]]:
    validation = manifests.validation_pod(REF, s, SETTINGS)["spec"]
    job = manifests.trainer_job(REF, s, SETTINGS, attempt=1, retries_used=0, active_deadline_seconds=None)
    return [validation, job["spec"]["template"]["spec"]]


@pytest.mark.parametrize(
    ("uri", "claim", "path"),
    [
        ("pvc://models/smollm2-135m", "models", f"{PVC_MOUNT_PATH}/smollm2-135m"),
        ("pvc://models/llm/smollm2.Q4_1.gguf", "models", f"{PVC_MOUNT_PATH}/llm/smollm2.Q4_1.gguf"),
        ("pvc://whole-claim", "whole-claim", PVC_MOUNT_PATH),
        ("pvc://whole-claim/", "whole-claim", PVC_MOUNT_PATH),
    ],
)
def test_both_pods_mount_the_claim_read_only_where_the_config_says(uri: str, claim: str, path: str) -> None:
    s = spec(uri)
    for pod in pod_specs(s):
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[manifests.BASE_MODEL_VOLUME] == {
            "name": manifests.BASE_MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
        }
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts[manifests.BASE_MODEL_VOLUME] == {
            "name": manifests.BASE_MODEL_VOLUME,
            "mountPath": PVC_MOUNT_PATH,
            "readOnly": True,
        }
        # The other volumes are still there, and nothing else mounts over the model.
        assert {"config", "scratch"} <= set(volumes)
        assert sorted(m["mountPath"] for m in mounts.values()) == sorted(
            [manifests.CONFIG_DIR, manifests.SCRATCH_DIR, PVC_MOUNT_PATH]
        )
    cm = manifests.config_map(REF, manifests.trainer_config(REF, s, SETTINGS))
    cfg = TrainerConfig.model_validate_json(cm["data"]["config.json"])
    assert cfg.base_model.uri == uri
    assert cfg.base_model.mount_path == PVC_MOUNT_PATH
    assert str(cfg.base_model.local_path) == path


def test_s3_models_get_no_claim_volume_and_an_unchanged_config() -> None:
    s = spec("s3://models/smollm2/")
    for pod in pod_specs(s):
        assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
        assert [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]] == [
            manifests.CONFIG_DIR,
            manifests.SCRATCH_DIR,
        ]
    cm = manifests.config_map(REF, manifests.trainer_config(REF, s, SETTINGS))
    assert '"mountPath"' not in cm["data"]["config.json"]
    assert TrainerConfig.model_validate_json(cm["data"]["config.json"]).base_model.local_path is None


def test_the_validation_pod_changes_with_the_claim() -> None:
    a = manifests.validation_pod(REF, spec("pvc://models/a"), SETTINGS)["metadata"]["name"]
    b = manifests.validation_pod(REF, spec("pvc://other/a"), SETTINGS)["metadata"]["name"]
    assert a != b


def unschedulable(message: str) -> list[dict[str, Any]]:
    return [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]


# The real kube-scheduler's messages (v1.36, VolumeBinding plugin), as seen on the local cluster.
MISSING = '0/1 nodes are available: persistentvolumeclaim "models" not found. not found'
UNBOUND = "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. not found"


@pytest.mark.parametrize("message", [MISSING, UNBOUND])
def test_a_claim_the_scheduler_cannot_use_is_named(message: str) -> None:
    pod = {"status": {"phase": "Pending", "conditions": unschedulable(message)}}
    f = pod_blocker(pod, "models", "team-a")
    assert f is not None
    assert f.reason == "Unschedulable"
    assert f.claim == "models"
    assert 'PersistentVolumeClaim "models"' in f.message
    assert 'namespace "team-a"' in f.message
    assert message in f.message
    # Without a claim (an s3:// model) the scheduler's message is passed on as it is.
    plain = pod_blocker(pod)
    assert plain is not None
    assert (plain.reason, plain.message, plain.claim) == ("Unschedulable", message, "")


def test_gpu_shortage_of_a_pvc_job_is_not_blamed_on_the_claim() -> None:
    pod = {"status": {"conditions": unschedulable("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")}}
    f = pod_blocker(pod, "models", "team-a")
    assert f is not None
    assert (f.reason, f.claim) == ("Unschedulable", "")


PVC_SPEC = make_spec(baseModel={"uri": "pvc://models/m"})


def pvc_vpod(phase: str, **kw: Any) -> dict[str, Any]:
    # Like the operator's index: a slim copy without the pod's volumes or namespace.
    name = names.validation_pod_name("bot", manifests.validation_hash(PVC_SPEC))
    return child_pod(name, phase, component="validation", **kw)


def test_validation_waiting_for_the_claim_stalls_with_its_name_and_does_not_fail() -> None:
    for age in (-10, -4000):
        d = run(
            run(spec=PVC_SPEC).status,
            PVC_SPEC,
            vpods=[pvc_vpod("Pending", conditions=unschedulable(MISSING), created=age)],
        )
        assert d.status.phase == Phase.VALIDATING
        assert cond(d, ConditionType.STALLED) == ("True", "Unschedulable")
        assert cond(d, ConditionType.FAILED) is None
        assert 'PersistentVolumeClaim "models"' in (d.status.message or "")
        assert 'namespace "ns"' in (d.status.message or "")
        assert d.create == []


def test_trainer_waiting_for_the_claim_says_so_rather_than_waiting_for_gpus() -> None:
    passed = pvc_vpod("Succeeded", state=terminated(0, VALIDATED))
    validated = run(spec=PVC_SPEC, vpods=[passed]).status
    assert validated.phase == Phase.QUEUED
    pending = tpod(1, "Pending", conditions=unschedulable(UNBOUND))
    d = run(validated, PVC_SPEC, vpods=[passed], jobs=[tjob(1)], tpods=[pending])
    assert d.status.phase == Phase.QUEUED
    assert cond(d, ConditionType.RUNNING) == ("False", "Unschedulable")
    assert cond(d, ConditionType.STALLED) == ("True", "Unschedulable")
    message = d.status.message or ""
    assert 'PersistentVolumeClaim "models"' in message
    assert UNBOUND in message
    assert "GPUs" not in message
