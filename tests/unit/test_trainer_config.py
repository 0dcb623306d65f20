"""TrainerConfig: the JSON document the operator renders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from finetune_trainer.config import TrainerConfig, load_config
from pydantic import ValidationError

MINIMAL = {
    "baseModel": {"uri": "s3://models/smollm2/"},
    "dataset": {"train": "s3://data/train.jsonl"},
    "output": {"uri": "s3://out/job"},
}


def test_minimal_config_gets_good_defaults() -> None:
    cfg = TrainerConfig.model_validate(MINIMAL)
    assert cfg.method.type == "lora"
    assert (cfg.method.lora.r, cfg.method.lora.alpha) == (16, 32)
    assert cfg.method.lora.target_modules == ["all-linear"]
    assert cfg.method.lora.rs_lora is True
    hp = cfg.hyperparameters
    assert (hp.learning_rate, hp.lr_scheduler, hp.epochs, hp.packing) == (2e-4, "cosine", 3, True)
    assert cfg.output_prefix == "s3://out/job/"


def test_floats_as_strings_and_camel_case_keys() -> None:
    doc = {
        **MINIMAL,
        "method": {
            "type": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": "0.1", "targetModules": ["q_proj"]},
        },
        "hyperparameters": {"learningRate": "1e-3", "warmupRatio": "0.1", "earlyStopping": {"patience": 2}},
        "dataset": {"train": "s3://d/t.jsonl", "validationSplit": "0.2", "format": "chat"},
        "checkpointing": {"everySteps": 5, "keep": 2},
        "job": {"namespace": "team-a", "name": "bot", "uid": "u1", "attempt": 1},
        "eval": {"maxExamples": 10, "maxNewTokens": 16},
    }
    cfg = TrainerConfig.model_validate(doc)
    assert cfg.hyperparameters.learning_rate == pytest.approx(1e-3)
    assert cfg.method.lora.dropout == pytest.approx(0.1)
    assert cfg.dataset.validation_split == pytest.approx(0.2)
    assert cfg.hyperparameters.early_stopping.patience == 2
    # Round trip: what the operator renders is what the trainer reads.
    again = TrainerConfig.model_validate(json.loads(cfg.model_dump_json(by_alias=True)))
    assert again == cfg


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"hyperparameters": {"learningRate": "fast"}}, "2e-4"),
        ({"baseModel": {"uri": "/local/path"}}, "baseModel.uri must start with s3://"),
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


def test_config_module_does_not_import_torch() -> None:
    # The operator imports this module to render configs and has no torch installed.
    code = "import sys, finetune_trainer.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
