"""The children of a FineTuneJob as plain dicts (pure: no I/O, no clock).

- `<name>-config`          ConfigMap with the trainer's config.json (finetune_contract.config.TrainerConfig)
- `<name>-validate-<hash>` CPU-only Pod running the trainer image in validate mode
- `<name>-train-a<N>`      batch/v1 Job of attempt N running the trainer in train mode

A `pvc://<claim>/<path>` base model is a read-only `persistentVolumeClaim` volume of both pods, mounted
at `finetune_contract.uris.PVC_MOUNT_PATH`; the config tells the trainer that path (`baseModel.mountPath`).

Every child carries an owner reference to the FineTuneJob (deleting it garbage-collects them all),
the labels the operator indexes them by, and the same hardened pod settings: non-root, read-only
root filesystem, no capabilities, RuntimeDefault seccomp, no API token, a scratch emptyDir. The S3
Secret is referenced by name from the pod's own namespace; the operator never reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from finetune_contract.config import TrainerConfig
from finetune_contract.distributed import (
    COMPLETION_INDEX_ANNOTATION,
    MASTER_ADDR,
    MASTER_PORT,
    NODE_RANK,
    World,
    rendezvous_port,
)
from finetune_contract.outcomes import ExitCode, Validated
from finetune_contract.spec import LoRA, TrainingSpec
from finetune_contract.uris import PVC_MOUNT_PATH, parse_pvc_uri

from . import names, scratch
from .api import API_VERSION, KIND, FineTuneJobSpec, ResolvedScratch
from .queueing import trainer_job_labels
from .settings import OperatorSettings

JSON = dict[str, Any]

MANAGED_BY: Final = "finetune-operator"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_JOB: Final = "finetune.dev/job"
LABEL_ATTEMPT: Final = "finetune.dev/attempt"
# On a trainer Job: how many failures had used the retry budget when this attempt was started. The
# count lives on the children, so a restarted operator recomputes it from what exists.
ANNOTATION_RETRIES_USED: Final = "finetune.dev/retries-used"
ANNOTATION_SPEC_HASH: Final = "finetune.dev/spec-hash"
COMPONENT_VALIDATION: Final = "validation"
COMPONENT_TRAINER: Final = "trainer"
COMPONENT_CONFIG: Final = "config"

CONFIG_DIR: Final = "/etc/finetune"
# The read-only persistentVolumeClaim volume of a pvc:// base model, in both pods.
BASE_MODEL_VOLUME: Final = "base-model"
CONFIG_FILE: Final = "config.json"
SCRATCH_DIR: Final = "/scratch"
CONTAINER_NAME: Final = "trainer"
GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
RUN_AS_USER: Final = 1000


@dataclass(frozen=True)
class JobRef:
    """What the children need to know about their FineTuneJob."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> JSON:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def labels(ref: JobRef, component: str, attempt: int | None = None) -> dict[str, str]:
    out = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: "finetune-trainer",
        LABEL_COMPONENT: component,
        LABEL_JOB: ref.name,
    }
    if attempt is not None:
        out[LABEL_ATTEMPT] = str(attempt)
    return out


def validation_hash(spec: FineTuneJobSpec) -> str:
    """Hash of the parts validation looks at (all immutable in the CRD): suspend, retries or budget
    edits never start a new validation."""
    body = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    keep = ("baseModel", "dataset", "output", "storage", "method", "hyperparameters")
    return names.spec_hash({k: body.get(k) for k in keep})


def trainer_config(ref: JobRef, spec: FineTuneJobSpec, settings: OperatorSettings) -> TrainerConfig:
    """The trainer's config: the spec's training part as it is (the same contract models), plus where the
    pods find the S3 store and a pvc:// model, and the job's identity. ValueError if it does not validate."""
    doc: JSON = spec.model_dump(mode="json", by_alias=True, exclude_none=True, include=_TRAINING_FIELDS)
    doc["storage"] = {
        "endpoint": spec.storage.endpoint or settings.s3_endpoint or None,
        "region": spec.storage.region,
    }
    doc["job"] = {"namespace": ref.namespace, "name": ref.name, "uid": ref.uid}
    doc["limits"] = settings.input_limits.model_dump(mode="json", by_alias=True)
    # The token reaches the pods as HF_TOKEN (secretKeyRef); the trainer has no use for the Secret's name.
    doc["baseModel"].pop("tokenSecretRef", None)
    if base_model_claim(spec) is not None:
        doc["baseModel"]["mountPath"] = PVC_MOUNT_PATH
    return TrainerConfig.model_validate(doc)


