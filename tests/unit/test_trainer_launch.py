"""The launcher's pure parts (finetune_trainer.launch): its plan from the pod's env, and which worker's
failure a pod reports, so that the exit-code contract survives torch elastic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_contract.outcomes import ExitCode, parse_summary
from finetune_trainer import launch


def test_plan_from_the_operators_env() -> None:
    plan = launch.Plan.from_env(
        {
            "PET_NNODES": "2",
            "PET_NPROC_PER_NODE": "4",
            "PET_NODE_RANK": "1",
            "PET_MASTER_ADDR": "bot-a1-0.bot-a1",
            "PET_MASTER_PORT": "23456",
            "FTO_TERMINATION_GRACE_SECONDS": "300",
            "FINETUNE_JOB": "team-a/bot",
            "FINETUNE_ATTEMPT": "3",
        }
    )
    assert plan.world.size == 8
    assert (plan.node_rank, plan.master_addr, plan.master_port) == (1, "bot-a1-0.bot-a1", 23456)
    # Inside the pod's grace period, with a margin for the launcher's own exit.
    assert plan.shutdown_timeout == 300 - launch.GRACE_MARGIN_SECONDS
    assert "/" not in plan.run_id
    assert plan.run_id == "team-a-bot-a3"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PET_NNODES": "2", "PET_NODE_RANK": "2"}, "PET_NODE_RANK=2 is outside 0..1"),
        ({"PET_MASTER_PORT": "http"}, "the launcher's environment is not valid"),
    ],
)
def test_a_bad_plan_says_what_is_wrong(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        launch.Plan.from_env(env)


def test_signals_read_as_a_shell_reports_them() -> None:
    assert launch.exit_code_of(-9) == 137
    assert launch.exit_code_of(-15) == 143
    assert launch.exit_code_of(42) == 42


@pytest.mark.parametrize(
    ("failures", "cause"),
    [
        # An invalid input anywhere is the cause, even when a peer's connection error came first.
        ({0: (1, 10.0), 1: (42, 12.0)}, 1),
        # A worker killed (out of memory) beats the peers that lost it.
        ({0: (1, 5.0), 1: (137, 6.0), 2: (143, 4.0)}, 1),
        # A transient error beats the generic failures it causes.
        ({0: (1, 5.0), 1: (75, 6.0)}, 1),
        # Workers the launcher stopped (76, SIGTERM) are consequences, whatever their time.
        ({0: (76, 1.0), 1: (1, 9.0)}, 1),
        # Equal standing: the earliest, then the lowest rank.
        ({0: (1, 9.0), 1: (1, 3.0)}, 1),
        ({2: (1, 3.0), 1: (1, 3.0)}, 1),
    ],
)
def test_the_pod_reports_the_likeliest_cause(failures: dict[int, tuple[int, float]], cause: int) -> None:
    assert launch.root_cause(failures) == cause


def test_a_worker_without_a_summary_still_leaves_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(path))
    launch._report(None, 137, "trainer worker rank 1 exited 137")
    failed = parse_summary(path.read_text())
    assert failed is not None
    assert json.loads(path.read_text())["exitCode"] == 137
    assert "rank 1 exited 137" in path.read_text()
    launch._report(None, int(ExitCode.PREEMPTED), "stopped by SIGTERM")
    assert json.loads(path.read_text())["result"] == "Preempted"
