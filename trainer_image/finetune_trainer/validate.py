"""Validate-only mode: everything that can be checked on a CPU before a GPU is held.

Errors (the job cannot succeed as given; exit 42): JSON/schema errors with line numbers,
empty rows, mixed formats, train/validation overlap, rows left with nothing to learn after
truncation to maxSeqLength, an unloadable base model, an unwritable output location.
Warnings (reported, training goes on): duplicated rows (dropped before training), truncated rows.
The same checks run at the start of `train`, so a job that skipped validation fails the same way.
"""

from __future__ import annotations

import logging
import os
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_contract.config import InputLimits, TrainerConfig
from finetune_contract.distributed import World
from finetune_contract.hyperparameters import DataShape, ResolvedHyperparameters, resolve, validation_rows
from finetune_contract.outcomes import FailureReason, TokenStats, Validated
from finetune_contract.spec import DatasetFormat
from finetune_contract.uris import S3Uri

from . import data, ownership
from .deadline import DeadlineExceeded, deadlines
from .exitcodes import InvalidInputError
from .local_model import LocalModel
from .memory_budget import MemoryBudgetExceeded
from .model_loading import check_loadable, fetch_model, load_tokenizer
from .s3io import S3

log = logging.getLogger(__name__)

MAX_LISTED = 50  # issues listed per kind in the report; the counts are always complete


@dataclass
class Prepared:
    """What training needs after validation: the rows, their tokens and the tokenizer."""

    fmt: data.Format
    tokenizer: Any
    model: LocalModel
    train_rows: list[data.Row]
    val_rows: list[data.Row]
    train_examples: list[data.Example]
    val_examples: list[data.Example]
    resolved: ResolvedHyperparameters
    eval_rows: list[data.Row] = field(default_factory=list)
    dataset_sha256: str = ""


@dataclass
class Report:
    errors: list[data.Issue] = field(default_factory=list)
    warnings: list[data.Issue] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    resolved: ResolvedHyperparameters | None = None
    # Sizes the trainer's scratch volume follows (see Validated).
    model_bytes: int | None = None
    dataset_file_bytes: int = 0

    @property
    def valid(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "errorCount": len(self.errors),
            "warningCount": len(self.warnings),
            "errors": [e.as_dict() for e in self.errors[:MAX_LISTED]],
            "warnings": [w.as_dict() for w in self.warnings[:MAX_LISTED]],
            **self.info,
            **({"hyperparameters": self.resolved.model_dump(mode="json")} if self.resolved else {}),
        }

    def failure(self) -> InvalidInputError:
        """The error the run ends with: the first problem's reason, file and line, and the summary."""
        first = self.errors[0]
        return InvalidInputError(
            self.summary(), reason=first.failure_reason, file=first.file, line=first.line
        )

    def validated(self) -> Validated:
        """The summary of a passed validation (the operator's estimate reads `tokens`)."""
        stats = TokenStats.model_validate((self.info.get("tokens") or {}).get("train") or {})
        validation = (self.info.get("tokens") or {}).get("validation") or {}
        return Validated(
            message=self.summary(),
            rows=stats.rows,
            validation_rows=int(validation.get("rows", 0)),
            tokens=stats.total_tokens,
            train=stats,
            warnings=len(self.warnings),
            hyperparameters=self.resolved,
            model_bytes=self.model_bytes,
            dataset_file_bytes=self.dataset_file_bytes,
        )

    def summary(self) -> str:
        if self.valid:
            return "dataset, base model and output location are valid"
        first = self.errors[0]
        where = f"{first.file}:{first.line}" if first.line else first.file
        more = (
            f" (and {len(self.errors) - 1} more errors, see reports/validation.json)"
            if len(self.errors) > 1
            else ""
        )
        return f"invalid input: {where}: {first.message}{more}"


