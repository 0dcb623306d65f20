"""The GPU benchmark's CPU mode runs the same three sides end to end (bench/gpu_bench.py): our trainer's
path, transformers.Trainer + peft padded, and grouped by length, each in its own process, and their
first-batch losses agree. On a GPU the same command measures the issue's targets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_cpu_mode_compares_three_sides_on_the_same_data_with_the_same_first_loss() -> None:
    done = subprocess.run(
        [sys.executable, "bench/gpu_bench.py", "--shape", "cpu-tiny", "--steps", "3", "--warmup", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert {"ours", "hf-padded", "hf-grouped"} <= set(rows), done.stdout
    assert "sdpa, rows of 512 tokens" in rows["ours"]  # the CPU kernel plan
    assert "group_by_length" in rows["hf-grouped"]
    assert "first-batch losses agree" in done.stdout
    for side in ("ours", "hf-padded", "hf-grouped"):
        tokens_per_second = rows[side].split("|")[4].strip()
        assert re.fullmatch(r"[\d,]+", tokens_per_second), rows[side]
        assert int(tokens_per_second.replace(",", "")) > 0
    assert "2 timed steps after 1 warm-up" in done.stdout
