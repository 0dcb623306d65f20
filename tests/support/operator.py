"""Run the operator as a real process (so tests can SIGKILL and restart it) and build test jobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.support import images
from tests.support.kube import kubectl, kubectl_json, wait_for

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "finetune.dev_finetunejobs.yaml"
STUB_IMAGE = images.STUB
SECRET = "s3-creds"
# The CPU a test's trainer pod asks for. The suite runs two tests at once on two cores, and the trainer
# sizes its thread pools from its pod's CPU (finetune_trainer.threads): a pod with no request gets one
# thread per core, and two such trainers side by side spent 65% more CPU on the same run (OpenMP
# threads spinning for a core the other holds) than with one thread each.
TRAINER_CPU = "1"


def apply_crd() -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/finetunejobs.finetune.dev", "--timeout=60s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    """`python -m finetune_operator` watching one namespace, logging to a file under .dev/logs/."""

    def __init__(self, namespace: str, **env: str) -> None:
        self.namespace = namespace
        logs = REPO / ".dev" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"operator-{namespace}-{uuid.uuid4().hex[:6]}.log"
        self.env = {
            **os.environ,
            "FTO_TRAINER_IMAGE": STUB_IMAGE,
            "FTO_NAMESPACES": namespace,
            "FTO_NAMESPACE": namespace,
            "FTO_PROGRESS_INTERVAL": "1",
            "FTO_RESYNC_SECONDS": "5",
            "FTO_TERMINATION_GRACE_SECONDS": "10",
            "FTO_METRICS_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finetune_operator"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizer handling, like a node failure."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        """The operator's own /metrics (Prometheus text)."""
        url = f"http://127.0.0.1:{self.env['FTO_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_operator(namespace: str, **env: str) -> Iterator[Operator]:
    op = Operator(namespace, **env)
    op.start()
    try:
        yield op
    finally:
        # Delete the jobs while the operator runs: it owns the finalizer that lets them go.
        if not op.alive():
            op.start()
        kubectl(
            "delete", "finetunejobs", "--all", "-n", namespace, "--wait=true", "--timeout=60s", check=False
        )
        op.stop()


def setup_namespace(namespace: str, s3_env: dict[str, str], prices: dict[str, str] | None = None) -> None:
    """The S3 Secret (the operator only references it) and the price table; the namespace fixture has
    already made the namespace enforce Pod Security "restricted"."""
    kubectl(
        "create",
        "secret",
        "generic",
        SECRET,
        "-n",
        namespace,
        f"--from-literal=AWS_ACCESS_KEY_ID={s3_env['AWS_ACCESS_KEY_ID']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_env['AWS_SECRET_ACCESS_KEY']}",
    )
    data = prices or {"default": "2.00", "default.tokensPerSecond": "1000"}
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "finetune-operator-prices", "namespace": namespace},
        "data": data,
    }
    kubectl("apply", "-f", "-", input=json.dumps(cm))


def s3_client(s3_env: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
    )


def chat_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": f"answer {i}."},
            ]
        }
        for i in range(n)
    ]


def upload_dataset(
    s3_env: dict[str, str], bucket: str, key: str, rows: list[Any], stub: dict[str, Any] | None = None
) -> str:
    lines = ([json.dumps({"_stub": stub})] if stub else []) + [
        r if isinstance(r, str) else json.dumps(r) for r in rows
    ]
    s3_client(s3_env).put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
    return f"s3://{bucket}/{key}"


def job_manifest(
    name: str,
    namespace: str,
    *,
    bucket: str,
    train: str,
    endpoint: str,
    gpus: int = 1,
    epochs: int = 1,
    batch_size: int = 4,
    every_steps: int = 3,
    retries: int = 2,
    suspend: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"uri": f"s3://{bucket}/models/tiny/"},
        "dataset": {"train": train},
        "output": {"uri": f"s3://{bucket}/out/{name}/"},
        "storage": {"endpoint": endpoint, "credentialsSecretRef": {"name": SECRET}},
        "hyperparameters": {"epochs": epochs, "batchSize": batch_size, "lrScheduler": "cosine"},
        "resources": {"gpus": gpus},
        "checkpointing": {"everySteps": every_steps},
        "retries": {"limit": retries},
        "suspend": suspend,
    }
    spec.update(extra or {})
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def apply(obj: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))


def ftj(name: str, namespace: str) -> dict[str, Any]:
    return dict(kubectl_json("get", "finetunejob", name, "-n", namespace))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def wait_phase(
    name: str, namespace: str, phases: set[str] | str, timeout: float, op: Operator | None = None
) -> dict[str, Any]:
    wanted = {phases} if isinstance(phases, str) else phases
    try:

        def reached() -> dict[str, Any] | None:
            obj = ftj(name, namespace)
            return obj if obj.get("status", {}).get("phase") in wanted else None

        return wait_for(reached, timeout, f"{namespace}/{name} in {sorted(wanted)}")
    except AssertionError as err:
        state = kubectl("get", "ftj,jobs,pods", "-n", namespace, "-o", "wide", check=False).stdout
        status = json.dumps(ftj(name, namespace).get("status"), indent=1)
        tail = op.log_tail() if op else ""
        raise AssertionError(f"{err}\n{state}\n{status}\n--- operator log\n{tail}") from None


def children(namespace: str, kind: str, job: str | None = None) -> list[dict[str, Any]]:
    selector = "app.kubernetes.io/managed-by=finetune-operator" + (f",finetune.dev/job={job}" if job else "")
    return list(kubectl_json("get", kind, "-n", namespace, "-l", selector)["items"])


def gpu_pods_ever(namespace: str, job: str) -> list[str]:
    """Pods of the job that asked for a GPU (live ones; Jobs are the record of the rest)."""
    out = []
    for p in children(namespace, "pods", job):
        for c in p["spec"]["containers"]:
            if "nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {}):
                out.append(p["metadata"]["name"])
    return out


def now() -> float:
    return time.monotonic()
