"""The trainer end to end against the real local S3 with a tiny random Llama.

Every test runs the real CLI (`python -m finetune_trainer ...`) as the operator would, with
credentials enforced by SeaweedFS.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import shutil
import signal
import subprocess
import threading
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
    run_in_process,
    run_trainer,
    start_trainer,
    tiny_model_dir,  # noqa: F401  (fixture)
    upload_dir,
    write_config,
)
from tests.support.operator import s3_client


def base_config(bucket: str, model_uri: str, train: str, validation: str | None, out: str) -> dict[str, Any]:
    return lora_config(bucket, model_uri, train, out, validation=validation)


@pytest.fixture
def tiny(s3_env: dict[str, str], s3_bucket: str, tiny_model_dir: Path) -> dict[str, Any]:  # noqa: F811
    client = s3_client(s3_env)
    model_uri = upload_dir(client, tiny_model_dir, s3_bucket, "models/tiny")
    return {"client": client, "bucket": s3_bucket, "model": model_uri}


def test_lora_chat_end_to_end(tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(48))
    val = put_jsonl(client, bucket, "data/val.jsonl", chat_rows(12, offset=100))
    cfg = write_config(tmp_path / "config.json", base_config(bucket, tiny["model"], train, val, "chat"))

    run = run_trainer("train", cfg, s3_env, tmp_path / "scratch")
    assert run.returncode == 0, run.stderr[-3000:]

    summary = run.termination
    assert summary["result"] == "Succeeded"
    assert summary["step"] == summary["totalSteps"] == 12  # 48 rows / 8 per batch * 2 epochs
    assert summary["evalLoss"] < summary["baseEvalLoss"]
    assert len((tmp_path / "scratch" / "termination-log").read_bytes()) < 4096

    keys = set(list_keys(client, bucket, "chat/"))
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"):
        assert f"chat/adapter/{name}" in keys
    assert any(
        (k.startswith("chat/adapter/") and "chat_template" in k) or k.endswith("tokenizer_config.json")
        for k in keys
    )
    for report in ("validation.json", "eval.json", "result.json", "train_log.jsonl"):
        assert f"chat/reports/{report}" in keys
    # Checkpoints: the last `keep` complete ones remain, each with its marker.
    assert {k.split("/")[2] for k in keys if k.startswith("chat/checkpoints/")} == {
        "step-8",
        "step-12",
        "best",
    }
    assert "chat/checkpoints/step-12/COMPLETE" in keys

    result = get_json(client, bucket, "chat/reports/result.json")
    assert result["eval"]["validation"]["tunedLoss"] < result["eval"]["validation"]["baseLoss"]
    assert "matchRule" in result["eval"]

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for key in keys:
        if key.startswith("chat/adapter/"):
            client.download_file(bucket, key, str(adapter / key.rsplit("/", 1)[1]))
    digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert digest == summary["sha256"]
    sha_file = client.get_object(Bucket=bucket, Key="chat/adapter.sha256")["Body"].read().decode()
    assert sha_file.split()[0] == digest
    card = (adapter / "README.md").read_text()
    assert tiny["model"] in card
    assert "learningRate" in card

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "scratch" / "model"))
    tuned = PeftModel.from_pretrained(base, str(adapter))
    assert sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n) > 0


@pytest.mark.parametrize(
    "rows",
    [
        [{"prompt": f"Q: what is {i} plus one?\nA:", "completion": f" {i + 1}"} for i in range(24)],
        [{"text": f"Line {i}: the quick brown fox jumps over the lazy dog {i} times."} for i in range(24)],
    ],
    ids=["prompt-completion", "text"],
)
def test_other_formats_train(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path, rows: list[Any]
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", rows)
    config = base_config(bucket, tiny["model"], train, None, "fmt")
    config["hyperparameters"]["epochs"] = 1
    config["dataset"]["validationSplit"] = "0.25"
    run = run_trainer("train", write_config(tmp_path / "config.json", config), s3_env, tmp_path / "scratch")
    assert run.returncode == 0, run.stderr[-3000:]
    validation = get_json(client, bucket, "fmt/reports/validation.json")
    assert validation["format"] == ("text" if "text" in rows[0] else "prompt-completion")
    assert validation["files"]["validation"]["rows"] == 6
    assert run.termination["evalLoss"] < run.termination["baseEvalLoss"]


GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def _lines(*rows: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@pytest.mark.parametrize(
    ("train", "validation", "file", "line", "needle"),
    [
        (_lines(GOOD, "{oops", GOOD), None, "train", 2, "not valid JSON"),
        (
            _lines(GOOD, {"messages": [{"role": "robot", "content": "x"}]}),
            None,
            "train",
            2,
            "role is 'robot'",
        ),
        (
            _lines(
                GOOD, {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": ""}]}
            ),
            None,
            "train",
            2,
            "content is empty",
        ),
        (_lines(GOOD, {"text": "plain"}), None, "train", 2, "one format per dataset"),
        (_lines({"question": "q", "answer": "a"}), None, "train", None, "no usable rows"),
        (
            _lines(
                GOOD, {"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "b"}]}
            ),
            _lines({"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "b"}]}),
            "validation",
            1,
            "same as train line 2",
        ),
        (
            _lines(
                GOOD,
                {
                    "messages": [
                        {"role": "user", "content": "word " * 200},
                        {"role": "assistant", "content": "x"},
                    ]
                },
            ),
            None,
            "train",
            2,
            "nothing left to learn",
        ),
    ],
    ids=["bad-json", "bad-role", "empty-content", "mixed-formats", "unknown-format", "overlap", "too-long"],
)
def test_bad_datasets_fail_validation_with_report(
    tiny: dict[str, Any],
    s3_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    train: str,
    validation: str | None,
    file: str,
    line: int | None,
    needle: str,
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train_uri = put_jsonl(client, bucket, "data/train.jsonl", train)
    val_uri = put_jsonl(client, bucket, "data/val.jsonl", validation) if validation else None
    config = base_config(bucket, tiny["model"], train_uri, val_uri, "bad")
    run = run_in_process(
        "validate", write_config(tmp_path / "config.json", config), s3_env, tmp_path / "scratch", monkeypatch
    )
    assert run.returncode == 42, run.stderr[-3000:]
    # The typed reason and, for a bad row, where it is: what the operator copies into the condition.
    assert run.termination["reason"] == "InvalidDataset"
    assert (run.termination.get("file"), run.termination.get("line")) == (file, line)
    report = get_json(client, bucket, "bad/reports/validation.json")
    assert report["valid"] is False
    assert any(
        e["file"] == file and e["line"] == line and needle in e["message"] for e in report["errors"]
    ), report


LIMITS = {"maxRows": 6, "maxLineBytes": 8192, "maxFileBytes": 64 * 1024, "maxJsonDepth": 8}
DEEP = "[" * 200_000 + "]" * 200_000


@pytest.mark.parametrize(
    ("train", "line", "needle"),
    [
        (_lines(GOOD, '{"messages": ' + "[" * 9 + "]" * 9 + "}"), 2, "nested 10 levels deep"),
        (_lines(GOOD, '{"text": ' + "9" * 5000 + "}"), 2, "4300 digits"),
        # U+2028 is a line end for str.splitlines, not for JSONL: the bad row is line 2, not 3.
        (
            _lines(json.dumps(GOOD, ensure_ascii=False).replace('"q"', '"a\u2028b"'), "{oops"),
            2,
            "not valid JSON",
        ),
        (_lines(GOOD).encode() + b'{"text": "caf\xe9"}\n', 2, "not UTF-8 text"),
        (_lines(*[GOOD] * 7), 7, "more than 6 rows"),
        (_lines(GOOD, {"text": "x" * 9000}), 2, "longer than 8192 bytes"),
        (_lines(*[{"text": "x" * 4000}] * 20), None, "more than the platform's limit of 65536"),
    ],
    ids=["deep", "huge-integer", "u2028", "latin-1", "rows", "line-length", "file-size"],
)
def test_hostile_datasets_fail_validation_with_their_line_within_limits(
    tiny: dict[str, Any],
    s3_env: dict[str, str],
    tmp_path: Path,
    *,
    train: str | bytes,
    line: int | None,
    needle: str,
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    client.put_object(
        Bucket=bucket, Key="data/train.jsonl", Body=train if isinstance(train, bytes) else train.encode()
    )
    config = base_config(bucket, tiny["model"], f"s3://{bucket}/data/train.jsonl", None, "hostile")
    config["limits"] = LIMITS
    started = time.monotonic()
    # The real CLI in its own process, as in the pod: nothing may escape as a crash.
    run = run_trainer(
        "validate", write_config(tmp_path / "config.json", config), s3_env, tmp_path / "scratch"
    )
    assert time.monotonic() - started < 120
    assert run.returncode == 42, run.stderr[-3000:]
    assert run.termination["reason"] == "InvalidDataset"
    assert (run.termination.get("file"), run.termination.get("line")) == ("train", line)
    report = get_json(client, bucket, "hostile/reports/validation.json")
    assert report["valid"] is False
    assert any(e["line"] == line and needle in e["message"] for e in report["errors"]), report["errors"]


def test_nesting_past_the_json_parser_is_an_invalid_row_not_a_crash(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/deep.jsonl", _lines(GOOD, DEEP, GOOD))
    config = base_config(bucket, tiny["model"], train, None, "deep")
    run = run_trainer(
        "validate", write_config(tmp_path / "config.json", config), s3_env, tmp_path / "scratch"
    )
    assert run.returncode == 42, run.stderr[-3000:]
    assert (run.termination["reason"], run.termination.get("line")) == ("InvalidDataset", 2)
    assert "nested deeper than 32 levels" in run.termination["message"]


def test_a_chat_template_that_allocates_without_bound_is_invalid_model_with_its_line(
    tiny: dict[str, Any],
    s3_env: dict[str, str],
    tmp_path: Path,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    bomb = tmp_path / "bomb"
    shutil.copytree(tiny_model_dir, bomb)
    tokenizer_config = json.loads((bomb / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (bomb / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (bomb / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['content'] * 10**10 }}{% endfor %}"
    )
    model = upload_dir(client, bomb, bucket, "models/bomb")
    train = put_jsonl(client, bucket, "data/bomb.jsonl", _lines(GOOD, GOOD))
    config = base_config(bucket, model, train, None, "bomb")
    config["limits"] = {"templateMemoryBytes": 64 * 1024**2}
    started = time.monotonic()
    run = run_trainer(
        "validate", write_config(tmp_path / "config.json", config), s3_env, tmp_path / "scratch"
    )
    assert time.monotonic() - started < 120
    assert run.returncode == 42, run.stderr[-3000:]  # not an OOM kill (137), not a crash (1)
    assert (run.termination["reason"], run.termination.get("line")) == ("InvalidModel", 1)
    assert "templateMemoryBytes" in run.termination["message"]
    report = get_json(client, bucket, "bomb/reports/validation.json")
    assert report["valid"] is False


def test_a_passed_validation_reports_the_sizes_the_trainer_scratch_follows(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    rows = _lines(*chat_rows(60))
    train = put_jsonl(client, bucket, "data/sized.jsonl", rows)
    config = base_config(bucket, tiny["model"], train, None, "sized")
    run = run_trainer(
        "validate", write_config(tmp_path / "config.json", config), s3_env, tmp_path / "scratch"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    weights = sum(
        o["Size"]
        for o in client.list_objects_v2(Bucket=bucket, Prefix="models/tiny/")["Contents"]
        if o["Key"].endswith(".safetensors")
    )
    assert weights > 0
    assert (run.termination["modelBytes"], run.termination["datasetFileBytes"]) == (
        weights,
        len(rows.encode()),
    )


def test_missing_model_is_permanent(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(4))
    missing = f"s3://{bucket}/data/missing.jsonl"
    config = base_config(bucket, f"s3://{bucket}/models/nothing-here/", train, missing, "x")
    run = run_in_process(
        "validate", write_config(tmp_path / "config.json", config), s3_env, tmp_path / "scratch", monkeypatch
    )
    assert run.returncode == 42
    assert run.termination["reason"] == "InvalidModel"  # the first problem found
    report = get_json(client, bucket, "x/reports/validation.json")
    assert report["baseModel"]["loadable"] is False
    assert any("is empty" in e["message"] for e in report["errors"])
    assert any(e["file"] == "validation" and "cannot read" in e["message"] for e in report["errors"])


def test_wrong_credentials_are_permanent(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(4))
    config = base_config(bucket, tiny["model"], train, None, "x")
    env = {**s3_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    run = run_in_process(
        "validate", write_config(tmp_path / "config.json", config), env, tmp_path / "scratch", monkeypatch
    )
    assert run.returncode == 42
    assert run.termination["reason"] == "AccessDenied"
    # The report could not be uploaded with these keys; the local copy says why.
    report = json.loads((tmp_path / "scratch" / "reports" / "validation.json").read_text())
    assert report["output"]["writable"] is False
    assert "not-the-secret" not in json.dumps(report) + json.dumps(run.termination)


def test_unreachable_s3_is_transient(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**s3_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens on the discard port
    config = base_config("bkt", "s3://bkt/m/", "s3://bkt/t.jsonl", None, "x")
    run = run_in_process(
        "validate", write_config(tmp_path / "config.json", config), env, tmp_path / "scratch", monkeypatch
    )
    assert run.returncode == 75, run.stderr[-3000:]
    assert run.termination["reason"] == "TransientError"


def complete_steps(client: Any, bucket: str, out: str) -> list[int]:
    """Steps of the complete checkpoints under <out>/checkpoints/ (step-N/COMPLETE), ascending."""
    keys = list_keys(client, bucket, f"{out}/checkpoints/")
    return sorted(int(k.split("/")[2][5:]) for k in keys if k.endswith("/COMPLETE"))


def preempt_after(
    proc: subprocess.Popen[str],
    client: Any,
    bucket: str,
    out: str,
    scratch: Path,
    *,
    checkpoints: int,
    timeout: float = 240,
) -> TrainerRun:
    """SIGTERM the trainer once `checkpoints` complete checkpoints are in S3; its run."""
    deadline = time.monotonic() + timeout
    while len(complete_steps(client, bucket, out)) < checkpoints:
        assert proc.poll() is None, f"trainer exited before checkpoint {checkpoints}"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    return finish(proc, scratch)


def test_sigterm_checkpoints_and_resume_matches_uninterrupted_run(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(160))
    val = put_jsonl(client, bucket, "data/val.jsonl", chat_rows(8, offset=500))

    def config(out: str) -> Path:
        cfg = base_config(bucket, tiny["model"], train, val, out)
        cfg["checkpointing"] = {"everySteps": 3, "keep": 2}
        return write_config(tmp_path / f"{out}.json", cfg)

    reference = run_trainer("train", config("straight"), s3_env, tmp_path / "straight")
    assert reference.returncode == 0, reference.stderr[-3000:]
    total = reference.termination["totalSteps"]
    assert reference.termination["step"] == total == 40

    proc = start_trainer("train", config("resumed"), s3_env, tmp_path / "first")
    first = preempt_after(proc, client, bucket, "resumed", tmp_path / "first", checkpoints=1, timeout=180)
    assert first.returncode == 76, first.stderr[-3000:]
    assert first.termination["result"] == "Preempted"
    stopped_at = max(complete_steps(client, bucket, "resumed"))
    assert 3 <= stopped_at < total

    # A new pod: fresh scratch, same output URI.
    second = run_trainer("train", config("resumed"), s3_env, tmp_path / "second")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.termination["resumedFromStep"] == stopped_at
    assert second.termination["step"] == second.termination["totalSteps"] == total
    assert f"resuming from checkpoint step {stopped_at}" in second.stderr
    # The second pod did not redo the steps already saved ...
    logged = [
        json.loads(line.split("finetune_trainer.train: ", 1)[1])
        for line in second.stderr.splitlines()
        if "finetune_trainer.train: {" in line
    ]
    assert min(e["step"] for e in logged if "loss" in e) > stopped_at
    # ... and the train log on S3 holds the whole history across both pods.
    log = client.get_object(Bucket=bucket, Key="resumed/reports/train_log.jsonl")["Body"].read().decode()
    assert min(json.loads(line)["step"] for line in log.splitlines() if '"loss"' in line) <= 3


def test_a_complete_checkpoint_that_does_not_verify_is_skipped_for_the_one_before(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(96))
    cfg = base_config(bucket, tiny["model"], train, None, "torn")
    cfg["checkpointing"] = {"everySteps": 2, "keep": 3}
    path = write_config(tmp_path / "torn.json", cfg)

    proc = start_trainer("train", path, s3_env, tmp_path / "first")
    assert preempt_after(proc, client, bucket, "torn", tmp_path / "first", checkpoints=2).returncode == 76
    *_, before, newest = complete_steps(client, bucket, "torn")
    # The newest is "complete" (its marker exists) but one of its files was cut short afterwards.
    key = next(
        k for k in list_keys(client, bucket, f"torn/checkpoints/step-{newest}/") if k.endswith(".safetensors")
    )
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])

    second = run_trainer("train", path, s3_env, tmp_path / "second")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.termination["resumedFromStep"] == before
    result = get_json(client, bucket, "torn/reports/result.json")
    [skipped] = result["skippedCheckpoints"]
    assert skipped["step"] == newest
    assert "bytes, the marker says" in skipped["problem"]
    assert f"checkpoint step {newest} does not verify" in second.stderr


def _as_job(cfg: dict[str, Any], name: str, uid: str, **output: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(cfg))
    out["job"] = {"namespace": "team-a", "name": name, "uid": uid}
    out["output"] |= output
    return out


def test_an_output_claimed_by_another_job_is_refused_naming_it_unless_overwrite(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(16))
    cfg = base_config(bucket, tiny["model"], train, None, "shared")

    def validate(doc: dict[str, Any], tag: str) -> Any:
        return run_trainer("validate", write_config(tmp_path / f"{tag}.json", doc), s3_env, tmp_path / tag)

    first = validate(_as_job(cfg, "first", "uid-1"), "first")
    assert first.returncode == 0, first.stderr[-3000:]
    assert get_json(client, bucket, "shared/owner.json")["uid"] == "uid-1"
    second = validate(_as_job(cfg, "second", "uid-2"), "second")
    assert second.returncode == 42, second.stderr[-3000:]
    assert second.termination["reason"] == "InvalidOutput"
    assert "belongs to FineTuneJob team-a/first (uid uid-1)" in second.termination["message"]
    assert "output.overwrite: true" in second.termination["message"]
    assert get_json(client, bucket, "shared/owner.json")["uid"] == "uid-1"  # untouched
    taken = validate(_as_job(cfg, "second", "uid-2", overwrite=True), "taken")
    assert taken.returncode == 0, taken.stderr[-3000:]
    claim = get_json(client, bucket, "shared/owner.json")
    assert (claim["uid"], claim["previousOwner"]["uid"]) == ("uid-2", "uid-1")


def test_jobs_claiming_one_output_at_once_leave_exactly_one_owner(
    tiny: dict[str, Any], s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight validations racing on one fresh prefix: the claim is a conditional write, so one wins and
    the seven others are refused naming it (a read-then-write claim lets several win)."""
    from finetune_contract.config import TrainerConfig
    from finetune_trainer import ownership
    from finetune_trainer.s3io import S3

    client, bucket = tiny["client"], tiny["bucket"]
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(16))
    cfg = base_config(bucket, tiny["model"], train, None, "raced")
    jobs = [TrainerConfig.model_validate(_as_job(cfg, f"job-{i}", f"uid-{i}")) for i in range(8)]
    start = threading.Barrier(len(jobs))

    def claim(job: Any) -> str | None:
        s3 = S3()
        start.wait()
        return ownership.check_and_claim(s3, job)

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        problems = list(pool.map(claim, jobs))
    winners = [job for job, problem in zip(jobs, problems, strict=True) if problem is None]
    assert len(winners) == 1, problems
    [winner] = winners
    assert get_json(client, bucket, "raced/owner.json")["uid"] == winner.job.uid
    for problem in problems:
        assert (
            problem is None
            or f"belongs to FineTuneJob team-a/{winner.job.name} (uid {winner.job.uid})" in problem
        )


