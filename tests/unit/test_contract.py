"""The contract package: TrainerConfig (the JSON document the operator renders), the typed summaries,
and what the package may import (pydantic only: both images install it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from finetune_contract.config import TrainerConfig, load_config
from finetune_contract.outcomes import (
    TERMINATION_LIMIT,
    CheckpointRef,
    Failed,
    FailureReason,
    Succeeded,
    Validated,
    parse_summary,
    render_summary,
)
from pydantic import ValidationError

MINIMAL = {
    "baseModel": {"uri": "s3://models/smollm2/"},
    "dataset": {"train": "s3://data/train.jsonl"},
    "output": {"uri": "s3://out/job"},
}


def test_minimal_config_gets_good_defaults() -> None:
    cfg = TrainerConfig.model_validate(MINIMAL)
    assert cfg.method.type == "lora"
    lora = cfg.method.effective_lora
    assert lora is not None
    assert (lora.r, lora.alpha) == (16, 32)
    assert lora.target_modules == ["all-linear"]
    assert lora.rs_lora is True
    hp = cfg.hyperparameters
    assert (hp.lr_scheduler.transformers_name, hp.packing) == ("cosine", True)
    # Chosen from the data during validation (finetune_contract.hyperparameters), not fixed numbers.
    assert (hp.epochs, hp.learning_rate, hp.batch_size, hp.gradient_accumulation_steps) == (None,) * 4
    assert hp.warmup_ratio is None
    assert hp.patience == 0  # no early stopping unless asked for
    assert cfg.dataset.validation_split is None
    assert cfg.output_prefix == "s3://out/job/"


def test_floats_as_strings_and_camel_case_keys() -> None:
    doc = {
        **MINIMAL,
        "method": {
            "type": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": "0.1", "targetModules": ["q_proj"]},
        },
        "hyperparameters": {"learningRate": "1e-3", "warmupRatio": "0.1", "earlyStopping": {"patience": 2}},
        "dataset": {"train": "s3://data/t.jsonl", "validationSplit": "0.2", "format": "chat"},
        "checkpointing": {"everySteps": 5, "keep": 2},
        "job": {"namespace": "team-a", "name": "bot", "uid": "u1", "attempt": 1},
        "eval": {"maxExamples": 10, "maxNewTokens": 16},
    }
    cfg = TrainerConfig.model_validate(doc)
    assert cfg.hyperparameters.learning_rate == pytest.approx(1e-3)
    assert cfg.method.lora is not None
    assert cfg.method.lora.dropout == pytest.approx(0.1)
    assert cfg.dataset.validation_split == pytest.approx(0.2)
    assert cfg.hyperparameters.patience == 2
    # Round trip: what the operator renders is what the trainer reads.
    again = TrainerConfig.model_validate(json.loads(cfg.model_dump_json(by_alias=True)))
    assert again == cfg


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"hyperparameters": {"learningRate": "fast"}}, "2e-4"),
        ({"baseModel": {"uri": "/local/path"}}, "baseModel.uri must be s3://"),
        # Unknown keys are refused (an operator newer than the trainer image), not dropped.
        ({"hyperparameters": {"learningRateWarp": "2"}}, "learningRateWarp"),
        ({"hyperparameters": {"epochs": 1.5}}, "epochs"),
        ({"method": {"type": "lora"}, "hyperparameters": {"gradualUnfreezing": True}}, "gradualUnfreezing"),
        ({"method": {"type": "prefix"}}, "lora"),
    ],
)
def test_bad_values_say_what_to_change(patch: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        TrainerConfig.model_validate({**MINIMAL, **patch})


def test_load_config_reports_bad_json(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(path)


@pytest.mark.parametrize(
    "module", ["finetune_contract.config", "finetune_contract.outcomes", "finetune_contract.metrics"]
)
def test_contract_imports_nothing_heavy(module: str) -> None:
    # Both images install the contract: it must not pull in torch, kopf, boto3 or the other side's package.
    heavy = [
        "torch",
        "transformers",
        "kopf",
        "kubernetes",
        "boto3",
        "prometheus_client",
        "finetune_trainer",
        "finetune_operator",
    ]
    code = f"import sys, {module}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_summaries_round_trip_and_fit_a_termination_message() -> None:
    ok = Succeeded(
        step=96,
        total_steps=96,
        adapter_uri="s3://out/job/adapter/",
        sha256="b" * 64,
        report_uri="s3://out/job/reports/result.json",
        checkpoints=[CheckpointRef(step=s) for s in range(0, 100_000, 500)],
    )
    text = render_summary(ok)
    assert len(text.encode()) <= TERMINATION_LIMIT
    back = parse_summary(text)
    assert isinstance(back, Succeeded)
    assert back.adapter_uri == ok.adapter_uri
    assert back.checkpoints[-1].step == 99_500
    long = Failed(
        reason=FailureReason.INVALID_DATASET, exit_code=42, message="é" * 5000, file="train", line=7
    )
    text = render_summary(long)
    assert len(text.encode()) <= TERMINATION_LIMIT
    back = parse_summary(text)
    assert isinstance(back, Failed)
    assert (back.reason, back.file, back.line) == (FailureReason.INVALID_DATASET, "train", 7)
    assert parse_summary(render_summary(Validated(rows=3, tokens=40))) == Validated(rows=3, tokens=40)
    assert parse_summary("") is None
    assert parse_summary("Traceback (most recent call last)") is None
    assert parse_summary('{"result": "Failed", "reason": "SomethingElse", "exitCode": 42}') is None
