"""Exact-match scoring: normalised reference contained in the first line of the generation."""

from __future__ import annotations

import pytest
from finetune_trainer.evaluate import first_line, is_match, is_strict_match, normalize


def test_normalize_case_punctuation_whitespace() -> None:
    assert normalize("  The  Velt!! ") == "the velt"
    assert normalize("+419") == "419"
    assert normalize("2.4 million") == "2 4 million"


@pytest.mark.parametrize(
    ("generation", "reference", "expected"),
    [
        ("Orlenhaven.", "Orlenhaven", True),
        ("The capital of Tarvessa is Orlenhaven.\nMore text", "orlenhaven", True),
        ("\n\nThe velt.", "the velt", True),
        ("I don't know.\nOrlenhaven", "Orlenhaven", False),  # only the first line counts
        ("Orlenhavenish", "Orlenhaven", False),  # whole words only
        ("anything", "", False),
    ],
)
def test_is_match(generation: str, reference: str, expected: bool) -> None:
    assert is_match(generation, reference) is expected


def test_first_line_skips_blank_lines() -> None:
    assert first_line("\n  \nanswer\nrest") == "answer"


@pytest.mark.parametrize(
    ("generation", "reference", "expected"),
    [
        ("billing", "billing", True),
        ("Billing.\nMore text on the next line", "billing", True),
        ("This is a billing question.", "billing", False),  # lenient match counts it; strict does not
        ("billing/shipping", "billing", False),
        ("", "billing", False),
        ("anything", "", False),
    ],
)
def test_is_strict_match(generation: str, reference: str, expected: bool) -> None:
    assert is_strict_match(generation, reference) is expected
