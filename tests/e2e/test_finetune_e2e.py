"""The main path, as a user sees it: the operator installed with its Helm chart, a FineTuneJob of
SmolLM2-135M-Instruct on the Tarvessa facts trained by the real trainer, then only kubectl and S3
to check the result (the same path as `make demo`, with a shorter job)."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.evaluate import is_match
from finetune_trainer.tiny_model import smollm2_gguf

from tests.integration.test_trainer_support import put_jsonl
from tests.support.facts import FACTS, subset
from tests.support.helm import CHART, helm
from tests.support.kube import kubectl, kubectl_json, wait_for
from tests.support.operator import s3_client

REPO = Path(__file__).resolve().parents[2]
JOB = "facts"


@pytest.fixture
def operator_release(namespace: str) -> Any:
    """The chart installed as a user would, watching this test's namespace only."""
    release = f"e2e-{namespace[-6:]}"
    helm(
        "upgrade", "--install", release, str(CHART), "--namespace", namespace,
        "-f", str(REPO / "helm" / "values-local.yaml"),
        "--set", f"watchNamespaces={{{namespace}}}",
        "--set", "replicaCount=1",
        "--take-ownership", "--wait", "--timeout", "4m",
    )  # fmt: skip
    yield release
    # The operator removes its finalizer from the jobs it deletes; uninstalling it first would leave
    # the namespace waiting on that finalizer forever.
    kubectl("delete", "ftj", "--all", "-n", namespace, "--wait=true", "--timeout=120s", check=False)
    helm("uninstall", release, "--namespace", namespace, "--wait", check=False)


def ftj(namespace: str) -> dict[str, Any]:
    return dict(kubectl_json("get", "ftj", JOB, "-n", namespace))


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def test_finetune_job_end_to_end(
    operator_release: str, namespace: str, s3_env: dict[str, str], s3_bucket: str, tmp_path: Path
) -> None:
    s3 = s3_client(s3_env)
    gguf = smollm2_gguf()
    s3.upload_file(str(gguf), s3_bucket, f"models/{gguf.name}")
    rows = subset()
    uris = {name: put_jsonl(s3, s3_bucket, f"data/{name}.jsonl", rows[name]) for name in rows}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-credentials"},
        "stringData": {k: s3_env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))
    job = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": JOB},
        "spec": {
            "baseModel": {"uri": f"s3://{s3_bucket}/models/{gguf.name}"},
            "dataset": {"train": uris["train"], "validation": uris["val"], "test": uris["heldout"]},
            "output": {"uri": f"s3://{s3_bucket}/adapters/facts/"},
            "storage": {
                "endpoint": s3_env["AWS_ENDPOINT_URL"],
                "credentialsSecretRef": {"name": "s3-credentials"},
            },
            # Shorter than the demo: FACTS facts, a higher learning rate so ~21 CPU steps learn them.
            "hyperparameters": {"epochs": 3, "learningRate": "1e-3", "maxSeqLength": 256},
            "resources": {"gpus": 1},
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))

    seen_phases: list[str] = []

    def finished() -> dict[str, Any] | None:
        obj = ftj(namespace)
        phase = obj.get("status", {}).get("phase")
        if phase and (not seen_phases or seen_phases[-1] != phase):
            seen_phases.append(phase)
        return obj if phase in {"Succeeded", "Failed"} else None

    obj = wait_for(finished, 900, "the FineTuneJob to finish", interval=2)
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=2)[-3000:]
    assert "Validating" in seen_phases, seen_phases
    order = ["Pending", "Validating", "Queued", "Running", "Succeeded"]
    assert [order.index(p) for p in seen_phases] == sorted(order.index(p) for p in seen_phases), seen_phases

    # Conditions, in order, as `kubectl describe` shows them.
    conds = conditions(obj)
    assert conds["Validated"]["status"] == "True"
    assert conds["Succeeded"]["status"] == "True"
    assert conds["Validated"]["lastTransitionTime"] <= conds["Succeeded"]["lastTransitionTime"]
    assert status["startTime"] <= status["completionTime"]

    # Progress reached 100%.
    progress = status["progress"]
    assert progress["percent"] == 100
    assert progress["step"] == progress["totalSteps"] > 0

    # Outputs in status match the objects in S3.
    outputs = status["outputs"]
    adapter_bucket, _, adapter_prefix = outputs["adapterURI"].removeprefix("s3://").partition("/")
    assert adapter_bucket == s3_bucket
    local = tmp_path / "adapter"
    local.mkdir()
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix=adapter_prefix)["Contents"]
    for item in listed:
        target = local / item["Key"][len(adapter_prefix) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(s3_bucket, item["Key"], str(target))
    weights = local / "adapter_model.safetensors"
    assert (local / "adapter_config.json").exists()
    assert weights.exists()
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == outputs["sha256"]
    report_bucket, _, report_key = outputs["reportURI"].removeprefix("s3://").partition("/")
    report = json.loads(s3.get_object(Bucket=report_bucket, Key=report_key)["Body"].read())

    # The trainer's evaluation (reports/eval.json, also in result.json): the base cannot know the facts,
    # the tuned model answers paraphrases of them.
    evaluation = report["eval"]
    heldout = evaluation["exactMatch"]["heldout"]
    print(json.dumps({"validation": evaluation["validation"], "heldout": heldout}, indent=2))
    assert evaluation["validation"]["tunedLoss"] < evaluation["validation"]["baseLoss"] - 0.5
    assert heldout["tuned"]["rows"] == FACTS
    assert heldout["base"]["exactMatch"] <= 0.1
    assert heldout["tuned"]["exactMatch"] >= heldout["base"]["exactMatch"] + 0.4

    # The metrics in status are the report's (through the trainer's termination message).
    metrics = status["metrics"]
    assert float(metrics["evalLoss"]) < float(metrics["baseEvalLoss"])
    assert float(metrics["exactMatch"]) == pytest.approx(heldout["tuned"]["exactMatch"], abs=1e-4)
    assert float(metrics["baseExactMatch"]) == pytest.approx(heldout["base"]["exactMatch"], abs=1e-4)

    # The adapter loads with peft on the base model and beats it on the held-out questions.
    em_base, em_tuned = heldout_exact_match(gguf, local, rows["heldout"])
    print(json.dumps({"heldoutExactMatch": {"base": em_base, "tuned": em_tuned}, "phases": seen_phases}))
    assert em_tuned >= em_base + 0.4

    # The job's series on the operator's /metrics.
    pod = kubectl_json(
        "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={operator_release}"
    )["items"][0]
    port = next(
        p["containerPort"]
        for c in pod["spec"]["containers"]
        for p in c.get("ports", [])
        if p["name"] == "metrics"
    )
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert f'finetune_job_progress_ratio{{name="{JOB}",namespace="{namespace}"}} 1.0' in text
    assert f'namespace="{namespace}"' in text
    assert "finetune_job_train_loss" in text


def heldout_exact_match(gguf: Path, adapter: Path, rows: list[dict[str, Any]]) -> tuple[float, float]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(adapter))
    base = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32
    )
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()

    def score() -> float:
        hits = 0
        for row in rows:
            prompt: Any = tokenizer.apply_chat_template(
                row["messages"][:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            with torch.no_grad():
                out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
            text = str(tokenizer.decode(out[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True))
            hits += is_match(text, row["messages"][-1]["content"])
        return hits / len(rows)

    tuned = score()
    with model.disable_adapter():
        base_score = score()
    assert len(rows) == FACTS
    return base_score, tuned
