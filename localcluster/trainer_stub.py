"""A stand-in trainer for integration tests: `python -m localcluster.trainer_stub {validate|train} --config PATH`.

The node agent runs it for the image `finetune-operator/trainer-stub`. It is built on the trainer's
contract (finetune_contract): the same config model (TrainerConfig), exit codes and failure reasons,
the same typed summaries in the termination message (Validated with rows and tokens, Failed with the
reason, file and line, Succeeded with the adapter and the checkpoints), the trainer's own /metrics
registry (checkpoints included) and the same S3 layout; but it "trains" by counting, so operator tests
take seconds. Every operator behaviour it stands in for is also tested once with the real trainer
(tests/integration/test_operator_trainer.py). It is test tooling, not product.

validate  reads dataset.train from S3 and checks every line is a JSON object with `messages`,
          `prompt` + `completion`, or `text`. A bad line: reports/validation.json, exit 42, reason
          InvalidDataset with file train and the line. A missing object: InvalidDataset; denied access:
          AccessDenied. A pvc:// base model is checked where the pod mounts it, with the trainer's own
          check (finetune_trainer.model_loading.local_model): not there or not a model, exit 42
          (InvalidModel). An hf:// base model is checked with the trainer's own validate-only path
          (finetune_trainer.hf_hub.fetch_hf_model(uri, $SCRATCH_DIR/model, weights=False)), and its errors
          keep the trainer's reasons (InvalidModel, AccessDenied; TransientError exit 75).
          s3:// base models are not looked at.
          Passing: exit 0 with a Validated summary (rows, tokens ~ characters / 4).
train     checks the base model as validate does, serves /metrics on $POD_IP:$METRICS_PORT, advances one
          step every `stepSeconds`, writes `<output>/checkpoints/step-N/COMPLETE` every
          checkpointing.everySteps (and reports them on /metrics), resumes from the last complete
          checkpoint, on SIGTERM writes a checkpoint and exits 76, and at the end writes
          adapter/adapter_model.safetensors, reports/result.json and a Succeeded summary, exit 0.
          Total steps: ceil(rows x epochs / batchSize), capped at 40, unless `totalSteps` is given.

Fault injection, explicit and only through the dataset: a first line

    {"_stub": {"failAttempts": 2, "exitCode": 75, "failAtStep": 2, "stepSeconds": 0.2, "totalSteps": 10}}

makes attempts 1..failAttempts (env FINETUNE_ATTEMPT) exit with `exitCode` once they have done
`failAtStep` steps (exit code 137 is a real SIGKILL of itself, like the OOM killer). All keys are
optional; the line is not a dataset row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from finetune_contract.config import TrainerConfig, load_config
from finetune_contract.hyperparameters import DataShape, ResolvedHyperparameters, resolve
from finetune_contract.outcomes import (
    CheckpointRef,
    ExitCode,
    Failed,
    FailureReason,
    Succeeded,
    TokenStats,
    Validated,
    render_summary,
)
from finetune_contract.uris import HF_SCHEME
from finetune_trainer import ownership
from finetune_trainer.exitcodes import InvalidInputError, TransientIOError
from finetune_trainer.metrics_server import TrainerMetrics, create_metrics, serve
from finetune_trainer.model_loading import local_model
from finetune_trainer.s3io import S3

MAX_STEPS = 40
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled"}
_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


class StubError(Exception):
    def __init__(
        self,
        exit_code: int,
        reason: FailureReason,
        message: str,
        *,
        line: int | None = None,
        step: int | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code, self.reason, self.line, self.step = exit_code, reason, line, step

    def summary(self) -> Failed:
        failed = Failed(
            reason=self.reason,
            exit_code=self.exit_code,
            message=str(self),
            file="train" if self.line is not None else None,
            line=self.line,
            step=self.step,
        )
        return (
            failed.model_copy(update={"result": "Preempted"})
            if self.exit_code == ExitCode.PREEMPTED
            else failed
        )


def terminate(summary: Validated | Succeeded | Failed) -> None:
    path = os.environ.get("TERMINATION_MESSAGE_PATH", "/dev/termination-log")
    try:
        Path(path).write_text(render_summary(summary))
    except OSError as err:
        print(f"cannot write termination message: {err}", file=sys.stderr)


class Store:
    def __init__(self, cfg: TrainerConfig) -> None:
        self.client = boto3.client(
            "s3",
            endpoint_url=cfg.storage.endpoint or os.environ.get("AWS_ENDPOINT_URL") or None,
            region_name=cfg.storage.region or os.environ.get("AWS_DEFAULT_REGION"),
        )
        self.prefix = cfg.output_prefix

    @staticmethod
    def split(uri: str) -> tuple[str, str]:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return bucket, key

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except botocore.exceptions.ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            if code in _DENIED:
                raise StubError(
                    ExitCode.INVALID_INPUT, FailureReason.ACCESS_DENIED, f"{what}: AccessDenied ({code})"
                ) from err
            if code in _MISSING:
                raise StubError(
                    ExitCode.INVALID_INPUT, FailureReason.INVALID_DATASET, f"{what}: not found ({code})"
                ) from err
            raise StubError(ExitCode.TRANSIENT, FailureReason.TRANSIENT_ERROR, f"{what}: {code}") from err
        except botocore.exceptions.BotoCoreError as err:
            raise StubError(ExitCode.TRANSIENT, FailureReason.TRANSIENT_ERROR, f"{what}: {err}") from err

    def get(self, uri: str) -> bytes:
        bucket, key = self.split(uri)
        body = self._call(f"reading {uri}", lambda: self.client.get_object(Bucket=bucket, Key=key))
        return bytes(body["Body"].read())

    def put(self, rel: str, data: bytes) -> str:
        bucket, key = self.split(self.prefix + rel)
        self._call(
            f"writing {self.prefix}{rel}", lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data)
        )
        return self.prefix + rel

    def keys(self, rel: str) -> list[str]:
        bucket, key = self.split(self.prefix + rel)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        out: list[str] = []
        try:
            for page in pages:
                out += [str(o["Key"]) for o in page.get("Contents", [])]
        except botocore.exceptions.ClientError as err:
            raise StubError(
                ExitCode.TRANSIENT, FailureReason.TRANSIENT_ERROR, f"listing {self.prefix}{rel}: {err}"
            ) from err
        return out


def _row_problem(row: object) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    if isinstance(row.get("messages"), list) and row["messages"]:
        return None
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return None
    if isinstance(row.get("text"), str):
        return None
    return "needs `messages`, `prompt` + `completion`, or `text`"


def read_dataset(cfg: TrainerConfig, store: Store) -> tuple[dict[str, Any], int, int]:
    """(stub directives, rows, approximate tokens); StubError(42) naming the first bad line."""
    text = store.get(cfg.dataset.train).decode("utf-8", errors="replace")
    directives: dict[str, Any] = {}
    rows = tokens = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problem: str | None = f"not valid JSON ({err.msg})"
        else:
            if number == 1 and isinstance(row, dict) and isinstance(row.get("_stub"), dict):
                directives = row["_stub"]
                continue
            problem = _row_problem(row)
        if problem:
            message = f"invalid input: train:{number}: {problem}"
            report = {
                "valid": False,
                "errorCount": 1,
                "errors": [{"file": "train", "line": number, "reason": "InvalidDataset", "message": problem}],
            }
            store.put("reports/validation.json", json.dumps(report).encode())
            raise StubError(ExitCode.INVALID_INPUT, FailureReason.INVALID_DATASET, message, line=number)
        rows += 1
        tokens += max(1, len(line) // 4)
    if rows == 0:
        raise StubError(
            ExitCode.INVALID_INPUT,
            FailureReason.INVALID_DATASET,
            f"invalid input: train: {cfg.dataset.train} has no rows",
        )
    return directives, rows, tokens


@contextmanager
def trainer_errors(*, reason: FailureReason | None = None, prefix: str = "") -> Iterator[None]:
    """The trainer's own errors, raised by the finetune_trainer code the stub runs, as the stub's exits:
    invalid input 42 (with `reason` instead of the error's own, when given), transient 75."""
    try:
        yield
    except InvalidInputError as err:
        raise StubError(ExitCode.INVALID_INPUT, reason or err.reason, f"{prefix}{err}") from err
    except TransientIOError as err:
        raise StubError(ExitCode.TRANSIENT, err.reason, str(err)) from err


def check_base_model(cfg: TrainerConfig) -> None:
    """A pvc:// model must be in the pod, mounted where the config says; an hf:// model must pass the
    trainer's validate-only Hub check (StubError 42 or 75 otherwise)."""
    if cfg.base_model.uri.startswith(HF_SCHEME):
        check_hf_model(cfg.base_model.uri)
        return
    path = cfg.base_model.local_path
    if path is None:
        return
    with trainer_errors(reason=FailureReason.INVALID_MODEL):
        local_model(path, cfg.base_model.uri)


def check_hf_model(uri: str) -> None:
    """The real trainer's validate-only download (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE from the pod)."""
    # Imported here: huggingface_hub and transformers are only needed for hf:// models.
    from finetune_trainer.hf_hub import fetch_hf_model

    scratch = Path(os.environ.get("SCRATCH_DIR", "/scratch"))
    # The prefix as finetune_trainer.validate.run_checks files it and __main__ reports it.
    with trainer_errors(prefix="invalid input: baseModel: "):
        fetch_hf_model(uri, scratch / "model", weights=False)


def claim_output(cfg: TrainerConfig) -> None:
    """The real trainer's claim on output.uri (finetune_trainer.ownership): one prefix, one job."""
    with trainer_errors():
        problem = ownership.check_and_claim(S3(cfg.storage.endpoint, cfg.storage.region), cfg)
    if problem is not None:
        raise StubError(
            ExitCode.INVALID_INPUT, FailureReason.INVALID_OUTPUT, f"invalid input: output: {problem}"
        )


def resolved_hyperparameters(cfg: TrainerConfig, rows: int, tokens: int) -> ResolvedHyperparameters:
    """The contract's resolution, from the stub's row count and mean length (it keeps no split)."""
    shape = DataShape(rows=rows, p95_tokens=tokens // max(rows, 1))
    return resolve(cfg.hyperparameters, cfg.method.type, shape)


def validate(cfg: TrainerConfig, store: Store) -> Validated:
    check_base_model(cfg)
    _, rows, tokens = read_dataset(cfg, store)
    claim_output(cfg)
    store.put("reports/validation.json", json.dumps({"valid": True, "rows": rows, "tokens": tokens}).encode())
    stats = TokenStats(rows=rows, total_tokens=tokens)
    return Validated(
        message=f"dataset valid: {rows} rows",
        rows=rows,
        tokens=tokens,
        train=stats,
        hyperparameters=resolved_hyperparameters(cfg, rows, tokens),
    )


class Preempted:
    def __init__(self) -> None:
        self.flag = False
        signal.signal(signal.SIGTERM, self._on)

    def _on(self, *_: object) -> None:
        self.flag = True


def complete_checkpoints(store: Store) -> list[int]:
    steps = []
    for key in store.keys("checkpoints/"):
        parts = key.split("/")
        if parts[-1] == "COMPLETE" and parts[-2].startswith("step-") and parts[-2][5:].isdigit():
            steps.append(int(parts[-2][5:]))
    return sorted(steps)


def checkpoint(store: Store, step: int, saved: list[CheckpointRef], metrics: TrainerMetrics) -> None:
    store.put(f"checkpoints/step-{step}/state.json", json.dumps({"step": step}).encode())
    created = datetime.now(UTC).replace(microsecond=0)
    marker = {"step": step, "files": ["state.json"], "createdAt": created.strftime("%Y-%m-%dT%H:%M:%SZ")}
    store.put(f"checkpoints/step-{step}/COMPLETE", json.dumps(marker).encode())
    saved.append(CheckpointRef(step=step, complete=True, created_at=created))
    metrics.report_checkpoints(saved)


def _injected_reason(code: int) -> FailureReason:
    if code == ExitCode.TRANSIENT:
        return FailureReason.TRANSIENT_ERROR
    if code == ExitCode.INVALID_INPUT:
        return FailureReason.INVALID_SPEC
    return FailureReason.TRAINER_ERROR


def train(cfg: TrainerConfig, store: Store) -> Succeeded:
    stop = Preempted()
    # The real trainer's registry, so the stub can never drift from the metric names of the contract.
    metrics = serve(create_metrics())
    try:
        check_base_model(cfg)
        directives, rows, tokens = read_dataset(cfg, store)
        hp = resolved_hyperparameters(cfg, rows, tokens)
        total = int(directives.get("totalSteps") or min(MAX_STEPS, hp.total_steps))
        step_seconds = float(directives.get("stepSeconds", 0.2))
        attempt = int(os.environ.get("FINETUNE_ATTEMPT", "1") or 1)
        failing = attempt <= int(directives.get("failAttempts", 0))
        fail_after = int(directives.get("failAtStep", 2))
        saved = [CheckpointRef(step=s) for s in complete_checkpoints(store)]
        metrics.report_checkpoints(saved)
        start = step = saved[-1].step if saved else 0
        metrics.total_steps.set(total)
        tokens_per_step = tokens * hp.epochs / max(total, 1)
        while step < total:
            if stop.flag:
                checkpoint(store, step, saved, metrics)
                raise StubError(
                    ExitCode.PREEMPTED,
                    FailureReason.PREEMPTED,
                    f"SIGTERM at step {step}; checkpoint saved",
                    step=step,
                )
            if failing and step - start >= fail_after:
                code = int(directives.get("exitCode", ExitCode.TRANSIENT))
                message = f"stub: injected failure (exit {code}) at step {step} of attempt {attempt}"
                error = StubError(code, _injected_reason(code), message, step=step)
                terminate(error.summary())
                if code == 137:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise error
            time.sleep(step_seconds)
            step += 1
            loss = 2.5 * math.exp(-3 * step / total) + 0.3
            metrics.step.set(step)
            metrics.epoch.set(hp.epochs * step / total)
            metrics.train_loss.set(loss)
            metrics.tokens_per_second.set(tokens_per_step / step_seconds if step_seconds else 0)
            metrics.samples.set(step * hp.effective_batch_size)
            metrics.tokens.set(step * tokens_per_step)
            metrics.learning_rate.set(hp.learning_rate * (1 - step / total))
            if step % cfg.checkpointing.every_steps == 0 and step < total:
                checkpoint(store, step, saved, metrics)
                metrics.eval_loss.set(loss + 0.05)
        with trainer_errors():
            ownership.verify_claim(S3(cfg.storage.endpoint, cfg.storage.region), cfg)
        weights = hashlib.sha256(f"{cfg.job.namespace}/{cfg.job.name}".encode()).digest()
        adapter = store.put("adapter/adapter_model.safetensors", weights)
        store.put("adapter/adapter_config.json", json.dumps({"peft_type": "LORA", "stub": True}).encode())
        summary = Succeeded(
            step=step,
            total_steps=total,
            epoch=float(hp.epochs),
            train_loss=round(2.5 * math.exp(-3) + 0.3, 4),
            resumed_from_step=start,
            published_step=step,
            hyperparameters=hp,
            adapter_uri=adapter.rsplit("/", 1)[0] + "/",
            sha256=hashlib.sha256(weights).hexdigest(),
            report_uri=store.prefix + "reports/result.json",
            checkpoints=saved,
        )
        store.put("reports/result.json", summary.model_dump_json(by_alias=True).encode())
        return summary
    finally:
        metrics.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainer_stub", description=__doc__)
    parser.add_argument("mode", choices=["validate", "train"])
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except (OSError, ValueError) as err:
        terminate(
            Failed(reason=FailureReason.INVALID_CONFIG, exit_code=ExitCode.INVALID_INPUT, message=str(err))
        )
        return ExitCode.INVALID_INPUT
    summary: Validated | Succeeded
    try:
        store = Store(cfg)
        summary = validate(cfg, store) if args.mode == "validate" else train(cfg, store)
    except StubError as err:
        terminate(err.summary())
        print(f"{err.reason}: {err}", file=sys.stderr)
        return err.exit_code
    terminate(summary)
    print(summary.model_dump_json(by_alias=True))
    return ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