def _length_stats(examples: list[data.Example], max_len: int) -> dict[str, Any]:
    if not examples:
        return {"rows": 0}
    lengths = sorted(e.full_length for e in examples)
    return {
        "rows": len(examples),
        "minTokens": lengths[0],
        "meanTokens": round(statistics.fmean(lengths), 1),
        "p50Tokens": lengths[len(lengths) // 2],
        "p95Tokens": lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))],
        "maxTokens": lengths[-1],
        "totalTokens": sum(len(e.input_ids) for e in examples),
        "trainableTokens": sum(e.trainable_tokens for e in examples),
        "truncatedRows": sum(1 for e in examples if e.full_length > max_len),
    }


def _load_file(
    s3: S3, uri: str, name: str, report: Report, *, scratch: Path, limits: InputLimits
) -> data.ParsedFile:
    """Download one dataset file to scratch (its size checked first) and parse it line by line."""
    source = S3Uri.parse(uri)
    try:
        size = s3.size(source)
        report.dataset_file_bytes = max(report.dataset_file_bytes, size)
        if size > limits.max_file_bytes:
            report.errors.append(
                data.Issue(
                    name,
                    None,
                    f"{uri} is {size} bytes, more than the platform's limit of {limits.max_file_bytes}; "
                    "use a smaller file or ask your platform team to raise limits.dataset.maxFileBytes",
                )
            )
            return data.ParsedFile(name)
        local = s3.download_file(source, scratch / "datasets" / f"{name}.jsonl")
    except InvalidInputError as exc:
        # A missing file or bucket belongs in the report, next to every other problem.
        report.errors.append(data.Issue(name, None, f"cannot read {uri}: {exc}", reason=_denied(exc)))
        return data.ParsedFile(name)
    try:
        with local.open("rb") as stream:
            parsed = data.parse_jsonl_stream(stream, name, limits)
    finally:
        local.unlink(missing_ok=True)  # the rows are parsed; scratch is for the model
    report.errors.extend(parsed.errors)
    return parsed


def _denied(exc: InvalidInputError) -> FailureReason | None:
    """AccessDenied says more than the input's own reason; anything else is the input's fault."""
    return exc.reason if exc.reason is FailureReason.ACCESS_DENIED else None


def _check_rows(parsed: data.ParsedFile, fmt: data.Format, report: Report) -> list[data.Row]:
    good = []
    for row in parsed.rows:
        problem = data.check_row(row.data, fmt)
        if problem is None:
            good.append(row)
        else:
            report.errors.append(data.Issue(parsed.name, row.line, problem))
    return good


def _dedupe(rows: list[data.Row], fmt: data.Format, name: str, report: Report) -> list[data.Row]:
    seen: dict[str, int] = {}
    kept = []
    duplicates = 0
    for row in rows:
        key = data.row_fingerprint(row.data, fmt)
        if key in seen:
            duplicates += 1
            report.warnings.append(
                data.Issue(
                    name, row.line, f"duplicate of line {seen[key]}; dropped (remove it from the file)"
                )
            )
            continue
        seen[key] = row.line
        kept.append(row)
    report.info.setdefault("duplicates", {})[name] = duplicates
    return kept


