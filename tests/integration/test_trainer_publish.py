"""Publishing an adapter against the real S3: a reader polling adapter/ during a publish over an older
one never sees a loadable directory (one with its adapter_config.json) that is not whole."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from finetune_contract.uris import S3Uri
from finetune_trainer.publishing import publish_dir
from finetune_trainer.s3io import S3


def _adapter(root: Path, tag: bytes, files: dict[str, int]) -> dict[str, int]:
    root.mkdir(parents=True)
    for name, size in files.items():
        (root / name).write_bytes((tag * size)[:size])
    return files


def test_a_reader_never_sees_a_partial_adapter(
    s3_env: dict[str, str], s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)  # the pod's credentials
    s3 = S3()
    dest = S3Uri(s3_bucket, "job/adapter/")
    sha = S3Uri(s3_bucket, "job/adapter.sha256")
    old = _adapter(
        tmp_path / "v1",
        b"1",
        {"adapter_config.json": 40, "adapter_model.safetensors": 24 << 20, "tokenizer.json": 1 << 20},
    )
    new = _adapter(tmp_path / "v2", b"2", {"adapter_config.json": 41, "adapter_model.safetensors": 40 << 20})
    publish_dir(s3, tmp_path / "v1", dest, "one  adapter_model.safetensors\n", sha)
    assert s3.list_sizes(dest) == old

    seen: list[dict[str, int]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(s3.list_sizes(dest))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        publish_dir(s3, tmp_path / "v2", dest, "two  adapter_model.safetensors\n", sha)
    finally:
        done.set()
        reader.join()
    assert s3.list_sizes(dest) == new
    assert s3.get_bytes(sha) == b"two  adapter_model.safetensors\n"
    loadable = [snap for snap in seen if "adapter_config.json" in snap]
    assert all(snap in (old, new) for snap in loadable), [s for s in loadable if s not in (old, new)]
    # The reader did look while the directory was being replaced (not only before or after).
    assert any("adapter_config.json" not in snap for snap in seen), len(seen)
