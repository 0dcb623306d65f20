"""Checkpoints on S3: `checkpoints/step-N/` plus a `COMPLETE` marker written last.

A checkpoint counts only once its marker exists: a pod killed halfway through an upload leaves
a directory without a marker, which resume ignores and the next save prunes. The marker lists each
file's size and sha256; a resume checks the download against it and, when a file is missing, short
or changed (a truncated object, a bit flip, a hand edit), falls back to the previous complete
checkpoint and says which one it skipped and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from finetune_contract.outcomes import CheckpointRef
from finetune_contract.uris import S3Uri

from .exitcodes import TrainerError
from .s3io import S3

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True, order=True)
class CheckpointInfo:
    step: int
    complete: bool


def checkpoints_prefix(output_prefix: str) -> S3Uri:
    return S3Uri.parse(output_prefix).join("checkpoints/")


def parse_listing(keys: list[str], prefix_key: str) -> list[CheckpointInfo]:
    """Turn object keys under checkpoints/ into (step, complete) entries, sorted by step."""
    steps: dict[int, bool] = {}
    for key in keys:
        rel = key[len(prefix_key) :]
        head, _, rest = rel.partition("/")
        match = _STEP_DIR.match(head)
        if not match:
            continue
        step = int(match.group(1))
        steps[step] = steps.get(step, False) or rest == MARKER
    return sorted(CheckpointInfo(step, complete) for step, complete in steps.items())


def latest_complete(checkpoints: list[CheckpointInfo]) -> int | None:
    complete = [c.step for c in checkpoints if c.complete]
    return max(complete) if complete else None


def to_prune(checkpoints: list[CheckpointInfo], keep: int) -> list[int]:
    """Steps to delete: complete ones beyond the newest `keep`, and every incomplete one.

    Called only by the single writer right after it finished a save, so an incomplete
    checkpoint is never one still being written.
    """
    complete = sorted((c.step for c in checkpoints if c.complete), reverse=True)
    doomed = set(complete[keep:])
    doomed.update(c.step for c in checkpoints if not c.complete)
    return sorted(doomed)


class CheckpointStore:
    """This job's checkpoints. `owner` ({"uid", "configHash"}) is written into each marker, and only
    checkpoints with the same owner are resumed from or kept: after a takeover of the prefix
    (ownership.py) another job's are not this run's to continue, and are pruned at the next save."""

    def __init__(self, s3: S3, output_prefix: str, keep: int, owner: dict[str, str] | None = None) -> None:
        self.s3 = s3
        self.prefix = checkpoints_prefix(output_prefix)
        self.keep = keep
        self.owner = owner or {}
        # step -> its marker (markers never change once written)
        self._markers: dict[int, dict[str, object] | None] = {}
        # Complete checkpoints the last download_latest passed over: {"step", "problem"}.
        self.skipped: list[dict[str, object]] = []

    def listing(self) -> list[CheckpointInfo]:
        return parse_listing(self.s3.list_keys(self.prefix), self.prefix.key)

    def refs(self) -> list[CheckpointRef]:
        """This job's checkpoints in S3 now, oldest first, with the creation time from each marker."""
        out = []
        for info in self.listing():
            if info.complete and not self.is_ours(info.step):
                continue
            created = _created_at(self._marker(info.step)) if info.complete else None
            out.append(CheckpointRef(step=info.step, complete=info.complete, created_at=created))
        return out

    def _marker(self, step: int) -> dict[str, object] | None:
        if step not in self._markers:
            try:
                self._markers[step] = _as_dict(json.loads(self.s3.get_bytes(self.uri(step).join(MARKER))))
            except (TrainerError, ValueError):
                self._markers[step] = None
        return self._markers[step]

    def is_ours(self, step: int) -> bool:
        """The complete checkpoint `step` was written by this job with this training config."""
        if not self.owner:
            return True
        marker = self._marker(step) or {}
        return all(marker.get(k) == v for k, v in self.owner.items())

    def uri(self, step: int) -> S3Uri:
        return self.prefix.join(f"step-{step}/")

    def upload_files(self, local_dir: Path, step: int, names: list[str]) -> dict[str, dict[str, object]]:
        """Upload some files of a checkpoint (a rank's own shards) without completing it; their digests."""
        target = self.uri(step)
        digests: dict[str, dict[str, object]] = {}
        for name in sorted(names):
            self.s3.upload_file(local_dir / name, target.join(name))
            digests[name] = file_digest(local_dir / name)
        return digests

    def upload(
        self, local_dir: Path, step: int, *, uploaded: dict[str, dict[str, object]] | None = None
    ) -> S3Uri:
        """Upload the checkpoint's files, then its marker listing them with `uploaded` (what other ranks
        put there already, which this directory may lack or hold too)."""
        target = self.uri(step)
        started = time.monotonic()
        others = uploaded or {}
        paths = sorted((p for p in local_dir.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
        digests = {**others}
        for path in paths:
            name = path.relative_to(local_dir).as_posix()
            if name not in others:
                self.s3.upload_file(path, target.join(name))
                digests[name] = file_digest(path)
        marker = {
            **self.owner,
            "step": step,
            "files": sorted(digests),
            "digests": dict(sorted(digests.items())),
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.s3.put_bytes(target.join(MARKER), json.dumps(marker).encode(), "application/json")
        log.info("checkpoint step %d uploaded to %s in %.1fs", step, target, time.monotonic() - started)
        self.prune()
        return target

    def prune(self) -> None:
        listing = self.listing()
        ours = [c for c in listing if not c.complete or self.is_ours(c.step)]
        foreign = [c.step for c in listing if c.complete and not self.is_ours(c.step)]
        for step in sorted({*to_prune(ours, self.keep), *foreign}):
            log.info("pruning checkpoint step %d", step)
            self.s3.delete_prefix(self.uri(step))
            self._markers.pop(step, None)

    def download_latest(self, dest_root: Path) -> tuple[int, Path] | None:
        """The newest complete checkpoint that verifies, downloaded; `skipped` says what was passed over."""
        self.skipped = []
        complete = sorted((c.step for c in self.listing() if c.complete), reverse=True)
        for step in complete:
            if not self.is_ours(step):
                # Another job's (a prefix taken over), or a run of another config: not ours to continue.
                self.skipped.append({"step": step, "problem": "written by another job or another config"})
                continue
            dest = dest_root / f"checkpoint-{step}"
            shutil.rmtree(dest, ignore_errors=True)
            self.s3.download_prefix(self.uri(step), dest)
            marker_path = dest / MARKER
            problem = verify(dest, _read_marker(marker_path))
            marker_path.unlink(missing_ok=True)
            if problem is None:
                return step, dest
            log.warning("checkpoint step %d does not verify (%s); trying the one before", step, problem)
            self.skipped.append({"step": step, "problem": problem})
            shutil.rmtree(dest, ignore_errors=True)
        return None


def _as_dict(value: object) -> dict[str, object] | None:
    return value if isinstance(value, dict) else None


def _created_at(marker: dict[str, object] | None) -> datetime | None:
    # Status detail only: a marker we cannot read still marks the checkpoint complete.
    try:
        return datetime.fromisoformat(str((marker or {})["createdAt"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


def file_digest(path: Path) -> dict[str, object]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _read_marker(path: Path) -> dict[str, object] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def verify(directory: Path, marker: dict[str, object] | None) -> str | None:
    """None when every file the marker lists is there with its size and sha256; else what is wrong.

    A marker from before digests were recorded is checked for its files' presence only.
    """
    if marker is None:
        return "its COMPLETE marker is not readable JSON"
    digests = marker.get("digests")
    listed = marker.get("files")
    if isinstance(digests, dict):
        for name, want in sorted(digests.items()):
            path = directory / str(name)
            if not path.is_file():
                return f"{name} is missing"
            got = file_digest(path)
            if not isinstance(want, dict) or got["size"] != want.get("size"):
                return f"{name} is {got['size']} bytes, the marker says {want.get('size') if isinstance(want, dict) else '?'}"
            if got["sha256"] != want.get("sha256"):
                return f"{name} does not match its sha256"
        return None
    if isinstance(listed, list):
        missing = [str(n) for n in listed if not (directory / str(n)).is_file()]
        return f"{missing[0]} is missing" if missing else None
    return "its COMPLETE marker lists no files"
