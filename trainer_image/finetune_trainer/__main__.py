"""Entry point: `python -m finetune_trainer {validate|train} --config PATH`.

Exit codes are the contract with the operator (see exitcodes.py). Heavy imports (torch,
transformers) happen inside the steps so that `--help` and config errors are instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from finetune_contract.config import TrainerConfig, load_config
from finetune_contract.distributed import World
from finetune_contract.outcomes import ExitCode, Failed, FailureReason, Succeeded, Validated

from . import threads
from .exitcodes import TrainerError
from .outputs import write_termination_message

log = logging.getLogger("finetune_trainer")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="finetune_trainer", description=__doc__)
    parser.add_argument("mode", choices=["validate", "train"])
    parser.add_argument("--config", required=True, help="the JSON config the operator renders")
    return parser.parse_args(argv)


def _scratch() -> Path:
    scratch = Path(os.environ.get("SCRATCH_DIR", "/scratch"))
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


def _offline_defaults() -> None:
    # The image never reaches a model hub, except to download an hf:// base model (hf_hub.py; the
    # operator sets HF_HUB_OFFLINE=0 for those jobs only). Caches go to scratch because the root
    # filesystem is read-only.
    scratch = os.environ.get("SCRATCH_DIR", "/scratch")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HOME", f"{scratch}/hf")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # With a read-only root filesystem the temp dir must live in scratch and exist before use.
    tmp = os.environ.get("TMPDIR")
    if tmp and tmp.startswith(scratch):
        try:
            Path(tmp).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # Without a writable scratch volume the run fails where it writes, with that path named.
            log.warning("cannot create TMPDIR %s: %s", tmp, exc)


def validate(cfg: TrainerConfig) -> Validated:
    """Validate-only mode: run every check, write reports/validation.json, fail with 42 if invalid."""
    from .s3io import S3
    from .validate import run_checks

    s3 = S3(cfg.storage.endpoint, cfg.storage.region)
    scratch = _scratch()
    report, _ = run_checks(cfg, s3, scratch, full_model=False)
    _write_validation(s3, cfg, scratch, report.as_dict())
    if not report.valid:
        raise report.failure()
    return report.validated()


def _write_validation(s3: Any, cfg: TrainerConfig, scratch: Path, payload: dict[str, Any]) -> None:
    from .outputs import write_report

    try:
        write_report(s3, cfg, "validation.json", payload, scratch)
    except TrainerError as exc:
        # An unwritable output is itself reported in the payload; keep the local copy.
        log.warning("could not upload validation.json: %s", exc)


def train(cfg: TrainerConfig, cpu_threads: int) -> Succeeded | None:
    """Validate, then train (resuming from the last complete checkpoint), evaluate and publish.

    In a distributed run this is one worker: rank 0 serves /metrics, writes the reports and publishes;
    the other ranks train their share and return None.
    """
    import torch

    from . import distributed
    from . import train as training
    from .metrics_server import create_metrics, serve
    from .s3io import S3
    from .validate import run_checks

    rank = distributed.Rank.from_env()
    threads.apply_to_torch(cpu_threads)
    preemption = training.Preemption()
    preemption.install()
    distributed.init(rank, "cuda" if torch.cuda.is_available() else "cpu")
    metrics = serve(create_metrics()) if rank.is_main else create_metrics()
    try:
        s3 = S3(cfg.storage.endpoint, cfg.storage.region)
        scratch = _scratch()
        # One download per pod: its other ranks wait, then find the files in place (s3io.download_file).
        if not rank.is_local_main:
            distributed.barrier(rank)
        report, prepared = run_checks(cfg, s3, scratch, full_model=True)
        if rank.is_local_main:
            distributed.barrier(rank)
        if rank.is_main:
            _write_validation(s3, cfg, scratch, report.as_dict())
        if prepared is None:
            raise report.failure()
        run = training.run_training(
            cfg, s3, scratch, prepared, metrics=metrics, preemption=preemption, rank=rank
        )
        if not rank.is_main:
            return None
        return training.publish(cfg, s3, scratch, prepared, run)
    finally:
        metrics.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Arguments first: `--help` needs nothing of the pod (no scratch volume, a read-only root).
    args = _parse_args(argv)
    _offline_defaults()
    # Before torch or the tokenizers are imported: their pools read the sizes when they start.
    cpu_threads = threads.configure(os.environ)
    world = World.from_env(os.environ)
    if args.mode == "train" and world.distributed and "LOCAL_RANK" not in os.environ:
        # This process is the pod's launcher; its workers come back here with LOCAL_RANK set.
        from .launch import launch

        threads.share(os.environ, cpu_threads, world.nproc_per_node)
        try:
            return launch(list(argv if argv is not None else sys.argv[1:]))
        except Exception as exc:
            traceback.print_exc()
            _fail(FailureReason.TRAINER_ERROR, 1, f"the launcher failed: {type(exc).__name__}: {exc}")
            return 1
    try:
        cfg = load_config(args.config)
    except (OSError, ValueError) as exc:
        message = f"invalid config {args.config}: {exc}"
        log.error("%s", message)
        _fail(FailureReason.INVALID_CONFIG, ExitCode.INVALID_INPUT, message)
        return ExitCode.INVALID_INPUT
    summary: Validated | Succeeded | None
    try:
        summary = validate(cfg) if args.mode == "validate" else train(cfg, cpu_threads)
    except TrainerError as exc:
        log.error("%s: %s", exc.reason, exc)
        _fail(exc.reason, exc.exit_code, str(exc), file=exc.file, line=exc.line, checkpoints=exc.checkpoints)
        return exc.exit_code
    except ValueError as exc:
        # Our own checks raise ValueError with what to change: a permanent problem with the spec.
        log.error("invalid input: %s", exc)
        _fail(FailureReason.INVALID_SPEC, ExitCode.INVALID_INPUT, str(exc))
        return ExitCode.INVALID_INPUT
    except Exception as exc:
        traceback.print_exc()
        _fail(FailureReason.TRAINER_ERROR, 1, f"{type(exc).__name__}: {exc}")
        return 1
    if summary is None:
        log.info("done: this rank's share of the training is finished")
        return ExitCode.SUCCESS
    log.info("done: %s", summary.message or summary.result)
    write_termination_message(summary)
    return ExitCode.SUCCESS


def _fail(reason: FailureReason, exit_code: int, message: str, **where: Any) -> None:
    failed = Failed(reason=reason, exit_code=exit_code, message=message, **where)
    if exit_code == ExitCode.PREEMPTED:
        failed = failed.model_copy(update={"result": "Preempted"})
    write_termination_message(failed)


if __name__ == "__main__":
    sys.exit(main())
