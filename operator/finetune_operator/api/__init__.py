"""The FineTuneJob API (finetune.dev/v1alpha1) as typed models.

Imports pydantic only (no kopf, no kubernetes client), so the trainer, tools and unit tests can use it.
The CRD in crds/finetune.dev_finetunejobs.yaml is the contract; these models mirror it.
"""

from .conditions import ConditionType, Reason, derive_phase, find_condition, is_true, set_condition
from .spec import (
    Budget,
    Checkpointing,
    Dataset,
    DatasetFormat,
    EarlyStopping,
    FineTuneJobSpec,
    Hyperparameters,
    LoRA,
    LRScheduler,
    Method,
    MethodType,
    Output,
    Resources,
    Retries,
    Storage,
    Toleration,
)
from .status import (
    Checkpoint,
    Condition,
    ConditionStatus,
    Estimate,
    Failure,
    FineTuneJobStatus,
    Metrics,
    Outputs,
    Phase,
    Progress,
    Resolved,
    ResolvedScratch,
    Usage,
    format_eta,
)

GROUP = "finetune.dev"
VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
API_VERSION = f"{GROUP}/{VERSION}"

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Budget",
    "Checkpoint",
    "Checkpointing",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "Dataset",
    "DatasetFormat",
    "EarlyStopping",
    "Estimate",
    "Failure",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "Hyperparameters",
    "LRScheduler",
    "LoRA",
    "Method",
    "MethodType",
    "Metrics",
    "Output",
    "Outputs",
    "Phase",
    "Progress",
    "Reason",
    "Resolved",
    "ResolvedScratch",
    "Resources",
    "Retries",
    "Storage",
    "Toleration",
    "Usage",
    "derive_phase",
    "find_condition",
    "format_eta",
    "is_true",
    "set_condition",
]
