"""Validation helpers that need no S3: the deterministic split and duplicate handling."""

from __future__ import annotations

from finetune_trainer.data import Row
from finetune_trainer.validate import Report, _dedupe, split_validation


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
