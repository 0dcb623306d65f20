"""Quality with no hyperparameters: each examples/quality set through the operator, base vs tuned.

Each job names only a base model (SmolLM2-135M-Instruct), a training set, a held-out test set and an
output: epochs, learning rate, batch and warm-up are chosen by validation (docs/hyperparameters.md).
Jobs run one after the other through the operator installed on the local environment (`make
install`, which `make bench-quality` runs first), and the scores are read
from each job's status and reports/result.json. Knowledge sets (facts-*) are scored by the lenient
exact match (the answer within the first line), behaviour sets (routing-*) by strict match (the first
line is the label and nothing else).

    python bench/quality_bench.py [--sets facts-100 routing-100 ...] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from benchdocs import read_section, write_section

# The repository root goes on the path first (the script runs as bench/quality_bench.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from localcluster.demo import (
    MODEL_KEY,
    SECRET,
    clear_previous_run,
    create_secret,
    follow,
    kubectl,
    load_env,
    s3_client,
    upload_inputs,
)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "quality"
SETS = ("facts-100", "routing-100", "facts-1000", "routing-1000")


def job(name: str, data_set: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": f"s3://models/{MODEL_KEY}"},
            "dataset": {
                "train": f"s3://datasets/quality/{data_set}/train.jsonl",
                "test": f"s3://datasets/quality/{data_set}/test.jsonl",
            },
            "output": {"uri": f"s3://adapters/quality/{data_set}/"},
            "storage": {"endpoint": endpoint, "credentialsSecretRef": {"name": SECRET}},
        },
    }


def run_one(s3: Any, data_set: str, namespace: str, endpoint: str, timeout: float) -> dict[str, Any]:
    for name in ("train.jsonl", "test.jsonl"):
        s3.upload_file(str(DATA / data_set / name), "datasets", f"quality/{data_set}/{name}")
    name = f"quality-{data_set}"
    body = job(name, data_set, endpoint)
    clear_previous_run(s3, name, namespace, body["spec"]["output"]["uri"])
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(body))
    return row(s3, data_set, follow(name, namespace, timeout))


def collect(s3: Any, data_set: str, namespace: str) -> dict[str, Any]:
    """The row of a job that already ran (e.g. when a long run of several sets was stopped)."""
    obj = json.loads(kubectl("get", "ftj", f"quality-{data_set}", "-n", namespace, "-o", "json"))
    return row(s3, data_set, obj)


def _minutes(obj: dict[str, Any]) -> float:
    """Creation to completion, as the API server recorded them."""
    start = datetime.fromisoformat(obj["metadata"]["creationTimestamp"])
    end = datetime.fromisoformat(obj["status"]["completionTime"])
    return (end - start).total_seconds() / 60


def row(s3: Any, data_set: str, obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    name = obj["metadata"]["name"]
    if status.get("phase") != "Succeeded":
        raise SystemExit(f"{name} ended {status.get('phase')}: {status.get('message')}")
    result = json.loads(
        s3.get_object(Bucket="adapters", Key=f"quality/{data_set}/reports/result.json")["Body"].read()
    )
    scores = result["eval"]["exactMatch"]["heldout"]
    key = "strictMatch" if data_set.startswith("routing") else "exactMatch"
    resolved = (status.get("resolved") or {}).get("hyperparameters") or {}
    return {
        "set": data_set,
        "rule": "strict" if key == "strictMatch" else "lenient",
        "rows": resolved.get("trainingRows"),
        "base": scores["base"][key],
        "tuned": scores["tuned"][key],
        "baseLoss": result["eval"]["validation"]["baseLoss"],
        "tunedLoss": result["eval"]["validation"]["tunedLoss"],
        "hp": (
            f"{resolved.get('epochs')} ep x {resolved.get('stepsPerEpoch')} steps, batch "
            f"{resolved.get('effectiveBatchSize')}, lr {resolved.get('learningRate')}"
        ),
        "published": f"{result.get('publishedStep')}/{result.get('totalSteps')}",
        "minutes": round(_minutes(obj), 1),
    }


HEADER = (
    "| set | match rule | training rows | resolved | published step | base | tuned | val. loss base → tuned "
    "| minutes |\n|---|---|---|---|---|---|---|---|---|"
)


def row_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['set']} | {r['rule']} | {r['rows']} | {r['hp']} | {r['published']} | {r['base']:.2f} "
        f"| {r['tuned']:.2f} | {r['baseLoss']:.3f} → {r['tunedLoss']:.3f} | {r['minutes']} |"
    )


def merged_table(new: dict[str, str], old_section: str) -> str:
    """The table with this run's rows, and earlier runs' rows for the sets not run this time.

    Sets take an hour each on 2 cores, so they are often run one at a time; a rerun of one set must
    not drop the others' results.
    """
    lines = dict(new)
    for line in old_section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in SETS and cells[0] not in lines:
            lines[cells[0]] = line
    return "\n".join([HEADER, *(lines[s] for s in SETS if s in lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/quality_bench.py", description=__doc__)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--endpoint", default="http://127.0.0.1:18333")
    parser.add_argument("--timeout", type=float, default=7200)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument(
        "--collect", action="store_true", help="read the sets' finished jobs instead of running them"
    )
    args = parser.parse_args(argv)
    load_env()
    s3 = s3_client()
    if args.collect:
        rows = [collect(s3, s, args.namespace) for s in args.sets]
    else:
        upload_inputs(s3)
        create_secret(args.namespace)
        rows = [run_one(s3, s, args.namespace, args.endpoint, args.timeout) for s in args.sets]
    print("\n".join([HEADER, *map(row_line, rows)]))
    if args.write_docs:
        text = merged_table({r["set"]: row_line(r) for r in rows}, read_section("quality"))
        body = (
            "Command: `python bench/quality_bench.py --write-docs [--sets SET ...]` (one job at a time, "
            "2 CPU cores, no GPU; a run of some sets keeps the other sets' rows from their last run).\n\n"
            f"{text}"
        )
        write_section("quality", "Quality with no hyperparameters", body)
    failed = [r["set"] for r in rows if r["tuned"] < r["base"] + 0.3]
    if failed:
        print(f"tuned not far above base on: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
