"""Which rank uploads which file of a sharded checkpoint (tests/integration/test_trainer_distributed.py
runs FSDP2 itself on two pods)."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_trainer import fsdp
from finetune_trainer.exitcodes import InvalidInputError


@pytest.mark.parametrize(
    ("name", "rank"),
    [
        ("model/__0_0.distcp", 0),
        ("model/__1_0.distcp", 1),
        ("optimizer/__12_0.distcp", 12),
        ("rng_state_3.pth", 3),
        ("model/.metadata", None),
        ("optimizer/.metadata", None),
        ("trainer_state.json", None),
        ("scheduler.pt", None),
        ("rng_state.pth", None),  # a single-process run's
        ("model/x__1_0.distcp", None),
        ("model/__1_0.distcp.tmp", None),
    ],
)
def test_each_rank_owns_its_shards_and_rng_state(name: str, rank: int | None) -> None:
    assert fsdp.owner(name) == rank


def test_a_checkpoint_resumes_only_a_run_that_shards_as_it_did(tmp_path: Path) -> None:
    sharded = tmp_path / "checkpoint-8"
    (sharded / "model").mkdir(parents=True)
    (sharded / "model" / ".metadata").write_bytes(b"x")
    single = tmp_path / "checkpoint-4"
    single.mkdir()
    (single / "model.safetensors").write_bytes(b"x")
    fsdp.check_resumable(sharded, sharded=True)
    fsdp.check_resumable(single, sharded=False)
    with pytest.raises(
        InvalidInputError, match=r"checkpoint-8 is an FSDP2 \(sharded\) checkpoint.*world size"
    ):
        fsdp.check_resumable(sharded, sharded=False)
    with pytest.raises(InvalidInputError, match="checkpoint-4 is a single-process checkpoint"):
        fsdp.check_resumable(single, sharded=True)