# The fields FineTuneJobSpec has from TrainingSpec: what the trainer reads, unchanged.
_TRAINING_FIELDS: Final = set(TrainingSpec.model_fields)


def base_model_claim(spec: FineTuneJobSpec) -> str | None:
    """The PersistentVolumeClaim of a pvc:// base model, else None."""
    if not spec.base_model.uri.startswith("pvc://"):
        return None
    claim, _ = parse_pvc_uri(spec.base_model.uri)
    return claim


def config_map(ref: JobRef, config: TrainerConfig) -> JSON:
    body = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.config_map_name(ref.name),
            "namespace": ref.namespace,
            "labels": labels(ref, COMPONENT_CONFIG),
            "ownerReferences": [ref.owner_reference()],
        },
        "data": {CONFIG_FILE: json.dumps(body, indent=2, sort_keys=True)},
    }


def _env(ref: JobRef, spec: FineTuneJobSpec, settings: OperatorSettings, attempt: int) -> list[JSON]:
    secret = spec.storage.credentials_secret_ref.name

    def from_secret(key: str) -> JSON:
        return {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}

    env: list[JSON] = [
        from_secret("AWS_ACCESS_KEY_ID"),
        from_secret("AWS_SECRET_ACCESS_KEY"),
        {"name": "AWS_DEFAULT_REGION", "value": spec.storage.region},
    ]
    endpoint = spec.storage.endpoint or settings.s3_endpoint
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    env += [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "METRICS_PORT", "value": str(settings.metrics_port)},
        {"name": "HF_HOME", "value": f"{SCRATCH_DIR}/hf"},
        *_hub_env(spec, settings),
        {"name": "SCRATCH_DIR", "value": SCRATCH_DIR},
        # The root filesystem is read-only: temporary files and library caches go to the scratch volume.
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH_DIR}/cache"},
        {"name": "FINETUNE_JOB", "value": f"{ref.namespace}/{ref.name}"},
        {"name": "FINETUNE_ATTEMPT", "value": str(attempt)},
        # The world's shape: the validation pod resolves the batch for it, the trainer launches it.
        *({"name": k, "value": v} for k, v in world(spec).env().items()),
        # The launcher gives its workers this long, less a margin, to checkpoint after a SIGTERM.
        {"name": "FTO_TERMINATION_GRACE_SECONDS", "value": str(settings.termination_grace_seconds)},
        # The trainer sizes its thread pools from these (millicores), not from the node's cores.
        *(
            {
                "name": name,
                "valueFrom": {
                    "resourceFieldRef": {
                        "containerName": CONTAINER_NAME,
                        "resource": resource,
                        "divisor": "1m",
                    }
                },
            }
            for name, resource in (("FTO_CPU_LIMIT", "limits.cpu"), ("FTO_CPU_REQUEST", "requests.cpu"))
        ),
    ]
    return env


def world(spec: FineTuneJobSpec) -> World:
    return World.for_resources(spec.resources.gpus, spec.resources.nodes)


