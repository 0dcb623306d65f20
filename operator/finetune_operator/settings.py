"""Operator configuration, read once at start from the environment (FTO_*).

Every knob has a default that works in a cluster; tests and the local environment override a few
(the stub trainer image, short poll intervals). Values are validated here so that a typo stops the
operator at start with a message, not in the middle of a reconcile.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from finetune_contract.config import InputLimits

DEFAULT_TRAINER_IMAGE: Final = "finetune-operator/trainer:0.1.0"
DEFAULT_PRICE_CONFIGMAP: Final = "finetune-operator-prices"
FINALIZER: Final = "finetune.dev/finalizer"
ANNOTATION_PREFIX: Final = "finetune.dev"


def _int(env: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    raw = env.get(key, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise ValueError(f"{key} must be an integer, not {raw!r}") from err
    if value < minimum:
        raise ValueError(f"{key} must be at least {minimum}, not {value}")
    return value


def _float(env: Mapping[str, str], key: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(key, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as err:
        raise ValueError(f"{key} must be a number, not {raw!r}") from err
    if value < minimum:
        raise ValueError(f"{key} must be at least {minimum}, not {value}")
    return value


def _url(env: Mapping[str, str], key: str) -> str:
    """An http(s) URL without a trailing "/" (empty when unset)."""
    raw = env.get(key, "").strip()
    if raw and not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", raw):
        raise ValueError(
            f"{key} must be an http:// or https:// URL without query or credentials, not {raw!r}"
        )
    return raw.rstrip("/")


def _labels(raw: str, key: str) -> dict[str, str]:
    """`k=v,k2=v2` -> dict (for node selectors given in one variable)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"{key} must look like key=value,key2=value2, not {raw!r}")
        out[k] = v
    return out


def _input_limits(env: Mapping[str, str]) -> InputLimits:
    d = InputLimits()
    return InputLimits(
        max_file_bytes=_int(env, "FTO_DATASET_MAX_FILE_BYTES", d.max_file_bytes, 1),
        max_rows=_int(env, "FTO_DATASET_MAX_ROWS", d.max_rows, 1),
        max_line_bytes=_int(env, "FTO_DATASET_MAX_LINE_BYTES", d.max_line_bytes, 1),
        max_json_depth=_int(env, "FTO_DATASET_MAX_JSON_DEPTH", d.max_json_depth, 2),
        template_seconds=_float(env, "FTO_TEMPLATE_SECONDS", d.template_seconds, 0.1),
        template_memory_bytes=_int(env, "FTO_TEMPLATE_MEMORY_BYTES", d.template_memory_bytes, 16 * 1024**2),
    )


@dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    # Where the operator runs; the price ConfigMap lives here.
    operator_namespace: str = "finetune-operator"
    price_configmap: str = DEFAULT_PRICE_CONFIGMAP
    # Used when spec.storage.endpoint is unset (empty: the AWS default endpoints).
    s3_endpoint: str = ""
    # The Hugging Face Hub (or an on-prem mirror / proxy of it) that hf:// base models come from;
    # HF_ENDPOINT in their pods. Empty: huggingface.co.
    hf_endpoint: str = ""
    metrics_port: int = 9400
    # Seconds between re-reconciles of a job when nothing happened (child events wake it sooner).
    resync_seconds: float = 30.0
    # Seconds between /metrics scrapes of a running trainer.
    progress_interval: float = 10.0
    scrape_timeout: float = 2.0
    # A running trainer whose step has not moved for this long is Stalled.
    stall_seconds: int = 1800
    # A trainer Job the operator created that is not in its index after this long was deleted by hand.
    job_visible_grace_seconds: float = 60.0
    # A pod that cannot pull its image for this long fails the job (ImagePull).
    image_pull_timeout: int = 600
    # Grace for the trainer to write a checkpoint on SIGTERM (suspend, eviction, deletion).
    termination_grace_seconds: int = 120
    validation_cpu: str = "250m"
    validation_memory: str = "512Mi"
    validation_memory_limit: str = "4Gi"
    # Optional node selector for the CPU-only validation pods ("pool=cpu").
    validation_node_selector: dict[str, str] = field(default_factory=dict)
    # A validation pod that has not finished by then is stopped and the job fails (DeadlineExceeded).
    validation_deadline_seconds: int = 1800
    # The validation pod's scratch (the model's small files and one dataset file at a time).
    validation_scratch: str = "8Gi"
    # The smallest sizeLimit of a trainer pod's scratch volume (the rest follows the model's size).
    trainer_scratch_min_bytes: int = 10 * 1024**3
    # Bounds on reading a job's inputs, passed to its pods in the trainer config.
    input_limits: InputLimits = field(default_factory=InputLimits)
    # Namespaces to watch; empty: all namespaces.
    namespaces: tuple[str, ...] = ()
    # Threads for blocking Kubernetes client calls.
    api_workers: int = 16
    # The operator's own /metrics and /healthz (0: off); the host defaults to all interfaces.
    metrics_listen_port: int = 8080
    metrics_listen_host: str = "0.0.0.0"  # noqa: S104 (a pod serves its metrics on its own IP)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        e = os.environ if env is None else env
        return cls(
            trainer_image=e.get("FTO_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
            operator_namespace=e.get("FTO_NAMESPACE") or e.get("POD_NAMESPACE") or "finetune-operator",
            price_configmap=e.get("FTO_PRICE_CONFIGMAP") or DEFAULT_PRICE_CONFIGMAP,
            s3_endpoint=_url(e, "FTO_S3_ENDPOINT"),
            hf_endpoint=_url(e, "FTO_HF_ENDPOINT"),
            metrics_port=_int(e, "FTO_TRAINER_METRICS_PORT", 9400, 1),
            resync_seconds=_float(e, "FTO_RESYNC_SECONDS", 30.0, 0.5),
            progress_interval=_float(e, "FTO_PROGRESS_INTERVAL", 10.0, 0.2),
            scrape_timeout=_float(e, "FTO_SCRAPE_TIMEOUT", 2.0, 0.1),
            stall_seconds=_int(e, "FTO_STALL_SECONDS", 1800, 1),
            image_pull_timeout=_int(e, "FTO_IMAGE_PULL_TIMEOUT", 600, 1),
            job_visible_grace_seconds=_float(e, "FTO_JOB_VISIBLE_GRACE_SECONDS", 60.0, 1.0),
            termination_grace_seconds=_int(e, "FTO_TERMINATION_GRACE_SECONDS", 120, 1),
            validation_cpu=e.get("FTO_VALIDATION_CPU") or "250m",
            validation_memory=e.get("FTO_VALIDATION_MEMORY") or "512Mi",
            validation_memory_limit=e.get("FTO_VALIDATION_MEMORY_LIMIT") or "4Gi",
            validation_node_selector=_labels(
                e.get("FTO_VALIDATION_NODE_SELECTOR", ""), "FTO_VALIDATION_NODE_SELECTOR"
            ),
            validation_deadline_seconds=_int(e, "FTO_VALIDATION_DEADLINE_SECONDS", 1800, 30),
            validation_scratch=e.get("FTO_VALIDATION_SCRATCH") or "8Gi",
            trainer_scratch_min_bytes=_int(e, "FTO_TRAINER_SCRATCH_MIN_BYTES", 10 * 1024**3, 1024**3),
            input_limits=_input_limits(e),
            namespaces=tuple(n for n in e.get("FTO_NAMESPACES", "").split(",") if n.strip()),
            api_workers=_int(e, "FTO_API_WORKERS", 16, 1),
            metrics_listen_port=_int(e, "FTO_METRICS_PORT", 8080, 0),
            metrics_listen_host=e.get("FTO_METRICS_HOST") or "0.0.0.0",  # noqa: S104
        )