def _tokenize(
    rows: list[data.Row],
    fmt: data.Format,
    tokenizer: Any,
    *,
    max_len: int,
    name: str,
    report: Report,
    template_seconds: float = InputLimits().template_seconds,
    template_memory: int = InputLimits().template_memory_bytes,
) -> list[data.Example]:
    examples = []
    problems = 0
    with deadlines(template_seconds) as deadline:
        for row in rows:
            if problems >= data.MAX_ISSUES_PER_FILE:
                report.errors.append(
                    data.Issue(name, row.line, f"stopped after {problems} rows that could not be tokenized")
                )
                break
            try:
                with deadline.limit():
                    example = data.tokenize_row(
                        row.data, fmt, tokenizer, max_len, template_memory=template_memory
                    )
            except ValueError as exc:
                report.errors.append(data.Issue(name, row.line, str(exc)))
                problems += 1
                continue
            except (DeadlineExceeded, MemoryBudgetExceeded) as exc:
                # The template, not the row, is at fault: one row is enough to say so.
                limit = (
                    "limits.dataset.templateSeconds"
                    if isinstance(exc, DeadlineExceeded)
                    else "limits.dataset.templateMemoryBytes"
                )
                report.errors.append(
                    data.Issue(
                        name,
                        row.line,
                        f"the model's chat template {exc} to render this row (the platform's limit, "
                        f"{limit}); fix or replace the template in the model's tokenizer_config.json",
                        reason=FailureReason.INVALID_MODEL,
                    )
                )
                break
            except Exception as exc:
                # Jinja errors, raise_exception() in the template (e.g. "roles must alternate"), or a
                # template that expects fields the row lacks.
                report.errors.append(
                    data.Issue(
                        name,
                        row.line,
                        f"the model's chat template refused this row ({type(exc).__name__}: "
                        f"{str(exc)[:300]}); make the row fit the template",
                    )
                )
                problems += 1
                continue
            if example.trainable_tokens == 0:
                report.errors.append(
                    data.Issue(
                        name,
                        row.line,
                        f"nothing left to learn after truncation to maxSeqLength={max_len} "
                        f"({example.full_length} tokens); shorten the prompt or raise maxSeqLength",
                    )
                )
            elif example.truncated:
                report.warnings.append(
                    data.Issue(
                        name, row.line, f"{example.full_length} tokens, truncated to maxSeqLength={max_len}"
                    )
                )
            examples.append(example)
    return examples


def split_validation(
    rows: list[data.Row], fraction: float | None, seed: int
) -> tuple[list[data.Row], list[data.Row]]:
    """Deterministic split (same seed, same rows → same split, also after a restart); `fraction` is
    dataset.validationSplit, None for the automatic size (see `validation_rows`)."""
    n_val = validation_rows(len(rows), fraction)
    if n_val == 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)  # noqa: S311  (a reproducible split, not a secret)
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val_idx], [
        r for i, r in enumerate(rows) if i in val_idx
    ]


def check_output_writable(s3: S3, cfg: TrainerConfig, report: Report) -> None:
    """The output prefix is writable with the job's credentials, and this job's (see ownership.py)."""
    probe = S3Uri.parse(cfg.output_prefix).join("reports/.write-probe")
    try:
        s3.put_bytes(probe, b"probe")
        s3.delete(probe)
        problem = ownership.check_and_claim(s3, cfg)
    except InvalidInputError as exc:
        report.info["output"] = {"uri": cfg.output.uri, "writable": False}
        report.errors.append(
            data.Issue("output", None, f"output.uri is not writable: {exc}", reason=_denied(exc))
        )
        return
    owner = ownership.identity(cfg) if problem is None else None
    report.info["output"] = {"uri": cfg.output.uri, "writable": True, "owner": owner}
    if problem is not None:
        report.errors.append(data.Issue("output", None, problem))


