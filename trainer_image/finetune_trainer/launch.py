"""The launcher of a distributed run: one per pod, starting one trainer worker per GPU through torch
elastic (`torch.distributed.launcher.api`, what `torchrun` runs), with the exit-code contract intact.

Plain `torchrun` would break that contract twice:
- A worker's exit code becomes the launcher's 1, and the Job's podFailurePolicy then retries a spec
  that can never work (42) or charges a preemption to the retry budget (76). Here the pod exits with
  the code of the worker that failed first (a 42 anywhere wins: it is the cause, the others' errors
  are its consequence), and its termination message is that worker's summary.
- SIGTERM (preemption, suspend, a node drain) reaches the workers, which agree on one step, save a
  checkpoint there and exit 76. torch elastic's shutdown waits `shutdown_timeout` before SIGKILL; it is
  set from the pod's grace period, less a margin, so the checkpoint upload has all the time the pod has.

Each worker writes its summary to its own file (FTO_OUTCOME_DIR/rank-N.json) instead of the one
termination log, so a peer that was stopped because another failed cannot overwrite the cause.
The rendezvous is static: node ranks come from the Indexed Job's completion index, the master is
the index-0 pod through the attempt's headless Service (finetune_contract.distributed).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from finetune_contract import distributed as contract
from finetune_contract.outcomes import ExitCode, Failed, FailureReason, render_summary

log = logging.getLogger(__name__)

OUTCOME_DIR_ENV = "FTO_OUTCOME_DIR"
GRACE_ENV = "FTO_TERMINATION_GRACE_SECONDS"
# Kept back from the grace period for the launcher's own exit after its workers have stopped.
GRACE_MARGIN_SECONDS = 10
RENDEZVOUS_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class Plan:
    world: contract.World
    node_rank: int
    master_addr: str
    master_port: int
    run_id: str
    shutdown_timeout: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Plan:
        world = contract.World.from_env(environ)
        try:
            node_rank = int(environ.get(contract.NODE_RANK, "0") or "0")
            port = int(environ.get(contract.MASTER_PORT, "29500") or "29500")
            grace = int(environ.get(GRACE_ENV, "120") or "120")
        except ValueError as exc:
            raise ValueError(f"the launcher's environment is not valid: {exc}") from None
        if not 0 <= node_rank < world.nodes:
            raise ValueError(f"{contract.NODE_RANK}={node_rank} is outside 0..{world.nodes - 1}")
        return cls(
            world=world,
            node_rank=node_rank,
            master_addr=environ.get(contract.MASTER_ADDR, "127.0.0.1") or "127.0.0.1",
            master_port=port,
            # Names a directory of torch elastic's: no slashes (FINETUNE_JOB is namespace/name).
            run_id=f"{environ.get('FINETUNE_JOB', 'run')}-a{environ.get('FINETUNE_ATTEMPT', '0')}".replace(
                "/", "-"
            ),
            shutdown_timeout=max(5, grace - GRACE_MARGIN_SECONDS),
        )


def exit_code_of(status: int) -> int:
    """A worker's exit status as a shell reports it: killed by signal N is 128 + N."""
    return 128 - status if status < 0 else status


def _precedence(code: int) -> int:
    """How surely a failure is the cause rather than a consequence of another rank's: a peer that loses
    its partner fails with a connection error (1), and the workers the launcher stops exit 76 or 143."""
    if code == ExitCode.INVALID_INPUT:
        return 0
    if code > 128 and code != 128 + signal.SIGTERM:
        return 1  # killed: out of memory (137), a crash in native code (139)
    if code == ExitCode.TRANSIENT:
        return 2
    if code not in (ExitCode.PREEMPTED, 128 + signal.SIGTERM):
        return 3
    return 4


def root_cause(failures: Mapping[int, tuple[int, float]]) -> int:
    """The rank whose failure the pod reports, from {rank: (exit code, time)}: the likeliest cause
    (see _precedence), the earliest of those. Times are only as good as torch elastic's error files."""
    return min(failures, key=lambda r: (_precedence(failures[r][0]), failures[r][1], r))


