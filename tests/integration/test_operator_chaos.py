"""The operator is SIGKILLed at random moments while ten jobs run: every job still ends in its correct
terminal state, and no attempt ever got a second trainer Job (deterministic names, children counted
from what exists, creation treated as done on AlreadyExists)."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from tests.support import operator as ops
from tests.support.kube import kubectl, wait_for

pytestmark = pytest.mark.cluster

KILLS = 20
SLOW = {"stepSeconds": 0.3, "totalSteps": 100}
# name -> (dataset rows, stub directives, extra fields, expected phase, expected reason, expected attempts)
JOBS: dict[str, tuple[list[Any], dict[str, Any], dict[str, Any], str, str, int]] = {
    **{f"ok-{i}": (ops.chat_rows(8), SLOW, {"gpus": 0}, "Succeeded", "Completed", 1) for i in range(6)},
    "ok-gpu": (ops.chat_rows(8), SLOW, {"gpus": 1}, "Succeeded", "Completed", 1),
    "bad-data": ([*ops.chat_rows(4), {"oops": 1}], {}, {"gpus": 0}, "Failed", "InvalidDataset", 0),
    "flaky": (
        ops.chat_rows(8),
        {**SLOW, "failAttempts": 1, "failAtStep": 10},
        {"gpus": 0, "retries": 2},
        "Succeeded",
        "Completed",
        2,
    ),
    "broken": (
        ops.chat_rows(8),
        {**SLOW, "failAttempts": 9, "failAtStep": 5},
        {"gpus": 0, "retries": 1},
        "Failed",
        "RetriesExhausted",
        2,
    ),
}


@pytest.fixture(scope="session")
def crd(cluster: dict[str, str]) -> None:
    ops.apply_crd()


def test_sigkill_twenty_times_while_ten_jobs_run(
    namespace: str, s3_env: dict[str, str], s3_bucket: str, crd: None
) -> None:
    ns = namespace
    ops.setup_namespace(ns, s3_env)
    rng = random.Random(1234)
    with ops.running_operator(ns, FTO_RESYNC_SECONDS="3") as op:
        for name, (rows, stub, extra, *_rest) in JOBS.items():
            train = ops.upload_dataset(s3_env, s3_bucket, f"data/{name}.jsonl", rows, stub)
            gpus = extra.get("gpus", 1)
            retries = extra.get("retries", 2)
            ops.apply(
                ops.job_manifest(
                    name,
                    ns,
                    bucket=s3_bucket,
                    train=train,
                    endpoint=s3_env["AWS_ENDPOINT_URL"],
                    gpus=gpus,
                    retries=retries,
                    every_steps=5,
                )
            )
        kills_while_running = 0
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 3.0))
            op.kill()
            phases = kubectl("get", "ftj", "-n", ns, "-o", "jsonpath={.items[*].status.phase}").stdout.split()
            kills_while_running += any(p not in ("Succeeded", "Failed") for p in phases)
            time.sleep(rng.uniform(0.0, 1.0))
            op.start()
        assert op.starts == KILLS + 1
        assert kills_while_running == KILLS  # every kill hit the operator while jobs were in flight

        def all_terminal() -> dict[str, Any] | None:
            objs = {n: ops.ftj(n, ns) for n in JOBS}
            done = all(o.get("status", {}).get("phase") in ("Succeeded", "Failed") for o in objs.values())
            return objs if done else None

        try:
            objs = wait_for(all_terminal, 240, "every job to reach a terminal phase", interval=1)
        except AssertionError as err:
            left = {n: ops.ftj(n, ns).get("status", {}).get("phase") for n in JOBS}
            raise AssertionError(f"{err}: {left}\n{op.log_tail()}") from None

        for name, (*_, phase, reason, attempts) in JOBS.items():
            st = objs[name]["status"]
            cond = ops.condition(objs[name], phase)
            assert st["phase"] == phase, (name, json.dumps(st, indent=1))
            assert cond is not None, (name, st)
            assert cond["reason"] == reason, (name, cond)
            jobs = sorted(j["metadata"]["name"] for j in ops.children(ns, "jobs", name))
            # exactly one trainer Job per attempt, and the status counts the same attempts
            assert jobs == [f"{name}-train-a{i}" for i in range(1, attempts + 1)], (name, jobs)
            assert (st.get("attempts") or 0) == attempts, (name, st.get("attempts"))
            validation = [
                p
                for p in ops.children(ns, "pods", name)
                if p["metadata"]["labels"]["app.kubernetes.io/component"] == "validation"
            ]
            assert len(validation) == 1, (name, [p["metadata"]["name"] for p in validation])