def run_checks(cfg: TrainerConfig, s3: S3, scratch: Path, full_model: bool) -> tuple[Report, Prepared | None]:
    """All checks; returns the report and, when valid, the prepared data for training."""
    report = Report()
    hp = cfg.hyperparameters
    check_output_writable(s3, cfg, report)

    model: LocalModel | None = None
    tokenizer: Any = None
    try:
        model = fetch_model(s3, cfg.base_model, scratch / "model", weights=full_model)
        report.model_bytes = model.weight_bytes
        report.info["baseModel"] = {"uri": cfg.base_model.uri, "loadable": True, **check_loadable(model)}
        tokenizer = load_tokenizer(model)
    except InvalidInputError as exc:
        # Keep going: the dataset checks below still tell the user everything else to fix.
        report.info["baseModel"] = {"uri": cfg.base_model.uri, "loadable": False}
        report.errors.append(data.Issue("baseModel", None, str(exc), reason=_denied(exc)))

    train_file = _load_file(s3, cfg.dataset.train, "train", report, scratch=scratch, limits=cfg.limits)
    val_file = (
        _load_file(s3, cfg.dataset.validation, "validation", report, scratch=scratch, limits=cfg.limits)
        if cfg.dataset.validation
        else None
    )
    first = next((r for r in train_file.rows if data.detect_format(r.data)), None)
    fmt: data.Format | None = (
        data.as_format(cfg.dataset.format)
        if cfg.dataset.format is not DatasetFormat.AUTO
        else (data.detect_format(first.data) if first else None)
    )
    report.info["format"] = fmt
    if fmt is None:
        report.errors.append(
            data.Issue(
                "train",
                None,
                "no usable rows: expected JSONL with 'messages', 'prompt'+'completion' or 'text'",
            )
        )
        return report, None

    train_rows = _dedupe(_check_rows(train_file, fmt, report), fmt, "train", report)
    if val_file is not None:
        val_rows = _dedupe(_check_rows(val_file, fmt, report), fmt, "validation", report)
        train_keys = {data.row_fingerprint(r.data, fmt): r.line for r in train_rows}
        overlap = [r for r in val_rows if data.row_fingerprint(r.data, fmt) in train_keys]
        for row in overlap:
            key = data.row_fingerprint(row.data, fmt)
            report.errors.append(
                data.Issue(
                    "validation",
                    row.line,
                    f"same as train line {train_keys[key]}: validation rows must not appear in train "
                    "(the validation loss would be meaningless); remove it from one of the files",
                )
            )
        report.info["overlap"] = len(overlap)
    else:
        train_rows, val_rows = split_validation(train_rows, cfg.dataset.validation_split, hp.seed)
        report.info["overlap"] = 0
    if not train_rows:
        report.errors.append(data.Issue("train", None, "no valid training rows"))

    if model is None or tokenizer is None:
        return report, None  # token statistics need the model's tokenizer
    template_seconds = cfg.limits.template_seconds
    template_memory = cfg.limits.template_memory_bytes
    train_examples = _tokenize(
        train_rows,
        fmt,
        tokenizer,
        max_len=hp.max_seq_length,
        name="train",
        report=report,
        template_seconds=template_seconds,
        template_memory=template_memory,
    )
    # Rows split off train keep their train line numbers, so they are reported as train's.
    val_name = "validation" if cfg.dataset.validation else "train"
    val_examples = _tokenize(
        val_rows,
        fmt,
        tokenizer,
        max_len=hp.max_seq_length,
        name=val_name,
        report=report,
        template_seconds=template_seconds,
        template_memory=template_memory,
    )
    report.info["files"] = {
        "train": {
            "uri": cfg.dataset.train,
            "rows": len(train_file.rows),
            "blankLines": train_file.blank_lines,
        },
        "validation": (
            {"uri": cfg.dataset.validation, "rows": len(val_file.rows), "blankLines": val_file.blank_lines}
            if val_file
            else {
                "splitFrom": "train",
                "fraction": cfg.dataset.validation_split or "auto",
                "rows": len(val_rows),
            }
        ),
    }
    train_stats = _length_stats(train_examples, hp.max_seq_length)
    report.info["tokens"] = {
        "maxSeqLength": hp.max_seq_length,
        "train": train_stats,
        "validation": _length_stats(val_examples, hp.max_seq_length),
    }
    resolved = resolve(
        hp,
        cfg.method.type,
        DataShape(rows=len(train_examples), p95_tokens=train_stats.get("p95Tokens", 0)),
        # Every pod of the job gets the world's shape (the validation pod too, so its numbers hold).
        world_size=World.from_env(os.environ).size,
    )
    report.resolved = resolved

    eval_rows: list[data.Row] = []
    if cfg.dataset.test:
        eval_file = _load_file(s3, cfg.dataset.test, "test", report, scratch=scratch, limits=cfg.limits)
        eval_rows = _check_rows(eval_file, fmt, report)

    if not report.valid:
        return report, None
    import hashlib

    digest = hashlib.sha256()
    for row in train_rows + val_rows:
        digest.update(data.row_fingerprint(row.data, fmt).encode())
    return report, Prepared(
        fmt=fmt,
        tokenizer=tokenizer,
        model=model,
        train_rows=train_rows,
        val_rows=val_rows,
        train_examples=train_examples,
        val_examples=val_examples,
        resolved=resolved,
        eval_rows=eval_rows,
        dataset_sha256=digest.hexdigest(),
    )
