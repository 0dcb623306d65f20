"""The operator with the real trainer (not the stub) behind real Jobs and pods, on a tiny random Llama.

Everything the operator shows that comes from what the trainer reports is proven here once with the
real trainer: the estimate from the validation pod's typed summary, a dataset error's reason and line,
progress and checkpoints from /metrics, the result, and resume from a checkpoint after a suspend.
The faster stub (tests/integration/test_operator_lifecycle.py) is built on the same contract.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from finetune_contract.spec import MethodType
from finetune_operator import scratch
from finetune_operator.settings import OperatorSettings

from tests.integration.test_trainer_support import (
    chat_rows,
    tiny_model_dir,  # noqa: F401  (fixture)
    upload_dir,
)
from tests.support import images
from tests.support import operator as ops
from tests.support.kube import kubectl, wait_for

pytestmark = pytest.mark.cluster

TRAINER_IMAGE = images.TRAINER


def prepare(namespace: str, s3_env: dict[str, str], s3_bucket: str, model_dir: Path) -> dict[str, str]:
    """The namespace (CRD, S3 Secret) and the tiny model in S3: what every real-trainer operator test
    starts from (also test_operator_distributed.py)."""
    ops.apply_crd()
    ops.setup_namespace(namespace, s3_env)
    model = upload_dir(ops.s3_client(s3_env), model_dir, s3_bucket, "models/tiny")
    return {
        "namespace": namespace,
        "bucket": s3_bucket,
        "endpoint": s3_env["AWS_ENDPOINT_URL"],
        "model": model,
    }


def real_trainer_operator(namespace: str) -> contextlib.AbstractContextManager[ops.Operator]:
    """The operator with the trainer image and a 60 s grace period, for the checkpoint on SIGTERM."""
    return ops.running_operator(
        namespace, FTO_TRAINER_IMAGE=TRAINER_IMAGE, FTO_TERMINATION_GRACE_SECONDS="60"
    )


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
    # Scrape every second, so a suspend lands mid-run.
    with real_trainer_operator(env["namespace"]) as op:
        yield op


def manifest(
    env: dict[str, str], s3_env: dict[str, str], name: str, rows: list[Any], **kw: Any
) -> dict[str, Any]:
    train = ops.upload_dataset(s3_env, env["bucket"], f"data/{name}.jsonl", rows)
    job = ops.job_manifest(
        name, env["namespace"], bucket=env["bucket"], train=train, endpoint=env["endpoint"], **kw
    )
    job["spec"]["baseModel"]["uri"] = env["model"]
    job["spec"]["resources"]["cpu"] = ops.TRAINER_CPU
    job["spec"]["method"] = {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": "0.0"}}
    job["spec"]["hyperparameters"].update({"learningRate": "0.003", "maxSeqLength": 128, "warmupRatio": "0"})
    return job


def test_bad_dataset_fails_with_the_trainers_reason_and_line(
    env: dict[str, str], s3_env: dict[str, str], operator: ops.Operator
) -> None:
    ns = env["namespace"]
    rows = [*chat_rows(3), {"messages": [{"role": "user", "content": "no answer"}]}, *chat_rows(4, offset=10)]
    ops.apply(manifest(env, s3_env, "badrow", rows))
    obj = ops.wait_phase("badrow", ns, {"Failed", "Succeeded"}, 240, operator)
    st = obj["status"]
    failed = ops.condition(obj, "Failed")
    assert failed is not None, json.dumps(st, indent=1)
    assert failed["reason"] == "InvalidDataset"
    assert "(train:4)" in failed["message"] or "train:4" in failed["message"], failed["message"]
    assert st["lastFailure"]["exitCode"] == 42
    assert ops.children(ns, "jobs", "badrow") == []  # no GPU was ever asked for
    report = ops.s3_client(s3_env).get_object(Bucket=env["bucket"], Key="out/badrow/reports/validation.json")
    errors = json.loads(report["Body"].read())["errors"]
    assert (errors[0]["file"], errors[0]["line"], errors[0]["reason"]) == ("train", 4, "InvalidDataset")


def test_estimate_progress_checkpoints_result_and_resume_with_the_real_trainer(
    env: dict[str, str], s3_env: dict[str, str], operator: ops.Operator
) -> None:
    ns, bucket = env["namespace"], env["bucket"]
    # 400 rows, 50 held out (the automatic split's floor): 175 steps of batch 2 in one epoch, a
    # checkpoint every 15.
    job = manifest(env, s3_env, "real", chat_rows(400), epochs=1, batch_size=2, every_steps=15)
    job["spec"]["checkpointing"]["keep"] = 2
    ops.apply(job)

    # The estimate comes from the validation pod's summary: tokens of one pass x epochs.
    validated = wait_for(
        lambda: o if (o := ops.ftj("real", ns)).get("status", {}).get("estimate") else None, 240, "estimate"
    )
    estimate = validated["status"]["estimate"]
    report = json.loads(
        ops.s3_client(s3_env).get_object(Bucket=bucket, Key="out/real/reports/validation.json")["Body"].read()
    )
    assert estimate["tokens"] == report["tokens"]["train"]["totalTokens"] * 1  # x epochs
    assert estimate["tokens"] > 350 * 10  # 350 training rows of well over 10 tokens each
    assert "gpuHours" in estimate
    message = ops.condition(validated, "Validated")["message"]  # type: ignore[index]
    assert "350 training rows" in message, message
    # What will run: the spec's values, the rest chosen from the data, in status and in the message.
    resolved = validated["status"]["resolved"]["hyperparameters"]
    assert resolved == report["hyperparameters"]
    assert (resolved["epochs"], resolved["batchSize"], resolved["learningRate"]) == (1, 2, "0.003")
    assert (resolved["gradientAccumulationSteps"], resolved["totalSteps"], resolved["warmupSteps"]) == (
        1,
        175,
        0,
    )
    assert resolved["auto"] == ["gradientAccumulationSteps"]
    assert "training 1 epoch x 175 steps (batch 2, learning rate 0.003" in message, message
    # The trainer pods' scratch follows the sizes validation measured: the model's safetensors in S3 and
    # the dataset file (the tiny model is far under the platform's floor for the limit).
    s3 = ops.s3_client(s3_env)
    weights = sum(
        o["Size"]
        for o in s3.list_objects_v2(Bucket=bucket, Prefix="models/tiny/")["Contents"]
        if o["Key"].endswith(".safetensors")
    )
    dataset = s3.head_object(Bucket=bucket, Key="data/real.jsonl")["ContentLength"]
    assert weights > 0
    expected = scratch.trainer_scratch(
        method=MethodType.LORA,
        lora_rank=8,
        weight_bytes=weights,
        gguf=False,
        downloaded=True,
        dataset_file_bytes=dataset,
        minimum=OperatorSettings().trainer_scratch_min_bytes,
    )
    assert expected.size_limit is not None
    sized = {
        "request": scratch.quantity(expected.request),
        "sizeLimit": scratch.quantity(expected.size_limit),
    }
    assert validated["status"]["resolved"]["scratch"] == sized
    [trainer_job] = wait_for(lambda: ops.children(ns, "jobs", "real") or None, 60, "the trainer Job")
    pod_spec = trainer_job["spec"]["template"]["spec"]
    assert [v["emptyDir"] for v in pod_spec["volumes"] if v["name"] == "scratch"] == [
        {"sizeLimit": sized["sizeLimit"]}
    ]
    assert pod_spec["containers"][0]["resources"]["requests"]["ephemeral-storage"] == sized["request"]

    # Suspend once a checkpoint is complete and training is well short of the end.
    def mid_run() -> dict[str, Any] | None:
        st = ops.ftj("real", ns).get("status", {})
        done = [c for c in st.get("checkpoints", []) if c.get("complete")]
        step = (st.get("progress") or {}).get("step") or 0
        if st.get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"finished before it could be suspended: {json.dumps(st)}")
        return st if done and 0 < step < 150 else None

    running = wait_for(mid_run, 300, "a complete checkpoint mid-run", interval=0.5)
    before = max(c["step"] for c in running["checkpoints"] if c["complete"])
    progress = running["progress"]
    assert progress["totalSteps"] == 175
    assert 0 < progress["percent"] < 100
    assert running["checkpoints"][0]["uri"].startswith(f"s3://{bucket}/out/real/checkpoints/step-")
    kubectl("patch", "ftj", "real", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    suspended = ops.wait_phase("real", ns, {"Suspended"}, 120, operator)
    wait_for(
        lambda: (
            not [
                p
                for p in ops.children(ns, "pods", "real")
                if "train" in p["metadata"]["name"]
                and p.get("status", {}).get("phase") in ("Pending", "Running")
            ]
        ),
        120,
        "trainer pods gone",
    )
    saved = [c["step"] for c in ops.ftj("real", ns)["status"]["checkpoints"] if c["complete"]]
    assert saved, suspended["status"]
    assert max(saved) >= before
    kubectl("patch", "ftj", "real", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')

    obj = ops.wait_phase("real", ns, {"Succeeded", "Failed"}, 600, operator)
    st = obj["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["progress"]["step"] == st["progress"]["totalSteps"] == 175
    assert st["outputs"]["adapterURI"] == f"s3://{bucket}/out/real/adapter/"
    assert len(st["outputs"]["sha256"]) == 64
    metrics = st["metrics"]
    assert float(metrics["evalLoss"]) < float(metrics["baseEvalLoss"])
    assert float(metrics["evalPerplexity"]) == pytest.approx(
        2.718281828 ** float(metrics["evalLoss"]), rel=1e-3
    )
    assert metrics["baseEvalPerplexity"]
    # keep 2: the two newest complete checkpoints, as they are in S3
    steps = [c["step"] for c in st["checkpoints"]]
    assert steps == [165, 175], st["checkpoints"]
    assert all(c["complete"] and c["createdAt"] for c in st["checkpoints"])
    keys = {
        o["Key"]
        for o in ops.s3_client(s3_env).list_objects_v2(Bucket=bucket, Prefix="out/real/checkpoints/")[
            "Contents"
        ]
    }
    # ... and the best evaluation's weights beside them
    assert {k.split("/")[3] for k in keys} == {"step-165", "step-175", "best"}
    result = json.loads(
        ops.s3_client(s3_env).get_object(Bucket=bucket, Key="out/real/reports/result.json")["Body"].read()
    )
    # The published weights are the best evaluation's, and status names the step.
    assert 1 <= st["outputs"]["publishedStep"] == result["publishedStep"] <= 175
    # The second run started from the newest checkpoint: the one saved on SIGTERM, at or after `before`.
    assert result["resumedFromStep"] >= max(saved) >= before > 0
    assert st["usage"]["gpuSeconds"] > 0
