"""Which rank uploads which file of a sharded checkpoint (tests/integration/test_trainer_distributed.py
runs FSDP2 itself on two pods)."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_trainer import fsdp


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
    assert fsdp.resume_problem(sharded, sharded=True) is None
    assert fsdp.resume_problem(single, sharded=False) is None
    assert fsdp.resume_problem(sharded, sharded=False) == (
        "checkpoint-8 is an FSDP2 (sharded) checkpoint of a full fine-tune and this run does not shard"
    )
    assert fsdp.resume_problem(single, sharded=True) == (
        "checkpoint-4 is a single-process (unsharded) checkpoint of a full fine-tune and this run shards"
    )
