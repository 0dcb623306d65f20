"""Children of a FineTuneJob: hardened pods, owner references, labels, GPU scheduling, failure policy."""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_contract.config import TrainerConfig
from finetune_operator import manifests
from finetune_operator.api import FineTuneJobSpec, LRScheduler
from finetune_operator.failures import pod_blocker
from finetune_operator.manifests import JobRef
from finetune_operator.settings import OperatorSettings
from transformers.trainer_utils import SchedulerType

REF = JobRef(name="bot", namespace="team-a", uid="uid-1")
SETTINGS = OperatorSettings(trainer_image="finetune-operator/trainer-stub:dev", s3_endpoint="http://s3:9000")


def spec(**overrides: object) -> FineTuneJobSpec:
    body: dict[str, object] = {
        "baseModel": {"uri": "s3://models/smollm2/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://out/bot/"},
        "storage": {"credentialsSecretRef": {"name": "s3-creds"}},
    }
    body.update(overrides)
    return FineTuneJobSpec.model_validate(body)


def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return dict(pod_spec["containers"][0])


@pytest.mark.parametrize("kind", ["validation", "trainer"])
def test_pods_are_hardened_and_owned(kind: str) -> None:
    if kind == "validation":
        obj = manifests.validation_pod(REF, spec(), SETTINGS)
        pod = obj["spec"]
    else:
        obj = manifests.trainer_job(
            REF, spec(), SETTINGS, attempt=1, retries_used=0, active_deadline_seconds=None
        )
        pod = obj["spec"]["template"]["spec"]
    meta = obj["metadata"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "bot",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
    assert meta["labels"]["finetune.dev/job"] == "bot"
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container(pod)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False
    scratch = next(v for v in pod["volumes"] if v["name"] == "scratch")
    assert set(scratch) == {"name", "emptyDir"}
    assert container(pod)["image"] == "finetune-operator/trainer-stub:dev"


def test_secret_is_only_referenced_from_the_same_namespace() -> None:
    pod = manifests.validation_pod(REF, spec(), SETTINGS)
    env = {e["name"]: e for e in container(pod["spec"])["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://s3:9000"
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert pod["metadata"]["namespace"] == "team-a"
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]


def test_validation_pod_requests_no_gpu_and_runs_validate() -> None:
    pod = manifests.validation_pod(REF, spec(resources={"gpus": 4}), SETTINGS)
    c = container(pod["spec"])
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert c["args"] == ["validate", "--config", "/etc/finetune/config.json"]
    assert pod["metadata"]["name"].startswith("bot-validate-")


def test_validation_pod_is_bounded_in_time_and_disk_and_its_config_carries_the_input_limits() -> None:
    settings = OperatorSettings.from_env(
        {
            "FTO_VALIDATION_DEADLINE_SECONDS": "600",
            "FTO_VALIDATION_SCRATCH": "3Gi",
            "FTO_DATASET_MAX_ROWS": "5000",
            "FTO_TEMPLATE_SECONDS": "2.5",
            "FTO_TEMPLATE_MEMORY_BYTES": str(64 * 1024**2),
        }
    )
    pod = manifests.validation_pod(REF, spec(), settings)
    assert pod["spec"]["activeDeadlineSeconds"] == 600
    scratch = next(v for v in pod["spec"]["volumes"] if v["name"] == "scratch")
    assert scratch["emptyDir"] == {"sizeLimit": "3Gi"}
    assert container(pod["spec"])["resources"]["requests"]["ephemeral-storage"] == "3Gi"
    limits = manifests.trainer_config(REF, spec(), settings).limits
    assert (limits.max_rows, limits.template_seconds, limits.max_json_depth) == (5000, 2.5, 32)
    assert limits.template_memory_bytes == 64 * 1024**2
    with pytest.raises(ValueError, match="FTO_DATASET_MAX_JSON_DEPTH must be at least 2"):
        OperatorSettings.from_env({"FTO_DATASET_MAX_JSON_DEPTH": "1"})


def test_validation_pod_name_is_stable_across_mutable_fields() -> None:
    a = manifests.validation_pod(REF, spec(), SETTINGS)["metadata"]["name"]
    b = manifests.validation_pod(REF, spec(suspend=True, retries={"limit": 7}), SETTINGS)["metadata"]["name"]
    c = manifests.validation_pod(REF, spec(dataset={"train": "s3://data/other.jsonl"}), SETTINGS)
    assert a == b != c["metadata"]["name"]


def test_trainer_job_scheduling_and_failure_policy() -> None:
    s = spec(
        resources={
            "gpus": 2,
            "gpuType": "nvidia-h100-80gb",
            "memory": "64Gi",
            "cpu": "8",
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "high",
        },
        queueName="team-a",
    )
    job = manifests.trainer_job(REF, s, SETTINGS, attempt=3, retries_used=1, active_deadline_seconds=500)
    assert job["metadata"]["name"] == "bot-train-a3"
    assert job["metadata"]["labels"]["finetune.dev/attempt"] == "3"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["metadata"]["annotations"]["finetune.dev/retries-used"] == "1"
    js = job["spec"]
    assert js["backoffLimit"] == 0
    assert js["activeDeadlineSeconds"] == 500
    rules = js["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [42]},
    }
    assert rules[1]["action"] == "Ignore"
    assert rules[1]["onExitCodes"]["values"] == [76]
    assert rules[2] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    tmpl = js["template"]
    assert tmpl["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert tmpl["metadata"]["labels"]["finetune.dev/attempt"] == "3"
    pod = tmpl["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "nvidia-h100-80gb"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "high"
    res = container(pod)["resources"]
    assert res["limits"] == {"nvidia.com/gpu": "2", "memory": "64Gi"}
    assert res["requests"]["cpu"] == "8"
    env = {e["name"]: e.get("value") for e in container(pod)["env"]}
    assert env["FINETUNE_ATTEMPT"] == "3"
    assert container(pod)["args"][0] == "train"


def test_multi_node_is_an_indexed_job() -> None:
    job = manifests.trainer_job(
        REF,
        spec(resources={"gpus": 1, "nodes": 2}),
        SETTINGS,
        attempt=1,
        retries_used=0,
        active_deadline_seconds=None,
    )
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert "activeDeadlineSeconds" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    # The Job controller names each pod's host <job>-<index>; the attempt's Service is the subdomain.
    assert pod["subdomain"] == job["metadata"]["name"]
    env = {e["name"]: e for e in container(pod)["env"]}
    assert env["PET_NNODES"]["value"] == "2"
    assert env["PET_NPROC_PER_NODE"]["value"] == "1"
    assert env["PET_MASTER_ADDR"]["value"] == f"{job['metadata']['name']}-0.{job['metadata']['name']}"
    assert env["PET_NODE_RANK"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    port = int(env["PET_MASTER_PORT"]["value"])
    service = manifests.trainer_service(REF, spec(resources={"gpus": 1, "nodes": 2}), attempt=1)
    assert service["metadata"]["name"] == job["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"][0]["port"] == port
    # The Service selects this attempt's pods only, and goes with the FineTuneJob.
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"]["finetune.dev/attempt"] == "1"
    assert service["metadata"]["ownerReferences"][0]["uid"] == REF.uid


def test_several_gpus_in_one_pod_meet_on_loopback_and_single_process_jobs_get_no_rendezvous() -> None:
    env = pod_env("trainer", spec(resources={"gpus": 2}), SETTINGS)
    assert env["PET_NPROC_PER_NODE"]["value"] == "2"
    assert env["PET_NNODES"]["value"] == "1"
    assert env["PET_MASTER_ADDR"]["value"] == "127.0.0.1"
    assert env["PET_NODE_RANK"]["value"] == "0"
    job = manifests.trainer_job(
        REF, spec(resources={"gpus": 2}), SETTINGS, attempt=1, retries_used=0, active_deadline_seconds=None
    )
    assert "subdomain" not in job["spec"]["template"]["spec"]
    single = pod_env("trainer", spec(), SETTINGS)
    assert "PET_MASTER_ADDR" not in single
    assert single["PET_NNODES"]["value"] == single["PET_NPROC_PER_NODE"]["value"] == "1"


def test_validation_pod_knows_the_world_it_resolves_the_batch_for() -> None:
    env = pod_env("validation", spec(resources={"gpus": 4, "nodes": 2}), SETTINGS)
    assert env["PET_NNODES"]["value"] == "2"
    assert env["PET_NPROC_PER_NODE"]["value"] == "4"
    # It never joins a rendezvous.
    assert "PET_MASTER_ADDR" not in env
    assert env["FTO_TERMINATION_GRACE_SECONDS"]["value"] == str(SETTINGS.termination_grace_seconds)


def test_config_map_renders_a_valid_trainer_config() -> None:
    s = spec(
        dataset={"train": "s3://data/train.jsonl", "format": "prompt-completion"},
        hyperparameters={
            "learningRate": "1e-4",
            "lrScheduler": "constant-with-warmup",
            "earlyStopping": {"patience": 2},
        },
    )
    cm = manifests.config_map(REF, manifests.trainer_config(REF, s, SETTINGS))
    assert cm["metadata"]["name"] == "bot-config"
    cfg = TrainerConfig.model_validate_json(cm["data"]["config.json"])
    assert cfg.dataset.format == "prompt-completion"
    # One model on both sides: the trainer reads exactly the spec's training part.
    assert cfg.hyperparameters == s.hyperparameters
    assert cfg.dataset == s.dataset
    assert cfg.hyperparameters.lr_scheduler.transformers_name == "constant_with_warmup"
    assert cfg.hyperparameters.learning_rate == pytest.approx(1e-4)
    assert cfg.hyperparameters.patience == 2
    assert cfg.storage.endpoint == "http://s3:9000"
    assert cfg.job.name == "bot"
    assert cfg.job.namespace == "team-a"
    assert "secret" not in cm["data"]["config.json"].lower()


@pytest.mark.parametrize("scheduler", list(LRScheduler), ids=str)
def test_every_api_scheduler_renders_as_its_transformers_name(scheduler: LRScheduler) -> None:
    cfg = manifests.trainer_config(REF, spec(hyperparameters={"lrScheduler": scheduler.value}), SETTINGS)
    assert cfg.hyperparameters.lr_scheduler.transformers_name == scheduler.transformers_name
    assert scheduler.transformers_name in {s.value for s in SchedulerType}


def test_config_carries_the_new_training_and_eval_fields() -> None:
    full = spec(
        dataset={
            "train": "s3://data/train.jsonl",
            "validation": "s3://data/val.jsonl",
            "test": "s3://data/heldout.jsonl",
        },
        method={"type": "full"},
        hyperparameters={"maxSteps": 50, "maxGradNorm": "0.5", "gradualUnfreezing": True},
    )
    cm = manifests.config_map(REF, manifests.trainer_config(REF, full, SETTINGS))
    cfg = TrainerConfig.model_validate_json(cm["data"]["config.json"])
    assert cfg.dataset.test == "s3://data/heldout.jsonl"
    assert cfg.dataset.validation == "s3://data/val.jsonl"
    hp = cfg.hyperparameters
    assert hp.max_steps == 50
    assert hp.max_grad_norm == pytest.approx(0.5)
    assert hp.gradual_unfreezing is True

    lora = spec(method={"type": "lora", "lora": {"rsLora": False}})
    cfg = TrainerConfig.model_validate_json(
        manifests.config_map(REF, manifests.trainer_config(REF, lora, SETTINGS))["data"]["config.json"]
    )
    assert cfg.method.effective_lora is not None
    assert cfg.method.effective_lora.rs_lora is False
    assert cfg.dataset.test is None
    assert (cfg.hyperparameters.max_grad_norm, cfg.hyperparameters.gradual_unfreezing) == (1.0, False)
    assert cfg.hyperparameters.max_steps is None
    # The defaults reach the trainer too: rank-stabilized scaling unless turned off.
    default_lora = manifests.trainer_config(REF, spec(), SETTINGS).method.effective_lora
    assert default_lora is not None
    assert default_lora.rs_lora is True


# --- hf:// base models ---------------------------------------------------------------------------

HUB = OperatorSettings(
    trainer_image="finetune-operator/trainer:dev",
    s3_endpoint="http://s3:9000",
    hf_endpoint="https://hf-mirror.internal",
)
HF_MODEL = {
    "uri": "hf://org/tiny@0123456789abcdef0123456789abcdef01234567",
    "tokenSecretRef": {"name": "hf-token"},
}


def pod_env(kind: str, s: FineTuneJobSpec, settings: OperatorSettings) -> dict[str, dict[str, Any]]:
    if kind == "validation":
        pod = manifests.validation_pod(REF, s, settings)["spec"]
    else:
        job = manifests.trainer_job(REF, s, settings, attempt=1, retries_used=0, active_deadline_seconds=None)
        pod = job["spec"]["template"]["spec"]
    return {e["name"]: e for e in container(pod)["env"]}


@pytest.mark.parametrize("kind", ["validation", "trainer"])
def test_only_hf_jobs_go_online_and_only_to_the_operators_hub(kind: str) -> None:
    offline = pod_env(kind, spec(), HUB)
    assert offline["HF_HUB_OFFLINE"] == {"name": "HF_HUB_OFFLINE", "value": "1"}
    assert "HF_ENDPOINT" not in offline
    assert "HF_TOKEN" not in offline

    online = pod_env(kind, spec(baseModel=HF_MODEL), HUB)
    assert online["HF_HUB_OFFLINE"]["value"] == "0"
    assert online["HF_ENDPOINT"]["value"] == "https://hf-mirror.internal"
    # The token is referenced from the job's own namespace, never copied into the pod spec.
    assert online["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}},
    }
    assert online["HF_HOME"]["value"] == "/scratch/hf"


def test_hf_job_without_token_or_endpoint_setting() -> None:
    env = pod_env("validation", spec(baseModel={"uri": "hf://org/tiny"}), SETTINGS)
    assert env["HF_HUB_OFFLINE"]["value"] == "0"
    assert "HF_ENDPOINT" not in env  # huggingface_hub's default, https://huggingface.co
    assert "HF_TOKEN" not in env
    custom_key = {"uri": "hf://org/tiny", "tokenSecretRef": {"name": "tokens", "key": "team-a"}}
    env = pod_env("trainer", spec(baseModel=custom_key), SETTINGS)
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "tokens", "key": "team-a"}


def test_hf_config_carries_the_uri_but_not_the_token() -> None:
    cm = manifests.config_map(REF, manifests.trainer_config(REF, spec(baseModel=HF_MODEL), HUB))
    cfg = TrainerConfig.model_validate_json(cm["data"]["config.json"])
    assert cfg.base_model.uri == HF_MODEL["uri"]
    assert "hf-token" not in cm["data"]["config.json"]
    assert "tokenSecretRef" not in cm["data"]["config.json"]


def test_a_token_change_means_a_new_validation() -> None:
    other = {**HF_MODEL, "tokenSecretRef": {"name": "other-token"}}
    a = manifests.validation_pod(REF, spec(baseModel=HF_MODEL), HUB)["metadata"]["name"]
    b = manifests.validation_pod(REF, spec(baseModel=other), HUB)["metadata"]["name"]
    assert a != b


@pytest.mark.parametrize(
    ("missing", "hint"),
    [
        ("hf-token", "the Hugging Face token under the key HF_TOKEN (baseModel.tokenSecretRef)"),
        ("s3-creds", "keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_a_missing_secret_is_named_with_what_it_must_hold(missing: str, hint: str) -> None:
    pod = manifests.validation_pod(REF, spec(baseModel=HF_MODEL), HUB)
    waiting = {"reason": "CreateContainerConfigError", "message": f'secret "{missing}" not found'}
    pod["status"] = {
        "phase": "Pending",
        "containerStatuses": [{"name": "trainer", "state": {"waiting": waiting}}],
    }
    blocker = pod_blocker(pod)
    assert blocker is not None
    assert blocker.reason == "SecretNotFound"
    assert blocker.message == f'secret "{missing}" not found: create it in the job\'s namespace with {hint}'
