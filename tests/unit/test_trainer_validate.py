"""Validation helpers that need no S3: the deterministic split, duplicate handling, and rows a model's
chat template cannot render (the real SmolLM2 tokenizer with hostile templates)."""

from __future__ import annotations

import resource
import time
from typing import Any

import pytest
from finetune_contract.outcomes import FailureReason
from finetune_trainer.data import MAX_ISSUES_PER_FILE, Row
from finetune_trainer.tiny_model import smollm2_tokenizer
from finetune_trainer.validate import Report, _dedupe, _tokenize, split_validation


def rows(n: int) -> list[Row]:
    return [Row(i + 1, {"text": f"row {i}"}) for i in range(n)]


def test_split_is_deterministic_disjoint_and_sized() -> None:
    train, val = split_validation(rows(100), 0.1, seed=42)
    again_train, again_val = split_validation(rows(100), 0.1, seed=42)
    assert [r.line for r in val] == [r.line for r in again_val]
    assert [r.line for r in train] == [r.line for r in again_train]
    assert len(val) == 10
    assert len(train) == 90
    assert not {r.line for r in train} & {r.line for r in val}
    assert [r.line for r in split_validation(rows(100), 0.1, seed=7)[1]] != [r.line for r in val]


def test_split_edge_cases() -> None:
    assert split_validation(rows(5), 0.0, seed=1) == (rows(5), [])
    assert split_validation(rows(1), 0.5, seed=1) == (rows(1), [])
    train, val = split_validation(rows(3), 0.01, seed=1)
    assert (len(train), len(val)) == (2, 1)  # at least one validation row


def test_duplicates_are_dropped_with_a_warning_naming_the_first_line() -> None:
    report = Report()
    data = [Row(1, {"text": "a"}), Row(2, {"text": "b"}), Row(3, {"text": " a "})]
    kept = _dedupe(data, "text", "train", report)
    assert [r.line for r in kept] == [1, 2]
    assert report.valid
    assert report.warnings[0].line == 3
    assert "duplicate of line 1" in report.warnings[0].message
    assert report.info["duplicates"] == {"train": 1}


CHAT = [Row(1, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})]


def _tokenizer_with_template(template: str) -> Any:
    tokenizer = smollm2_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def test_a_chat_template_that_never_ends_is_stopped_and_blamed_on_the_model() -> None:
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    report = Report()
    tokenizer = _tokenizer_with_template(endless)
    started = time.monotonic()
    examples = _tokenize(
        CHAT * 3,
        "chat",
        tokenizer,
        max_len=64,
        name="train",
        report=report,
        template_seconds=0.5,
    )
    assert time.monotonic() - started < 5  # one row's limit, then it stops: the template is at fault
    assert examples == []
    [issue] = report.errors
    assert (issue.file, issue.line, issue.failure_reason) == ("train", 1, FailureReason.INVALID_MODEL)
    assert "took more than 0.5 s" in issue.message
    assert "templateSeconds" in issue.message


@pytest.mark.parametrize(
    "hostile",
    [
        # one huge string; a list and a string that double; text far longer than the row
        "{{ 'x' * 4000000000 }}",
        "{% set ns = namespace(a=[0]) %}{% for i in range(64) %}{% set ns.a = ns.a + ns.a %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% for m in messages %}{{ m['content'] * 3000000 }}{% endfor %}",
    ],
)
def test_a_chat_template_that_allocates_without_bound_is_stopped_and_blamed_on_the_model(
    hostile: str,
) -> None:
    report = Report()
    soft_before = resource.getrlimit(resource.RLIMIT_DATA)
    examples = _tokenize(
        CHAT * 3,
        "chat",
        _tokenizer_with_template(hostile),
        max_len=64,
        name="train",
        report=report,
        template_seconds=30,
        template_memory=64 * 1024**2,
    )
    assert resource.getrlimit(resource.RLIMIT_DATA) == soft_before  # restored for the rest of the pod
    assert examples == []
    [issue] = report.errors
    assert (issue.file, issue.line, issue.failure_reason) == ("train", 1, FailureReason.INVALID_MODEL)
    assert "templateMemoryBytes" in issue.message
    # The budget is only for the template: ordinary rows still render and tokenize under it.
    ok = _tokenize(
        CHAT,
        "chat",
        smollm2_tokenizer(),
        max_len=64,
        name="train",
        report=Report(),
        template_memory=64 * 1024**2,
    )
    assert len(ok) == 1
    assert ok[0].trainable_tokens > 0


def test_a_chat_template_that_raises_is_an_issue_on_the_row_not_a_crash() -> None:
    refusing = "{{ raise_exception('Conversation roles must alternate') }}"
    report = Report()
    _tokenize(CHAT * 80, "chat", _tokenizer_with_template(refusing), max_len=64, name="train", report=report)
    assert "roles must alternate" in report.errors[0].message
    assert report.errors[0].failure_reason == FailureReason.INVALID_DATASET
    # A template that refuses every row reports a bounded number of them.
    assert len(report.errors) == MAX_ISSUES_PER_FILE + 1