def rendezvous_env(ref: JobRef, spec: FineTuneJobSpec, attempt: int) -> list[JSON]:
    """Where a distributed attempt's pods meet: the index-0 pod, through the attempt's headless Service
    for several pods; each pod's node rank is its completion index (downward API)."""
    job_name = names.trainer_job_name(ref.name, attempt)
    multi_node = spec.resources.nodes > 1
    master = f"{job_name}-0.{job_name}" if multi_node else "127.0.0.1"
    node_rank: JSON = (
        {"valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}}
        if multi_node
        else {"value": "0"}
    )
    return [
        {"name": MASTER_ADDR, "value": master},
        {"name": MASTER_PORT, "value": str(rendezvous_port(ref.uid, attempt))},
        {"name": NODE_RANK, **node_rank},
    ]


def trainer_service(ref: JobRef, spec: FineTuneJobSpec, attempt: int) -> JSON:
    """The headless Service of a multi-node attempt: `<job>-<index>.<job>` names each of its pods.
    publishNotReadyAddresses, because the pods have no readiness probe to pass before they meet."""
    job_name = names.trainer_job_name(ref.name, attempt)
    port = rendezvous_port(ref.uid, attempt)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job_name,
            "namespace": ref.namespace,
            "labels": labels(ref, COMPONENT_TRAINER, attempt),
            "ownerReferences": [ref.owner_reference()],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(ref, COMPONENT_TRAINER, attempt),
            "ports": [{"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def _hub_env(spec: FineTuneJobSpec, settings: OperatorSettings) -> list[JSON]:
    """Offline, except for an hf:// base model: then the trainer may reach the Hub (the operator's
    endpoint, e.g. an on-prem mirror) for that model only, with the job's token Secret if it has one."""
    base = spec.base_model
    if not base.uri.startswith("hf://"):
        return [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    env: list[JSON] = [{"name": "HF_HUB_OFFLINE", "value": "0"}]
    if settings.hf_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": settings.hf_endpoint})
    if base.token_secret_ref is not None:
        ref = base.token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _security_context() -> JSON:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(
    ref: JobRef,
    spec: FineTuneJobSpec,
    settings: OperatorSettings,
    *,
    mode: str,
    attempt: int,
    resources: JSON,
    node_selector: dict[str, str],
    tolerations: list[JSON],
    priority_class: str,
) -> JSON:
    pod: JSON = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": settings.trainer_image,
                "args": [mode, "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
                "env": _env(ref, spec, settings, attempt),
                "resources": resources,
                "securityContext": _security_context(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                    {"name": "scratch", "mountPath": SCRATCH_DIR},
                ],
            }
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config_map_name(ref.name)}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    claim = base_model_claim(spec)
    if claim is not None:
        # Read-only twice over: the claim (the kubelet mounts it ro) and the container's mount.
        pod["volumes"].append(
            {"name": BASE_MODEL_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        pod["containers"][0]["volumeMounts"].append(
            {"name": BASE_MODEL_VOLUME, "mountPath": PVC_MOUNT_PATH, "readOnly": True}
        )
    if mode == "train":
        pod["containers"][0]["ports"] = [
            {"name": "metrics", "containerPort": settings.metrics_port, "protocol": "TCP"}
        ]
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = tolerations
    if priority_class:
        pod["priorityClassName"] = priority_class
    return pod


def validation_pod(ref: JobRef, spec: FineTuneJobSpec, settings: OperatorSettings, try_: int = 0) -> JSON:
    """The CPU-only pod that checks dataset, model and output before any GPU is requested."""
    resources = {
        "requests": {
            "cpu": settings.validation_cpu,
            "memory": settings.validation_memory,
            "ephemeral-storage": settings.validation_scratch,
        },
        "limits": {"memory": settings.validation_memory_limit},
    }
    hash_ = validation_hash(spec)
    pod_spec = _pod_spec(
        ref,
        spec,
        settings,
        mode="validate",
        attempt=0,
        resources=resources,
        node_selector=settings.validation_node_selector,
        tolerations=[],
        priority_class="",
    )
    # Bounded in time and disk: a hostile chat template or a huge input cannot hold the pod for ever
    # or fill the node's disk.
    pod_spec["activeDeadlineSeconds"] = settings.validation_deadline_seconds
    next(v for v in pod_spec["volumes"] if v["name"] == "scratch")["emptyDir"] = {
        "sizeLimit": settings.validation_scratch
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.validation_pod_name(ref.name, hash_, try_),
            "namespace": ref.namespace,
            "labels": labels(ref, COMPONENT_VALIDATION),
            "annotations": {ANNOTATION_SPEC_HASH: hash_},
            "ownerReferences": [ref.owner_reference()],
        },
        "spec": pod_spec,
    }


def trainer_scratch(
    spec: FineTuneJobSpec, validated: Validated, settings: OperatorSettings
) -> ResolvedScratch:
    """The trainer pods' scratch volume for this spec, from the sizes its validation measured."""
    uri = spec.base_model.uri
    sized = scratch.trainer_scratch(
        method=spec.method.type,
        lora_rank=(spec.method.lora or LoRA()).r,
        weight_bytes=validated.model_bytes,
        gguf=uri.lower().endswith(".gguf"),
        downloaded=base_model_claim(spec) is None,
        dataset_file_bytes=validated.dataset_file_bytes,
        minimum=settings.trainer_scratch_min_bytes,
    )
    return ResolvedScratch(
        request=scratch.quantity(sized.request),
        size_limit=scratch.quantity(sized.size_limit) if sized.size_limit is not None else None,
    )


def _trainer_resources(spec: FineTuneJobSpec, scratch_volume: ResolvedScratch | None) -> JSON:
    res = spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if scratch_volume is not None and scratch_volume.request:
        requests["ephemeral-storage"] = scratch_volume.request
    if res.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(res.gpus)
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    out: JSON = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def pod_failure_policy() -> JSON:
    """Invalid input fails the Job at once; a preempted trainer (checkpoint saved) and disruptions
    (eviction, preemption, node drain) are replaced in place without counting as failures."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER_NAME,
                    "operator": "In",
                    "values": [int(ExitCode.INVALID_INPUT)],
                },
            },
            {
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": CONTAINER_NAME,
                    "operator": "In",
                    "values": [int(ExitCode.PREEMPTED)],
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def trainer_job(
    ref: JobRef,
    spec: FineTuneJobSpec,
    settings: OperatorSettings,
    *,
    attempt: int,
    retries_used: int,
    active_deadline_seconds: int | None,
    suspend: bool = False,
    scratch_volume: ResolvedScratch | None = None,
) -> JSON:
    """The batch/v1 Job of one attempt. backoffLimit 0: the FineTuneJob owns the retry budget, and
    every attempt is a new Job that resumes from the last complete checkpoint."""
    res = spec.resources
    job_name = names.trainer_job_name(ref.name, attempt)
    node_selector = dict(res.node_selector)
    if res.gpu_type:
        node_selector.setdefault(GPU_PRODUCT_LABEL, res.gpu_type)
    tolerations = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in res.tolerations]
    pod_labels = labels(ref, COMPONENT_TRAINER, attempt)
    pod_spec = _pod_spec(
        ref,
        spec,
        settings,
        mode="train",
        attempt=attempt,
        resources=_trainer_resources(spec, scratch_volume),
        node_selector=node_selector,
        tolerations=tolerations,
        priority_class=res.priority_class_name,
    )
    if scratch_volume is not None and scratch_volume.size_limit:
        # Evicted past this rather than filling the node's disk (see scratch.py for the sizes).
        next(v for v in pod_spec["volumes"] if v["name"] == "scratch")["emptyDir"] = {
            "sizeLimit": scratch_volume.size_limit
        }
    job_spec: JSON = {
        "backoffLimit": 0,
        "completions": res.nodes,
        "parallelism": res.nodes,
        "podFailurePolicy": pod_failure_policy(),
        "suspend": suspend,
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(settings.metrics_port),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod_spec,
        },
    }
    if world(spec).distributed:
        pod_spec["containers"][0]["env"] += rendezvous_env(ref, spec, attempt)
    if res.nodes > 1:
        job_spec["completionMode"] = "Indexed"
        # Pods are named <job>-<index> by the Job controller; the Service of that name resolves them.
        pod_spec["subdomain"] = job_name
    if active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = max(1, active_deadline_seconds)
    job_labels = {**pod_labels, **trainer_job_labels(spec.queue_name, spec.workload_priority_class_name)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": ref.namespace,
            "labels": job_labels,
            "annotations": {ANNOTATION_RETRIES_USED: str(retries_used)},
            "ownerReferences": [ref.owner_reference()],
        },
        "spec": job_spec,
    }
