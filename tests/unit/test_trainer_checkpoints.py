"""Checkpoint selection: only complete checkpoints count; pruning keeps the newest K."""

from __future__ import annotations

from pathlib import Path

from finetune_trainer.checkpoints import (
    CheckpointInfo,
    file_digest,
    latest_complete,
    parse_listing,
    to_prune,
    verify,
)

PREFIX = "job/checkpoints/"


def keys(*names: str) -> list[str]:
    return [PREFIX + n for n in names]


def test_parse_listing_marks_complete_only_with_marker() -> None:
    listing = parse_listing(
        keys(
            "step-10/adapter_model.safetensors",
            "step-10/COMPLETE",
            "step-20/adapter_model.safetensors",
            "step-20/optimizer.pt",
            "step-5/COMPLETE",
            "not-a-step/COMPLETE",
            "step-30/nested/COMPLETE",
        ),
        PREFIX,
    )
    assert listing == [
        CheckpointInfo(5, True),
        CheckpointInfo(10, True),
        CheckpointInfo(20, False),
        CheckpointInfo(30, False),
    ]


def test_latest_complete_skips_a_newer_incomplete_upload() -> None:
    listing = [CheckpointInfo(10, True), CheckpointInfo(20, True), CheckpointInfo(30, False)]
    assert latest_complete(listing) == 20
    assert latest_complete([CheckpointInfo(30, False)]) is None
    assert latest_complete([]) is None


def test_steps_compare_numerically_not_as_strings() -> None:
    listing = parse_listing(keys("step-9/COMPLETE", "step-100/COMPLETE", "step-20/COMPLETE"), PREFIX)
    assert latest_complete(listing) == 100


def test_prune_keeps_newest_complete_and_drops_incomplete() -> None:
    listing = [
        CheckpointInfo(10, True),
        CheckpointInfo(20, False),
        CheckpointInfo(30, True),
        CheckpointInfo(40, True),
        CheckpointInfo(50, True),
    ]
    assert to_prune(listing, keep=2) == [10, 20, 30]
    assert to_prune(listing, keep=10) == [20]


def _checkpoint(root: Path) -> dict[str, object]:
    root.mkdir(parents=True)
    (root / "adapter.safetensors").write_bytes(b"w" * 100)
    (root / "sub").mkdir()
    (root / "sub" / "state.json").write_text("{}")
    return {
        "files": ["adapter.safetensors", "sub/state.json"],
        "digests": {n: file_digest(root / n) for n in ("adapter.safetensors", "sub/state.json")},
    }


def test_verify_names_what_is_wrong_with_a_checkpoint(tmp_path: Path) -> None:
    marker = _checkpoint(tmp_path / "c")
    assert verify(tmp_path / "c", marker) is None
    (tmp_path / "c" / "adapter.safetensors").write_bytes(b"w" * 50)
    assert verify(tmp_path / "c", marker) == "adapter.safetensors is 50 bytes, the marker says 100"
    (tmp_path / "c" / "adapter.safetensors").write_bytes(b"x" * 100)
    assert verify(tmp_path / "c", marker) == "adapter.safetensors does not match its sha256"
    (tmp_path / "c" / "sub" / "state.json").unlink()
    (tmp_path / "c" / "adapter.safetensors").write_bytes(b"w" * 100)
    assert verify(tmp_path / "c", marker) == "sub/state.json is missing"
    assert verify(tmp_path / "c", None) == "its COMPLETE marker is not readable JSON"
    # A marker from before digests: presence only.
    assert verify(tmp_path / "c", {"files": ["adapter.safetensors"]}) is None
    assert verify(tmp_path / "c", {"files": ["sub/state.json"]}) == "sub/state.json is missing"