def wait_for_master(host: str, timeout: float) -> None:
    """The index-0 pod's name resolves only once that pod has an address (its DNS record comes with it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the rendezvous host {host} did not resolve within {timeout:.0f}s: {exc}"
                ) from exc
            time.sleep(1.0)


def _outcome(outcome_dir: Path, rank: int) -> str | None:
    path = outcome_dir / f"rank-{rank}.json"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _exit_code(text: str) -> int | None:
    try:
        code = json.loads(text).get("exitCode")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


def _report(text: str | None, code: int, fallback: str) -> None:
    """This pod's termination message: the worker's own summary when it wrote one."""
    if not text:
        reason = FailureReason.PREEMPTED if code == ExitCode.PREEMPTED else FailureReason.TRAINER_ERROR
        failed = Failed(reason=reason, exit_code=code, message=fallback)
        if code == ExitCode.PREEMPTED:
            failed = failed.model_copy(update={"result": "Preempted"})
        text = render_summary(failed)
    # Not outputs.write_termination_message: in this process FTO_OUTCOME_DIR names the workers' files.
    path = os.environ.get("TERMINATION_MESSAGE_PATH", "/dev/termination-log")
    try:
        Path(path).write_text(text)
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)


def launch(argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    """Run `python -m finetune_trainer <argv>` on every local rank; the pod's exit code."""
    env = os.environ if environ is None else environ
    plan = Plan.from_env(env)
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    scratch = Path(env.get("SCRATCH_DIR", "/scratch"))
    outcome_dir = scratch / "outcomes"
    outcome_dir.mkdir(parents=True, exist_ok=True)
    os.environ[OUTCOME_DIR_ENV] = str(outcome_dir)
    local_ranks = [plan.node_rank * plan.world.nproc_per_node + i for i in range(plan.world.nproc_per_node)]
    log.info(
        "launching %d worker(s) on node %d of %d (world size %d), rendezvous %s:%d",
        plan.world.nproc_per_node,
        plan.node_rank,
        plan.world.nodes,
        plan.world.size,
        plan.master_addr,
        plan.master_port,
    )
    if plan.world.nodes > 1:
        wait_for_master(plan.master_addr, RENDEZVOUS_TIMEOUT_SECONDS)
    config = LaunchConfig(
        min_nodes=plan.world.nodes,
        max_nodes=plan.world.nodes,
        nproc_per_node=plan.world.nproc_per_node,
        run_id=plan.run_id,
        rdzv_backend="static",
        rdzv_endpoint=f"{plan.master_addr}:{plan.master_port}",
        rdzv_configs={"rank": plan.node_rank, "timeout": RENDEZVOUS_TIMEOUT_SECONDS},
        # One failure fails the attempt; the operator's next attempt resumes every rank together.
        max_restarts=0,
        # Workers write to the pod's log as they run; torch elastic keeps only its error files here.
        logs_specs=DefaultLogsSpecs(log_dir=str(scratch / "torchelastic")),
        monitor_interval=1.0,
        shutdown_timeout=plan.shutdown_timeout,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "finetune_trainer", *argv)
    except ChildFailedError as exc:
        failures = {rank: (exit_code_of(f.exitcode), float(f.timestamp)) for rank, f in exc.failures.items()}
        rank = root_cause(failures)
        code = failures[rank][0]
        log.error("worker rank %d exited %d; ending the attempt with its code", rank, code)
        _report(_outcome(outcome_dir, rank), code, f"trainer worker rank {rank} exited {code}")
        return code
    except SignalException as exc:
        # The workers received the signal too and had the shutdown timeout to checkpoint; a preempted
        # summary from any of them is this pod's, else the pod still reports a preemption.
        log.warning("%s: the workers were stopped", signal.Signals(exc.sigval).name)
        texts = [t for r in local_ranks if (t := _outcome(outcome_dir, r))]
        preempted = [t for t in texts if _exit_code(t) == ExitCode.PREEMPTED]
        _report(
            next(iter(preempted or texts), None),
            ExitCode.PREEMPTED,
            f"stopped by {signal.Signals(exc.sigval).name} before a checkpoint was saved",
        )
        return int(ExitCode.PREEMPTED)
    # Rank 0's pod carries the run's summary; the other pods' workers leave none.
    text = _outcome(outcome_dir, local_ranks[0])
    if text:
        _report(text, 0, "")
    return int(ExitCode.SUCCESS)
