"""What the trainer leaves behind: adapter (or model), model card, sha256, reports, summary."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_contract.config import TrainerConfig
from finetune_contract.hyperparameters import ResolvedHyperparameters
from finetune_contract.outcomes import Failed, Succeeded, Validated, render_summary
from finetune_contract.uris import S3Uri

if TYPE_CHECKING:
    from .s3io import S3

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_report(s3: S3, cfg: TrainerConfig, name: str, payload: dict[str, Any], scratch: Path) -> S3Uri:
    """reports/<name> on S3, with a local copy in scratch (kept when S3 is the problem)."""
    body = json.dumps(payload, indent=2, sort_keys=False, default=str).encode()
    local = scratch / "reports" / name
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(body)
    uri = S3Uri.parse(cfg.output_prefix).join("reports", name)
    s3.put_bytes(uri, body, "application/json")
    return uri


def hyperparameters_in_force(cfg: TrainerConfig, resolved: ResolvedHyperparameters) -> dict[str, Any]:
    """Every hyperparameter the run used: the spec's, with the automatic ones filled in."""
    spec = cfg.hyperparameters.model_dump(by_alias=True, mode="json", exclude_none=True)
    return {**spec, **resolved.model_dump(by_alias=True, mode="json")}


def model_card(
    cfg: TrainerConfig,
    dataset_sha256: str,
    metrics: dict[str, Any],
    weight_file: str,
    *,
    hyperparameters: dict[str, Any],
    published_step: int,
) -> str:
    hp = hyperparameters
    method = cfg.method.model_dump(by_alias=True, mode="json")
    base = cfg.base_model.uri
    rows = "\n".join(
        f"| {k} | {v} |" for k, v in metrics.items() if v is not None and not isinstance(v, dict)
    )
    # Without validation rows there is no best evaluation: the last step is what was published.
    chosen = (
        "the evaluation with the lowest validation loss"
        if metrics.get("evalLoss") is not None
        else "the last step: there were no validation rows to choose by"
    )
    return f"""---
library_name: peft
base_model: {base}
tags: [finetune-operator, {cfg.method.type}]
---
# {cfg.job.namespace}/{cfg.job.name}

Fine-tuned with finetune-operator ({cfg.method.type}) from `{base}`.

- Dataset: `{cfg.dataset.train}` (sha256 of the rows used: `{dataset_sha256}`)
- Validation: `{cfg.dataset.validation or "held out of train"}`
- Weights: `{weight_file}`, from step {published_step} of {hp.get("totalSteps")} ({chosen})

## Method
```json
{json.dumps(method, indent=2)}
```

## Hyperparameters
Chosen automatically from the data: {", ".join(hp.get("auto") or []) or "none"}.
```json
{json.dumps(hp, indent=2)}
```

## Metrics
| metric | value |
|---|---|
{rows}

## Use
```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "<this directory>")
```
Serve with vLLM: `--enable-lora --lora-modules {cfg.job.name}=<this directory>`.
"""


def save_adapter(
    model: Any,
    tokenizer: Any,
    cfg: TrainerConfig,
    dest: Path,
    *,
    dataset_sha256: str,
    metrics: dict[str, Any],
    hyperparameters: dict[str, Any],
    published_step: int,
) -> tuple[Path, str]:
    """Save adapter (or the full model), tokenizer + chat template and model card; return weights + sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    adapter_config = dest / "adapter_config.json"
    if adapter_config.exists():
        # The local scratch path means nothing to whoever loads the adapter; the S3 URI does.
        conf = json.loads(adapter_config.read_text())
        conf["base_model_name_or_path"] = cfg.base_model.uri
        adapter_config.write_text(json.dumps(conf, indent=2))
        weights = dest / "adapter_model.safetensors"
    else:
        weights = dest / "model.safetensors"
        if not weights.exists():
            weights = sorted(dest.glob("*.safetensors"))[0]
    card = model_card(
        cfg,
        dataset_sha256,
        metrics,
        weights.name,
        hyperparameters=hyperparameters,
        published_step=published_step,
    )
    (dest / "README.md").write_text(card)
    return weights, sha256_file(weights)


def write_termination_message(summary: Validated | Succeeded | Failed) -> str:
    """Write the typed summary (< 4 KiB) where Kubernetes reads the termination message."""
    text = render_summary(summary)
    path = os.environ.get("TERMINATION_MESSAGE_PATH", "/dev/termination-log")
    outcomes = os.environ.get("FTO_OUTCOME_DIR")
    if outcomes:
        # A worker of a distributed run: the launcher picks which worker's summary the pod reports.
        path = os.path.join(outcomes, f"rank-{os.environ.get('RANK', '0')}.json")
    try:
        Path(path).write_text(text)
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)
    return text
