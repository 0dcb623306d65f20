"""The trainer's distributed runs (torch.distributed, gloo on CPU) through its real launcher and CLI, against
the real local S3, with the tiny random Llama.

A "pod" here is one launcher process with the environment the operator gives a trainer pod
(finetune_contract.distributed); two pods are two launchers with their own scratch directories.
tests/integration/test_operator_distributed.py runs the same through the operator and real Jobs.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_trainer_support import (
    TrainerRun,
    chat_rows,
    finish,
    get_json,
    list_keys,
    lora_config,
    put_jsonl,
    start_trainer,
    tiny_model_dir,  # noqa: F401  (fixture)
    upload_dir,
    write_config,
)
from tests.integration.test_trainer_tiny import complete_steps
from tests.support.operator import s3_client

# The loss logged at each step by a distributed run and by one process with the same global batch.
# Measured: identical to 4 decimals (the gradients are all-reduced sums normalised by the tokens of the
# whole batch, transformers' average_tokens_across_devices); the bound leaves room for float order.
LOSS_TOLERANCE = 0.01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod_env(*, nodes: int, nproc: int, node_rank: int, port: int) -> dict[str, str]:
    return {
        "PET_NNODES": str(nodes),
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(port),
        "FTO_TERMINATION_GRACE_SECONDS": "60",
        # One CPU per worker, as a pod of `nproc` ranks asks for (tests.support.operator.TRAINER_CPU
        # each); the launcher shares the pod's CPU between its workers.
        "FTO_CPU_LIMIT": str(1000 * nproc),
    }


@pytest.fixture
def tiny(s3_env: dict[str, str], s3_bucket: str, tiny_model_dir: Path) -> dict[str, Any]:  # noqa: F811
    client = s3_client(s3_env)
    model_uri = upload_dir(client, tiny_model_dir, s3_bucket, "models/tiny")
    train = put_jsonl(client, s3_bucket, "data/train.jsonl", chat_rows(64))
    val = put_jsonl(client, s3_bucket, "data/val.jsonl", chat_rows(8, offset=100))
    return {
        "client": client,
        "bucket": s3_bucket,
        "model": model_uri,
        "train": train,
        "val": val,
        "dir": tiny_model_dir,
    }


def config(tiny: dict[str, Any], out: str, batch_size: int | None, tmp_path: Path, **kw: Any) -> Path:
    """batch_size None: the automatic batch, which the trainer resolves for its world size."""
    cfg = lora_config(tiny["bucket"], tiny["model"], tiny["train"], out, validation=tiny["val"], **kw)
    cfg["hyperparameters"]["batchSize"] = batch_size
    if batch_size is None:
        del cfg["hyperparameters"]["batchSize"]
    cfg["hyperparameters"]["gradientAccumulationSteps"] = 1
    return write_config(tmp_path / f"{out}.json", cfg)


def losses(client: Any, bucket: str, out: str) -> dict[int, float]:
    body = client.get_object(Bucket=bucket, Key=f"{out}/reports/train_log.jsonl")["Body"].read().decode()
    entries = [json.loads(line) for line in body.splitlines() if line.strip()]
    return {int(e["step"]): float(e["loss"]) for e in entries if "loss" in e}


def run_pods(
    tiny: dict[str, Any], s3_env: dict[str, str], cfg: Path, tmp_path: Path, *, nodes: int, nproc: int
) -> list[TrainerRun]:
    port = free_port()
    procs = [
        (
            start_trainer(
                "train",
                cfg,
                s3_env,
                tmp_path / f"pod-{rank}",
                pod_env(nodes=nodes, nproc=nproc, node_rank=rank, port=port),
            ),
            tmp_path / f"pod-{rank}",
        )
        for rank in range(nodes)
    ]
    return [finish(proc, scratch, timeout=400) for proc, scratch in procs]


@pytest.fixture
def single(tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path) -> dict[int, float]:
    """One process, batch 8: the reference loss curve (16 steps, logged at every step)."""
    run = finish(
        start_trainer("train", config(tiny, "single", 8, tmp_path), s3_env, tmp_path / "one"),
        tmp_path / "one",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.termination["step"] == 16
    return losses(tiny["client"], tiny["bucket"], "single")


def assert_same_curve(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want), (got, want)
    assert len(want) >= 10
    worst = max(abs(got[s] - want[s]) / want[s] for s in want)
    print(f"largest relative loss difference: {worst:.6f}")
    assert worst <= LOSS_TOLERANCE, f"largest relative difference {worst:.4f}: {got} vs {want}"


def test_two_processes_in_one_pod_train_like_one_process_with_the_same_global_batch(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path, single: dict[int, float]
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    (run,) = run_pods(tiny, s3_env, config(tiny, "gpus2", 4, tmp_path), tmp_path, nodes=1, nproc=2)
    assert run.returncode == 0, run.stderr[-5000:]
    summary = run.termination
    assert summary["result"] == "Succeeded", summary
    assert summary["step"] == summary["totalSteps"] == 16
    # The world is in the resolved values: batch 4 per process x 2 processes.
    assert summary["hyperparameters"]["effectiveBatchSize"] == 8
    assert_same_curve(losses(client, bucket, "gpus2"), single)
    # Rank 0 alone uploads and publishes: each checkpoint uploaded once, the adapter published once.
    for step in (4, 8, 12, 16):
        assert run.stderr.count(f"checkpoint step {step} uploaded") == 1, run.stderr[-3000:]
    assert run.stderr.count("done: Succeeded") == 1
    assert "rank 1 of 2" in run.stderr
    keys = list_keys(client, bucket, "gpus2/adapter/")
    assert "gpus2/adapter/adapter_model.safetensors" in keys
    # Both ranks' RNG states are in the checkpoint (the pod's scratch is shared by its processes).
    ckpt = list_keys(client, bucket, "gpus2/checkpoints/step-16/")
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {k.rsplit("/", 1)[1] for k in ckpt}, ckpt


def test_two_pods_train_like_one_process_and_only_rank_0_reports(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path, single: dict[int, float]
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    runs = run_pods(tiny, s3_env, config(tiny, "nodes2", 4, tmp_path), tmp_path, nodes=2, nproc=1)
    for run in runs:
        assert run.returncode == 0, run.stderr[-5000:]
    assert runs[0].termination["result"] == "Succeeded"
    assert runs[0].termination["step"] == 16
    assert runs[1].termination == {}  # the summary is rank 0's pod's alone
    assert "uploaded" not in runs[1].stderr
    assert_same_curve(losses(client, bucket, "nodes2"), single)
    result = get_json(client, bucket, "nodes2/reports/result.json")
    assert result["step"] == 16


def test_an_invalid_input_keeps_exit_42_through_the_launcher(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    rows = [*chat_rows(5), {"messages": [{"role": "user", "content": "no answer"}]}]
    cfg = lora_config(bucket, tiny["model"], put_jsonl(client, bucket, "data/bad.jsonl", rows), "bad")
    path = write_config(tmp_path / "bad.json", cfg)
    (run,) = run_pods(tiny, s3_env, path, tmp_path, nodes=1, nproc=2)
    assert run.returncode == 42, run.stderr[-3000:]
    assert run.termination["reason"] == "InvalidDataset"
    assert run.termination["line"] == 6


def test_sigterm_stops_every_rank_at_one_checkpoint_and_a_smaller_world_resumes_to_the_same_step(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    """Preempted on 2 ranks, resumed on 1: the automatic batch is the same effective batch on any world
    (2 x 2, then 4 x 1), so the checkpoint's step and the run's step count mean the same on both."""
    client, bucket = tiny["client"], tiny["bucket"]
    path = config(tiny, "preempt", None, tmp_path, epochs=3)
    first = start_trainer(
        "train", path, s3_env, tmp_path / "first", pod_env(nodes=1, nproc=2, node_rank=0, port=free_port())
    )
    deadline = time.monotonic() + 300
    while not complete_steps(client, bucket, "preempt"):
        assert first.poll() is None, "the trainer exited before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    stopped = finish(first, tmp_path / "first", timeout=120)
    assert stopped.returncode == 76, stopped.stderr[-5000:]
    assert stopped.termination["result"] == "Preempted"
    saved = complete_steps(client, bucket, "preempt")
    # 64 rows, an automatic batch of 4, 3 epochs: 48 steps; every rank stopped at the saved one.
    assert stopped.termination["checkpoints"][-1]["step"] == saved[-1] < 48

    one = pod_env(nodes=1, nproc=1, node_rank=0, port=free_port())
    resumed = finish(start_trainer("train", path, s3_env, tmp_path / "second", one), tmp_path / "second", 400)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert resumed.termination["resumedFromStep"] == saved[-1]
    assert resumed.termination["step"] == resumed.termination["totalSteps"] == 48
    resolved = resumed.termination["hyperparameters"]
    assert (resolved["batchSize"], resolved["effectiveBatchSize"]) == (4, 4)


def test_a_worker_killed_by_a_signal_fails_the_pod_with_its_code(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    """One worker dying (the OOM killer, a crash) fails the attempt: the launcher stops the others and
    reports 128 + the signal, which the Job counts as a failure (retried from the last checkpoint)."""
    client, bucket = tiny["client"], tiny["bucket"]
    path = config(tiny, "killed", 4, tmp_path, epochs=3)
    env = pod_env(nodes=1, nproc=2, node_rank=0, port=free_port())
    proc = start_trainer("train", path, s3_env, tmp_path / "pod", env)
    deadline = time.monotonic() + 300
    while not complete_steps(client, bucket, "killed"):
        assert proc.poll() is None, "the trainer exited before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    workers = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(workers) == 2, workers
    subprocess.run(["kill", "-KILL", workers[-1]], check=True)
    run = finish(proc, tmp_path / "pod", timeout=120)
    assert run.returncode == 128 + signal.SIGKILL, run.stderr[-5000:]
    assert run.termination["result"] == "Failed"
    assert "exited 137" in run.termination["message"]


def full_config(
    tiny: dict[str, Any], out: str, batch_size: int, tmp_path: Path, accumulation: int = 1
) -> Path:
    cfg = lora_config(tiny["bucket"], tiny["model"], tiny["train"], out, validation=tiny["val"], epochs=3)
    cfg["method"] = {"type": "full"}
    cfg["hyperparameters"].update(
        {"batchSize": batch_size, "gradientAccumulationSteps": accumulation, "learningRate": "1e-3"}
    )
    return write_config(tmp_path / f"{out}.json", cfg)


def test_a_full_fine_tune_on_two_pods_shards_with_fsdp2_resumes_and_publishes_a_loadable_model(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    """FSDP2 over 2 pods (own scratch each): each rank's DCP shards reach S3 from its own pod, a SIGTERM
    stops both at one checkpoint, both resume from it, and the published model loads with from_pretrained;
    the whole loss curve is the single-process one (same global batch)."""
    from transformers import AutoModelForCausalLM

    client, bucket = tiny["client"], tiny["bucket"]
    reference = finish(
        start_trainer("train", full_config(tiny, "full-one", 8, tmp_path), s3_env, tmp_path / "one"),
        tmp_path / "one",
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert reference.termination["step"] == 24

    # 2 ranks x 2 x 2 accumulation steps: the global batch of the reference, and FSDP's gradient
    # reduction deferred to each step's last micro-batch.
    path = full_config(tiny, "fsdp", 2, tmp_path, accumulation=2)
    port = free_port()
    pods = [
        start_trainer(
            "train", path, s3_env, tmp_path / f"a{r}", pod_env(nodes=2, nproc=1, node_rank=r, port=port)
        )
        for r in range(2)
    ]
    deadline = time.monotonic() + 300
    while not complete_steps(client, bucket, "fsdp"):
        assert all(p.poll() is None for p in pods), "a pod exited before the first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pods[0].send_signal(signal.SIGTERM)  # one pod told to stop: both save the same step
    stopped = [finish(p, tmp_path / f"a{r}", timeout=120) for r, p in enumerate(pods)]
    for run in stopped:
        assert run.returncode == 76, run.stderr[-5000:]
    assert "FSDP2: 2 decoder layers and the root sharded over 2 ranks" in stopped[0].stderr
    saved = complete_steps(client, bucket, "fsdp")[-1]
    assert saved < 24

    files = {
        k.split(f"step-{saved}/", 1)[1] for k in list_keys(client, bucket, f"fsdp/checkpoints/step-{saved}/")
    }
    for part in ("model", "optimizer"):
        assert {f"{part}/.metadata", f"{part}/__0_0.distcp", f"{part}/__1_0.distcp"} <= files, files
    assert {"rng_state_0.pth", "rng_state_1.pth", "scheduler.pt", "trainer_state.json"} <= files, files
    assert not any(name.endswith(("model.safetensors", "optimizer.pt")) for name in files), files
    # Rank 1's files came from its own pod (rank 0's scratch never had them) and the marker lists them.
    assert "uploaded" not in stopped[1].stderr
    marker = get_json(client, bucket, f"fsdp/checkpoints/step-{saved}/COMPLETE")
    assert {"model/__1_0.distcp", "optimizer/__1_0.distcp", "rng_state_1.pth"} <= set(marker["digests"])
    # Sharded, not replicated: each rank's model shard holds about half of the weights.
    sizes = {
        r: client.head_object(Bucket=bucket, Key=f"fsdp/checkpoints/step-{saved}/model/__{r}_0.distcp")[
            "ContentLength"
        ]
        for r in (0, 1)
    }
    assert 0.35 < sizes[0] / (sizes[0] + sizes[1]) < 0.65, sizes

    port = free_port()
    pods = [
        start_trainer(
            "train", path, s3_env, tmp_path / f"b{r}", pod_env(nodes=2, nproc=1, node_rank=r, port=port)
        )
        for r in range(2)
    ]
    resumed = [finish(p, tmp_path / f"b{r}", timeout=400) for r, p in enumerate(pods)]
    for run in resumed:
        assert run.returncode == 0, run.stderr[-5000:]
    summary = resumed[0].termination
    assert summary["result"] == "Succeeded", summary
    assert summary["resumedFromStep"] == saved
    assert summary["step"] == summary["totalSteps"] == 24
    assert_same_curve(losses(client, bucket, "fsdp"), losses(client, bucket, "full-one"))
    # The Trainer rotates local checkpoints on rank 0's node; the other pod drops its older ones itself.
    for r in range(2):
        kept = sorted(p.name for p in (tmp_path / f"b{r}" / "checkpoints").glob("checkpoint-*"))
        assert len(kept) == 1, (r, kept)

    published = tmp_path / "published"
    for key in list_keys(client, bucket, "fsdp/model/"):
        target = published / key.split("fsdp/model/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
    model = AutoModelForCausalLM.from_pretrained(str(published))
    base = AutoModelForCausalLM.from_pretrained(str(tiny["dir"]))
    changed = [
        name
        for (name, p), (_, q) in zip(model.named_parameters(), base.named_parameters(), strict=True)
        if not p.detach().equal(q.detach())
    ]
    assert len(changed) == len(list(base.parameters())), "every weight of a full fine-tune is trained"
