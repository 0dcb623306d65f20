"""The order in which the suite's files are handed to pytest-xdist's workers.

`make test` runs files whole on two workers (`--dist loadfile`) and keeps the collection order
(`--no-loadscope-reorder`); this module decides that order. pytest-xdist's own order (files with the
most tests first) put the end-to-end test, one test and the longest of all (a SmolLM2 fine-tune that
keeps both cores busy for about eight minutes), last: it then ran alone while the other worker had
nothing left, and the first minutes, when the other files mostly wait on pods, had idle cores. The
order here: tests/e2e first, then the integration files, then the unit files (many short tests that
fill the end evenly); within each, files with more tests first, as pytest-xdist does."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

TIERS = ("tests/e2e/", "tests/integration/")


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def tier(path: str) -> int:
    return next((i for i, prefix in enumerate(TIERS) if path.startswith(prefix)), len(TIERS))


def run_order(nodeids: Sequence[str]) -> list[int]:
    """Indexes of `nodeids` in run order: each file's tests stay together and in their own order."""
    per_file = Counter(file_of(n) for n in nodeids)
    first_seen: dict[str, int] = {}
    for i, n in enumerate(nodeids):
        first_seen.setdefault(file_of(n), i)

    def key(i: int) -> tuple[int, int, int, int]:
        path = file_of(nodeids[i])
        return (tier(path), -per_file[path], first_seen[path], i)

    return sorted(range(len(nodeids)), key=key)
