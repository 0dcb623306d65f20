"""Distributed training through the operator, real Jobs and pods of the trainer image: `nodes: 2` (an
Indexed Job, a headless Service, the node agent's cluster DNS) and `gpus: 2` (two ranks in one pod),
on gloo with the tiny random Llama.

The trainer's own distributed behaviour (the same curve as one process, each checkpoint uploaded once,
the exit codes through the launcher) is tested without the operator in test_trainer_distributed.py;
here the same run goes through everything a cluster adds: the PET_* env from the operator, node ranks
from the completion index, the master found by name, pod failures seen by the Job controller's
podFailurePolicy, and attempts resumed by the operator.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_operator_trainer import prepare, real_trainer_operator
from tests.integration.test_trainer_distributed import assert_same_curve, losses
from tests.integration.test_trainer_support import (
    chat_rows,
    list_keys,
    put_jsonl,
    tiny_model_dir,  # noqa: F401  (fixture)
)
from tests.support import operator as ops
from tests.support.kube import kubectl, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def env(
    namespace: str,
    s3_env: dict[str, str],
    s3_bucket: str,
    tiny_model_dir: Path,  # noqa: F811
) -> dict[str, str]:
    return prepare(namespace, s3_env, s3_bucket, tiny_model_dir)


@pytest.fixture
def operator(env: dict[str, str]) -> Iterator[ops.Operator]:
    with real_trainer_operator(env["namespace"]) as op:
        yield op


@pytest.fixture
def data(env: dict[str, str], s3_env: dict[str, str]) -> dict[str, Any]:
    """64 training rows and 8 validation rows beside the tiny model."""
    client = ops.s3_client(s3_env)
    return {
        "client": client,
        "train": put_jsonl(client, env["bucket"], "data/train.jsonl", chat_rows(64)),
        "val": put_jsonl(client, env["bucket"], "data/val.jsonl", chat_rows(8, offset=100)),
    }


def manifest(
    env: dict[str, str],
    data: dict[str, Any],
    name: str,
    *,
    gpus: int,
    nodes: int,
    batch_size: int,
    epochs: int,
    **kw: Any,
) -> dict[str, Any]:
    job = ops.job_manifest(
        name,
        env["namespace"],
        bucket=env["bucket"],
        train=data["train"],
        endpoint=env["endpoint"],
        gpus=gpus,
        epochs=epochs,
        batch_size=batch_size,
        **kw,
    )
    spec = job["spec"]
    spec["baseModel"]["uri"] = env["model"]
    spec["dataset"]["validation"] = data["val"]
    spec["resources"]["nodes"] = nodes
    spec["resources"]["cpu"] = ops.TRAINER_CPU
    spec["method"] = {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": "0.0"}}
    spec["hyperparameters"].update(
        {
            "learningRate": "0.003",
            "maxSeqLength": 128,
            "warmupRatio": "0",
            "gradientAccumulationSteps": 1,
            "lrScheduler": "linear",
        }
    )
    return job


def trainer_pods(namespace: str, job: str) -> list[dict[str, Any]]:
    pods = ops.children(namespace, "pods", job)
    return [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "trainer"]


def exit_code(pod: dict[str, Any]) -> int | None:
    terminated = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("terminated")
    return int(terminated["exitCode"]) if terminated else None


def launcher_pid(namespace: str, job: str, node_rank: int) -> int | None:
    """The host process of one trainer pod's launcher (the node agent runs containers as host processes):
    python running finetune_trainer with this job's env and node rank, and no LOCAL_RANK (its workers
    have one; tini, the image's entrypoint, is its parent)."""
    want = {f"FINETUNE_JOB={namespace}/{job}".encode(), f"PET_NODE_RANK={node_rank}".encode()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = set(Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"))
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            want <= environ
            and not any(e.startswith(b"LOCAL_RANK=") for e in environ)
            and b"python" in os.path.basename(argv[0])
            and b"finetune_trainer" in argv
        ):
            return int(entry)
    return None


def test_two_pods_and_two_ranks_in_one_pod_train_the_single_process_curve(
    env: dict[str, str], data: dict[str, Any], operator: ops.Operator
) -> None:
    ns, bucket, client = env["namespace"], env["bucket"], data["client"]
    # The same global batch of 8 three ways: 2 pods x 4, 1 pod x 2 ranks x 4, 1 process x 8.
    ops.apply(manifest(env, data, "nodes", gpus=1, nodes=2, batch_size=4, epochs=2))
    ops.apply(manifest(env, data, "ranks", gpus=2, nodes=1, batch_size=4, epochs=2))
    ops.apply(manifest(env, data, "single", gpus=1, nodes=1, batch_size=8, epochs=2))

    # While it runs, status shows the world and each pod; the Service names them for the rendezvous.
    def both_running() -> dict[str, Any] | None:
        st = ops.ftj("nodes", ns).get("status", {})
        if st.get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"finished before it was seen running: {json.dumps(st)}")
        pods = (st.get("world") or {}).get("pods") or []
        return st if [p.get("phase") for p in pods] == ["Running", "Running"] else None

    running = wait_for(both_running, 400, "both pods of the 2-node job running", interval=0.5)
    world = running["world"]
    assert (world["nodes"], world["processesPerNode"], world["size"]) == (2, 1, 2)
    assert [p["index"] for p in world["pods"]] == [0, 1]
    assert all(p["name"].startswith("nodes-train-a1-") for p in world["pods"])
    [service] = [s for s in ops.children(ns, "services", "nodes")]
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == "nodes-train-a1"

    done = {
        name: ops.wait_phase(name, ns, {"Succeeded", "Failed"}, 900, operator)
        for name in ("nodes", "ranks", "single")
    }
    for name, obj in done.items():
        st = obj["status"]
        assert st["phase"] == "Succeeded", (name, json.dumps(st, indent=1))
        # 64 rows, a global batch of 8, two epochs; the ETA counted in global steps.
        assert st["progress"]["step"] == st["progress"]["totalSteps"] == 16, (name, st["progress"])
        assert st["resolved"]["hyperparameters"]["effectiveBatchSize"] == 8
        assert st["outputs"]["adapterURI"] == f"s3://{bucket}/out/{name}/adapter/"
    assert done["ranks"]["status"]["world"]["size"] == 2
    assert done["ranks"]["status"]["world"]["processesPerNode"] == 2
    # Rank 0 alone reports: the index-1 pod leaves no summary, the index-0 pod the run's.
    pods = sorted(trainer_pods(ns, "nodes"), key=lambda p: p["metadata"]["name"])
    messages = [
        ((p["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("terminated") or {}).get(
            "message"
        )
        for p in pods
    ]
    assert len(messages) == 2
    assert messages[0], messages
    assert json.loads(messages[0])["result"] == "Succeeded", messages
    assert not messages[1], messages
    # Each run wrote one adapter and one log; the distributed curves are the single process's.
    want = losses(client, bucket, "out/single")
    assert_same_curve(losses(client, bucket, "out/nodes"), want)
    assert_same_curve(losses(client, bucket, "out/ranks"), want)
    # Two pods x one GPU each are charged for both: at least twice the shortest pod's run.
    assert int(done["nodes"]["status"]["usage"]["gpuSeconds"]) >= 2


def test_preempted_rank_checkpoints_every_rank_and_a_killed_pod_fails_only_that_attempt(
    env: dict[str, str], data: dict[str, Any], operator: ops.Operator
) -> None:
    ns, bucket, client = env["namespace"], env["bucket"], data["client"]
    # 64 rows, 2 x 2 per step: 16 steps an epoch, 6 epochs, a checkpoint every 8 steps.
    ops.apply(
        manifest(env, data, "resume", gpus=1, nodes=2, batch_size=2, epochs=6, every_steps=8, retries=2)
    )

    def checkpointed(after: int) -> Any:
        def check() -> dict[str, Any] | None:
            st = ops.ftj("resume", ns).get("status", {})
            if st.get("phase") in ("Succeeded", "Failed"):
                raise AssertionError(f"finished before it was interrupted: {json.dumps(st)}")
            complete = [c["step"] for c in st.get("checkpoints", []) if c.get("complete")]
            step = (st.get("progress") or {}).get("step") or 0
            return st if complete and max(complete) > after and step < 88 else None

        return check

    # 1. SIGTERM to one pod (an eviction): every rank saves the same step and exits 76; the Job
    #    controller replaces the pods (podFailurePolicy Ignore) and the same attempt resumes.
    wait_for(checkpointed(0), 600, "a complete checkpoint", interval=0.5)
    [victim] = [
        p for p in trainer_pods(ns, "resume") if p["metadata"]["name"].startswith("resume-train-a1-1-")
    ]
    kubectl("delete", "pod", victim["metadata"]["name"], "-n", ns, "--wait=false")

    def replaced() -> dict[str, Any] | None:
        pods = trainer_pods(ns, "resume")
        ended = [p for p in pods if p["status"].get("phase") == "Failed"]
        live = [p for p in pods if p["status"].get("phase") == "Running"]
        return {"ended": ended, "live": live} if ended and len(live) == 2 else None

    state = wait_for(replaced, 300, "both pods stopped and replaced in the same attempt", interval=0.5)
    # The deleted pod is gone with its status; its peer, which received no signal, stopped with it at the
    # step they agreed on, saved, and exited 76 (preempted: replaced without using the retry budget).
    [peer] = state["ended"]
    assert peer["metadata"]["name"].startswith("resume-train-a1-0-")
    assert exit_code(peer) == 76
    preempted = json.loads(peer["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert preempted["result"] == "Preempted", preempted
    st = ops.ftj("resume", ns)["status"]
    assert st["attempts"] == 1, st
    saved = max(c["step"] for c in st["checkpoints"] if c["complete"])

    # 2. SIGKILL to one pod's launcher (a node lost): that attempt fails, the next resumes every rank.
    wait_for(checkpointed(saved), 600, "a checkpoint after the resume", interval=0.5)
    before_kill = max(c["step"] for c in ops.ftj("resume", ns)["status"]["checkpoints"] if c["complete"])
    pid = wait_for(lambda: launcher_pid(ns, "resume", 1), 60, "the index-1 launcher process")
    os.kill(pid, signal.SIGKILL)

    obj = ops.wait_phase("resume", ns, {"Succeeded", "Failed"}, 900, operator)
    st = obj["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["attempts"] == 2, st
    assert st["lastFailure"]["attempt"] == 1
    assert st["lastFailure"]["exitCode"] == 137, st["lastFailure"]
    # The same step count as an uninterrupted run, resumed from a checkpoint at least as new as the kill's.
    assert st["progress"]["step"] == st["progress"]["totalSteps"] == 96
    result = json.loads(client.get_object(Bucket=bucket, Key="out/resume/reports/result.json")["Body"].read())
    assert result["resumedFromStep"] >= before_kill > saved > 0
    assert ops.children(ns, "services", "resume"), "each attempt has its Service until the job goes"
    assert {s["metadata"]["name"] for s in ops.children(ns, "services", "resume")} == {
        "resume-train-a1",
        "resume-train-a2",
    }


def test_a_workers_exit_42_fails_the_job_without_a_retry(
    env: dict[str, str], data: dict[str, Any], operator: ops.Operator
) -> None:
    ns, bucket, client = env["namespace"], env["bucket"], data["client"]
    # Validated while suspended; then the dataset changes under it, so the trainer's own check fails.
    ops.apply(
        manifest(env, data, "changed", gpus=1, nodes=2, batch_size=2, epochs=1, suspend=True, retries=3)
    )
    wait_for(
        lambda: (c := ops.condition(ops.ftj("changed", ns), "Validated")) and c["status"] == "True",
        300,
        "validation",
    )
    rows = [*chat_rows(5), {"messages": [{"role": "user", "content": "no answer"}]}, *chat_rows(5, offset=10)]
    put_jsonl(client, bucket, "data/train.jsonl", rows)
    kubectl("patch", "ftj", "changed", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    obj = ops.wait_phase("changed", ns, {"Failed", "Succeeded"}, 600, operator)
    st = obj["status"]
    assert st["phase"] == "Failed", json.dumps(st, indent=1)
    failed = ops.condition(obj, "Failed")
    assert failed is not None
    assert failed["reason"] == "InvalidDataset", failed
    assert "train:6" in failed["message"], failed["message"]
    assert st["lastFailure"]["exitCode"] == 42
    # podFailurePolicy FailJob: one attempt, no retry spent on a spec that cannot work.
    assert st["attempts"] == 1
    assert len([j for j in ops.children(ns, "jobs", "changed")]) == 1


def test_an_attempt_that_cannot_place_every_pod_says_which_one_and_why(
    env: dict[str, str], data: dict[str, Any], operator: ops.Operator
) -> None:
    """Three 1-GPU pods on a node with two GPUs: at most two run (and wait at the rendezvous), the others
    cannot be scheduled; status names the first of those, its node rank and the scheduler's reason."""
    ns = env["namespace"]
    ops.apply(manifest(env, data, "toobig", gpus=1, nodes=3, batch_size=2, epochs=1))

    def blocked() -> dict[str, Any] | None:
        st = ops.ftj("toobig", ns).get("status", {})
        pods = (st.get("world") or {}).get("pods") or []
        return st if any(p.get("reason") == "Unschedulable" for p in pods) else None

    st = wait_for(blocked, 300, "a pod of the 3-node attempt reported unschedulable", interval=0.5)
    world = st["world"]
    assert (world["nodes"], world["size"]) == (3, 3)
    # Other tests may hold GPUs too, so one pod or more waits; the message names the first of them.
    stuck = min((p for p in world["pods"] if p.get("reason") == "Unschedulable"), key=lambda p: p["index"])
    assert st["phase"] == "Queued", st
    running = ops.condition(ops.ftj("toobig", ns), "Running")
    assert running is not None
    assert running["reason"] == "Unschedulable"
    assert f"trainer pod {stuck['name']} (node rank {stuck['index']} of 3)" in st["message"], st["message"]
    assert "nvidia.com/gpu" in st["message"], st["message"]
    kubectl("delete", "ftj", "toobig", "-n", ns, "--wait=true", "--timeout=120s")


def test_a_full_fine_tune_on_two_pods_runs_fsdp2_and_publishes_one_model(
    env: dict[str, str], data: dict[str, Any], operator: ops.Operator
) -> None:
    """`method: full` with `nodes: 2` through the operator and the trainer image: FSDP2 (each pod's DCP
    shard of model and optimizer in every checkpoint) and one whole model published by rank 0."""
    ns, bucket, client = env["namespace"], env["bucket"], data["client"]
    job = manifest(env, data, "fsdp", gpus=1, nodes=2, batch_size=2, epochs=2, every_steps=8)
    job["spec"]["method"] = {"type": "full"}
    job["spec"]["hyperparameters"].update({"learningRate": "0.001", "gradientAccumulationSteps": 2})
    ops.apply(job)
    st = ops.wait_phase("fsdp", ns, {"Succeeded", "Failed"}, 900, operator)["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["progress"]["step"] == st["progress"]["totalSteps"] == 16
    assert st["world"]["size"] == 2
    assert st["outputs"]["adapterURI"] == f"s3://{bucket}/out/fsdp/model/"
    published = list_keys(client, bucket, "out/fsdp/model/")
    assert any(k.endswith("model.safetensors") for k in published), published
    checkpoint = list_keys(client, bucket, "out/fsdp/checkpoints/step-16/")
    names = {k.split("step-16/", 1)[1] for k in checkpoint}
    for part in ("model", "optimizer"):
        assert {f"{part}/.metadata", f"{part}/__0_0.distcp", f"{part}/__1_0.distcp"} <= names, names
