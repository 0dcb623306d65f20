"""The sections the benchmarks write into docs/benchmarks.md, each between its own markers.

A rerun replaces its section in place and leaves the others as they are; a benchmark that has not
written before appends its section with a heading.
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def read_section(name: str) -> str:
    """The section's current body, or "" when it has not been written."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = DOCS.read_text() if DOCS.exists() else ""
    if begin not in text or end not in text:
        return ""
    return text.split(begin, 1)[1].split(end, 1)[0]


def write_section(name: str, heading: str, body: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"
    else:
        text = f"{text.rstrip()}\n\n## {heading}\n\n{begin}\n{body}\n{end}\n"
    DOCS.write_text(text)
