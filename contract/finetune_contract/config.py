"""`TrainerConfig`: the one JSON document the operator renders (ConfigMap, /etc/finetune/config.json).

It is the FineTuneJob's `TrainingSpec` (the same models, so a field is declared once) plus what only
the pod needs: where a pvc:// claim is mounted, the S3 endpoint, the job's identity, evaluation limits
and the platform's bounds on reading inputs.
Unknown keys are refused (the operator and the trainer image are released together; a trainer that
does not know a setting fails with InvalidConfig instead of ignoring it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from .spec import BaseModelSource, S3Location, TrainingSpec
from .uris import PVC_MOUNT_PATH, parse_hf_uri, parse_pvc_uri
from .wire import WireModel


class TrainerBaseModel(BaseModelSource):
    # pvc:// only: where the pod has the claim mounted (unset: PVC_MOUNT_PATH); the model is at
    # <mountPath>/<path>.
    mount_path: str | None = None

    @model_validator(mode="after")
    def _check_source(self) -> TrainerBaseModel:
        if self.uri.startswith("pvc://"):
            parse_pvc_uri(self.uri)
            if self.mount_path is not None and not self.mount_path.startswith("/"):
                raise ValueError(f"baseModel.mountPath must be an absolute path (got {self.mount_path!r})")
        elif self.uri.startswith("hf://"):
            parse_hf_uri(self.uri)
        return self

    @property
    def local_path(self) -> Path | None:
        """Where a pvc:// model is in this pod (<mountPath>/<path>); None for a model that is fetched."""
        if not self.uri.startswith("pvc://"):
            return None
        _, path = parse_pvc_uri(self.uri)
        root = Path(self.mount_path or PVC_MOUNT_PATH)
        return root / path if path else root


class JobIdentity(WireModel):
    namespace: str = "default"
    name: str = "finetune"
    uid: str = ""
    attempt: Annotated[int, Field(ge=0)] = 0


class EvalSettings(WireModel):
    # Rows scored by exact match of greedy generations (dataset.test when given, else validation).
    max_examples: Annotated[int, Field(ge=0)] = 64
    max_new_tokens: Annotated[int, Field(ge=1)] = 48


class InputLimits(WireModel):
    """Bounds on what a job's inputs may cost to read, set by the platform team (the chart's
    `limits`): a hostile or mistaken file fails validation with the limit named, instead of
    exhausting the validation pod's memory, disk or time."""

    # Each dataset file (train, validation, test), checked before it is downloaded.
    max_file_bytes: Annotated[int, Field(ge=1)] = 2 * 1024**3
    max_rows: Annotated[int, Field(ge=1)] = 2_000_000
    # One JSONL line; a row longer than this is refused without being read whole.
    max_line_bytes: Annotated[int, Field(ge=1)] = 8 * 1024**2
    # Nesting of objects and arrays in one row (a chat row is 4 deep; tool calls a few more).
    max_json_depth: Annotated[int, Field(ge=2)] = 32
    # Rendering one row with the model's chat template (Jinja, sandboxed but otherwise unbounded).
    template_seconds: Annotated[float, Field(gt=0)] = 10.0
    # What rendering one row may allocate; a template that builds huge strings or lists fails as
    # InvalidModel instead of OOM-killing the validation pod (fits in its default 4Gi limit).
    template_memory_bytes: Annotated[int, Field(ge=16 * 1024**2)] = 512 * 1024**2


class TrainerConfig(TrainingSpec):
    base_model: TrainerBaseModel
    storage: S3Location = Field(default_factory=S3Location)
    job: JobIdentity = Field(default_factory=JobIdentity)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    limits: InputLimits = Field(default_factory=InputLimits)


def load_config(path: str | Path) -> TrainerConfig:
    """Read and validate the config file; errors name the field to change."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"config {path} is not valid JSON: {exc}") from exc
    return TrainerConfig.model_validate(data)
