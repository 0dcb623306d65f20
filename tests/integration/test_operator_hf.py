"""hf:// base models through the operator and the real cluster: the operator's Hub endpoint setting
(FTO_HF_ENDPOINT) becomes the pods' HF_ENDPOINT, the Secret of baseModel.tokenSecretRef becomes their
HF_TOKEN (resolved by the node agent from the secretKeyRef, never copied by the operator), and the stub
trainer checks the model with the trainer's own validate-only Hub code against a local Hub-compatible
server (tests/support/hub_server.py) that this test process serves on 127.0.0.1: pods are local
processes on the same host, so they reach it. No network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.integration.test_operator_lifecycle import crd, env, make_job  # noqa: F401  (fixtures)
from tests.support import operator as ops
from tests.support.hub_server import HubServer
from tests.support.kube import kubectl, kubectl_json

pytestmark = pytest.mark.cluster

REPO_ID = "org/private-tiny"
URI = f"hf://{REPO_ID}"
TOKEN = "hf_operator_test_token_5f3a9c"
WRONG_TOKEN = "hf_wrong_token_0b7e41"
STUB = {"stepSeconds": 0.1}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """A private repository holding a small transformers model (config + safetensors): what the
    validate-only check reads (model info, config, the safetensors header)."""
    root = tmp_path_factory.mktemp("hub-tiny")
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 32,
    }
    (root / "config.json").write_text(json.dumps(config))
    save_file({"lm_head.weight": np.zeros((32, 8), dtype=np.float32)}, str(root / "model.safetensors"))
    server = HubServer()
    server.add_dir(REPO_ID, root, token=TOKEN)
    with server.running():
        yield server


@pytest.fixture
def operator(env: dict[str, str], hub: HubServer) -> Iterator[ops.Operator]:  # noqa: F811
    with ops.running_operator(env["namespace"], FTO_HF_ENDPOINT=hub.url) as op:
        yield op


def token_secret(namespace: str, name: str, token: str) -> None:
    kubectl("create", "secret", "generic", name, "-n", namespace, f"--from-literal=HF_TOKEN={token}")


def hf_job(
    env: dict[str, str],  # noqa: F811
    s3_env: dict[str, str],
    name: str,
    secret: str | None,
) -> dict[str, Any]:
    base: dict[str, Any] = {"uri": URI}
    if secret is not None:
        base["tokenSecretRef"] = {"name": secret}
    return make_job(env, s3_env, name, ops.chat_rows(8), STUB, batch_size=4, extra={"baseModel": base})


def container_env(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod["spec"]["containers"][0].get("env") or []}


def pods_by_component(namespace: str, job: str) -> dict[str, dict[str, Any]]:
    pods = ops.children(namespace, "pods", job)
    by = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in pods}
    assert len(by) == len(pods), [p["metadata"]["name"] for p in pods]
    return by


def hub_requests_since(hub: HubServer, before: int) -> list[Any]:
    return [r for r in hub.requests[before:] if REPO_ID in r.path]


def failed_condition(obj: dict[str, Any]) -> dict[str, Any]:
    st = obj["status"]
    assert st["phase"] == "Failed", json.dumps(st, indent=1)
    failed = ops.condition(obj, "Failed")
    assert failed is not None, json.dumps(st, indent=1)
    assert failed["status"] == "True", json.dumps(st, indent=1)
    return failed


def test_token_secret_and_endpoint_reach_the_hub_and_s3_jobs_stay_offline(
    env: dict[str, str],  # noqa: F811
    s3_env: dict[str, str],
    operator: ops.Operator,
    hub: HubServer,
) -> None:
    ns = env["namespace"]
    token_secret(ns, "hf-token", TOKEN)
    before = len(hub.requests)
    ops.apply(hf_job(env, s3_env, "hubjob", "hf-token"))
    # (c) an s3:// job of the same operator, at the same time
    ops.apply(make_job(env, s3_env, "s3job", ops.chat_rows(8), STUB, batch_size=4))

    obj = ops.wait_phase("hubjob", ns, {"Succeeded", "Failed"}, 120, operator)
    st = obj["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert {c["type"]: c["status"] for c in st["conditions"]}["Validated"] == "True"
    assert st["attempts"] == 1

    # operator setting -> pod env; Secret -> HF_TOKEN by reference only
    pods = pods_by_component(ns, "hubjob")
    assert sorted(pods) == ["trainer", "validation"]
    for component, pod in pods.items():
        assert pod["status"]["phase"] == "Succeeded", component
        env_ = container_env(pod)
        assert env_["HF_HUB_OFFLINE"] == {"name": "HF_HUB_OFFLINE", "value": "0"}, component
        assert env_["HF_ENDPOINT"] == {"name": "HF_ENDPOINT", "value": hub.url}, component
        assert env_["HF_TOKEN"] == {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}},
        }, component
        assert TOKEN not in json.dumps(pod), component
    assert "nvidia.com/gpu" in pods["trainer"]["spec"]["containers"][0]["resources"]["limits"]

    # -> the Hub: every request carried the Secret's token; each pod (validation, trainer) fetched the
    # config once and read the safetensors header with ranged GETs, never the weights.
    requests = hub_requests_since(hub, before)
    assert {r.authorization for r in requests} == {f"Bearer {TOKEN}"}
    assert hub.downloads(REPO_ID, before) == ["config.json", "config.json"], requests
    weights = [r for r in requests if r.path.endswith("/model.safetensors") and r.method == "GET"]
    assert weights, requests
    assert all(r.range is not None for r in weights), weights

    # (c) s3:// job: offline, no endpoint, no token
    s3obj = ops.wait_phase("s3job", ns, {"Succeeded", "Failed"}, 120, operator)
    assert s3obj["status"]["phase"] == "Succeeded", json.dumps(s3obj["status"], indent=1)
    s3pods = pods_by_component(ns, "s3job")
    assert sorted(s3pods) == ["trainer", "validation"]
    for component, pod in s3pods.items():
        env_ = container_env(pod)
        assert env_["HF_HUB_OFFLINE"] == {"name": "HF_HUB_OFFLINE", "value": "1"}, component
        assert "HF_ENDPOINT" not in env_, component
        assert "HF_TOKEN" not in env_, component

    # 3. the token is nowhere the operator writes: status, Events, its log
    for name in ("hubjob", "s3job"):
        assert TOKEN not in json.dumps(ops.ftj(name, ns))
    events = kubectl_json("get", "events", "-n", ns)["items"]
    assert events
    assert TOKEN not in json.dumps(events)
    assert TOKEN not in Path(operator.log_path).read_text(errors="replace")


def test_without_the_right_token_validation_fails_naming_the_repository_and_no_gpu_is_used(
    env: dict[str, str],  # noqa: F811
    s3_env: dict[str, str],
    operator: ops.Operator,
    hub: HubServer,
) -> None:
    """The Hub answers a private repository without a token as if it did not exist (401 RepoNotFound),
    so the trainer cannot tell "private" from "missing": InvalidModel, naming the repository and
    tokenSecretRef. A token it rejects is AccessDenied. Either way nothing reaches a GPU."""
    ns = env["namespace"]
    token_secret(ns, "hf-wrong", WRONG_TOKEN)
    before = len(hub.requests)
    ops.apply(hf_job(env, s3_env, "notoken", None))
    ops.apply(hf_job(env, s3_env, "wrongtoken", "hf-wrong"))

    no_token = ops.wait_phase("notoken", ns, {"Succeeded", "Failed"}, 90, operator)
    failed = failed_condition(no_token)
    assert failed["reason"] == "InvalidModel", failed
    message = failed["message"]
    assert f"baseModel.uri {URI}: no repository {REPO_ID} on {hub.url}, or it is private" in message
    assert "set baseModel.tokenSecretRef to a Secret with a read token" in message
    assert no_token["status"].get("attempts", 0) == 0
    assert no_token["status"]["lastFailure"]["exitCode"] == 42
    assert ops.gpu_pods_ever(ns, "notoken") == []
    assert "HF_TOKEN" not in container_env(pods_by_component(ns, "notoken")["validation"])

    wrong = ops.wait_phase("wrongtoken", ns, {"Succeeded", "Failed"}, 90, operator)
    failed = failed_condition(wrong)
    assert failed["reason"] == "AccessDenied", failed
    message = failed["message"]
    assert f"access denied: {REPO_ID} on {hub.url} rejected the token (HTTP 401)" in message
    assert "check that the token in baseModel.tokenSecretRef" in message
    assert wrong["status"].get("attempts", 0) == 0
    assert ops.gpu_pods_ever(ns, "wrongtoken") == []

    # Each job reached the Hub with what its pod had: nothing, or the Secret's (wrong) token.
    auth = {r.authorization for r in hub_requests_since(hub, before)}
    assert auth == {None, f"Bearer {WRONG_TOKEN}"}, auth
    # Never in what the operator writes.
    for name in ("notoken", "wrongtoken"):
        assert WRONG_TOKEN not in json.dumps(ops.ftj(name, ns))
    assert WRONG_TOKEN not in json.dumps(kubectl_json("get", "events", "-n", ns)["items"])
    assert WRONG_TOKEN not in Path(operator.log_path).read_text(errors="replace")
    # No trainer Job was created either.
    assert ops.children(ns, "jobs", "notoken") == ops.children(ns, "jobs", "wrongtoken") == []