def test_an_output_taken_over_during_training_is_not_published_over(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another job takes the prefix over (output.overwrite) while this one trains: this one fails with
    InvalidOutput naming it, and publishes nothing there."""
    from finetune_contract.config import TrainerConfig
    from finetune_trainer import ownership
    from finetune_trainer.s3io import S3

    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(96))
    cfg = base_config(bucket, tiny["model"], train, None, "taken")
    cfg["checkpointing"] = {"everySteps": 2, "keep": 3}
    proc = start_trainer(
        "train",
        write_config(tmp_path / "mine.json", _as_job(cfg, "mine", "uid-mine")),
        s3_env,
        tmp_path / "mine",
    )
    deadline = time.monotonic() + 240
    while not complete_steps(client, bucket, "taken"):
        assert proc.poll() is None, "trainer exited before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    other = TrainerConfig.model_validate(_as_job(cfg, "other", "uid-other", overwrite=True))
    assert ownership.check_and_claim(S3(), other) is None

    run = finish(proc, tmp_path / "mine")
    assert run.returncode == 42, run.stderr[-3000:]
    assert run.termination["reason"] == "InvalidOutput"
    assert "taken over by FineTuneJob team-a/other (uid uid-other)" in run.termination["message"]
    assert list_keys(client, bucket, "taken/adapter/") == []
    assert list_keys(client, bucket, "taken/reports/result.json") == []
    assert get_json(client, bucket, "taken/owner.json")["uid"] == "uid-other"


def test_a_recreated_job_does_not_resume_its_predecessor_and_a_published_adapter_is_kept(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(96))
    cfg = base_config(bucket, tiny["model"], train, None, "again")
    cfg["checkpointing"] = {"everySteps": 2, "keep": 3}
    old = write_config(tmp_path / "old.json", _as_job(cfg, "bot", "uid-old"))
    proc = start_trainer("train", old, s3_env, tmp_path / "old")
    assert preempt_after(proc, client, bucket, "again", tmp_path / "old", checkpoints=1).returncode == 76

    # Deleted and created again under the same name: a new UID, and a fresh run.
    new = write_config(tmp_path / "new.json", _as_job(cfg, "bot", "uid-new"))
    run = run_trainer("train", new, s3_env, tmp_path / "new")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.termination.get("resumedFromStep") is None
    result = get_json(client, bucket, "again/reports/result.json")
    assert result["skippedCheckpoints"]
    assert all("another job" in s["problem"] for s in result["skippedCheckpoints"])
    claim = get_json(client, bucket, "again/owner.json")
    assert (claim["uid"], claim["previousOwner"]["uid"]) == ("uid-new", "uid-old")

    # A third one under the name finds a published adapter: refused, the adapter untouched.
    adapter = {
        k: client.head_object(Bucket=bucket, Key=k)["ETag"]
        for k in list_keys(client, bucket, "again/adapter/")
    }
    third = run_trainer(
        "validate",
        write_config(tmp_path / "third.json", _as_job(cfg, "bot", "uid-3")),
        s3_env,
        tmp_path / "third",
    )
    assert third.returncode == 42, third.stderr[-3000:]
    assert third.termination["reason"] == "InvalidOutput"
    assert (
        "already holds a published adapter of FineTuneJob team-a/bot (uid uid-new)"
        in third.termination["message"]
    )
    assert {
        k: client.head_object(Bucket=bucket, Key=k)["ETag"]
        for k in list_keys(client, bucket, "again/adapter/")
    } == adapter


def test_a_full_fine_tune_with_the_default_settings_lowers_the_validation_loss(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    """No hyperparameters but the sequence length: the full-fine-tune learning rate, fp32 master weights
    and the steps chosen from the data (docs/hyperparameters.md)."""
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(64))
    cfg = base_config(bucket, tiny["model"], train, None, "full-default")
    cfg["method"] = {"type": "full"}
    cfg["hyperparameters"] = {"maxSeqLength": 128}
    run = run_trainer("train", write_config(tmp_path / "full.json", cfg), s3_env, tmp_path / "scratch")
    assert run.returncode == 0, run.stderr[-3000:]
    resolved = run.termination["hyperparameters"]
    assert float(resolved["learningRate"]) == 2e-5
    assert run.termination["evalLoss"] < run.termination["baseEvalLoss"]


def _overfitting_config(tiny: dict[str, Any], out: str, *, epochs: int) -> dict[str, Any]:
    """A full fine-tune (every weight learns; the tiny model's LoRA barely moves its loss) at a high
    constant rate, validated on rows that ask train's own questions with other answers: the validation
    loss falls until step 60, then rises (evaluations every 10 steps)."""
    client, bucket = tiny["client"], tiny["bucket"]
    train = put_jsonl(client, bucket, "data/train.jsonl", chat_rows(160))
    val = put_jsonl(client, bucket, "data/contradicting.jsonl", chat_rows(8, color_shift=3))
    cfg = base_config(bucket, tiny["model"], train, val, out)
    cfg["method"] = {"type": "full"}
    cfg["hyperparameters"].update({"epochs": epochs, "learningRate": "1e-2", "lrScheduler": "constant"})
    return cfg


def _eval_losses(client: Any, bucket: str, out: str) -> dict[int, float]:
    log = client.get_object(Bucket=bucket, Key=f"{out}/reports/train_log.jsonl")["Body"].read().decode()
    entries = [json.loads(line) for line in log.splitlines()]
    return {e["step"]: e["eval_loss"] for e in entries if "eval_loss" in e}


def test_the_best_evaluation_is_published_and_early_stopping_restores_it(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    cfg = _overfitting_config(tiny, "best", epochs=5)
    cfg["hyperparameters"]["earlyStopping"] = {"patience": 2}
    run = run_trainer("train", write_config(tmp_path / "best.json", cfg), s3_env, tmp_path / "scratch")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = run.termination

    losses = _eval_losses(client, bucket, "best")
    best_step = min(losses, key=lambda s: (losses[s], s))
    last_eval = max(losses)
    assert summary["earlyStopped"] is True, losses
    assert summary["step"] == last_eval < summary["totalSteps"], losses
    # Two evaluations without improvement after the best, then the best's weights were restored.
    assert sorted(losses).index(last_eval) - sorted(losses).index(best_step) == 2
    assert summary["publishedStep"] == best_step < summary["step"]
    result = get_json(client, bucket, "best/reports/result.json")
    assert result["publishedStep"] == best_step
    # The published adapter is scored as the best step scored, not as the last one.
    tuned = result["eval"]["validation"]["tunedLoss"]
    assert tuned == pytest.approx(losses[best_step], rel=0.05)
    assert tuned < losses[last_eval]
    card = client.get_object(Bucket=bucket, Key="best/model/README.md")["Body"].read().decode()
    assert f"from step {best_step} " in card


def test_a_resumed_run_publishes_a_best_step_saved_by_the_pod_before(
    tiny: dict[str, Any], s3_env: dict[str, str], tmp_path: Path
) -> None:
    client, bucket = tiny["client"], tiny["bucket"]
    cfg = _overfitting_config(tiny, "bestresume", epochs=4)
    cfg["checkpointing"] = {"everySteps": 7, "keep": 2}
    path = write_config(tmp_path / "config.json", cfg)

    scratch = tmp_path / "first"
    proc = start_trainer("train", path, s3_env, scratch)
    deadline = time.monotonic() + 180
    # Stop once the checkpoint after the best evaluation (step 60 of 80) exists.
    while not any(
        k.endswith("/COMPLETE") and int(k.split("/")[2][5:]) >= 63
        for k in list_keys(client, bucket, "bestresume/checkpoints/")
    ):
        assert proc.poll() is None, "trainer exited before the checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, scratch).returncode == 76
    assert "bestresume/checkpoints/best/BEST" in list_keys(client, bucket, "bestresume/checkpoints/best/")

    second = run_trainer("train", path, s3_env, tmp_path / "second")
    assert second.returncode == 0, second.stderr[-3000:]
    losses = _eval_losses(client, bucket, "bestresume")
    best_step = min(losses, key=lambda s: (losses[s], s))
    assert best_step < second.termination["resumedFromStep"]
    assert second.termination["publishedStep"] == best_step
    assert f"restored the weights of step {best_step}" in second.stderr
    tuned = get_json(client, bucket, "bestresume/reports/result.json")["eval"]["validation"]["tunedLoss"]
    assert tuned == pytest.approx(losses[best_step], rel=0.05)
