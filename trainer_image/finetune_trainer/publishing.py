"""Publishing a directory (the adapter, or a full model) under the output prefix so that no reader
ever takes a partial one for the real thing.

S3 has no rename, so the directory cannot appear at once; what a loader needs first can. peft,
transformers and vLLM recognise an adapter by `adapter_config.json` and a model by `config.json`
(the gate). A publish removes the old gate and `<folder>.sha256` first, uploads every other file,
removes files of an earlier publish that are not in this one, checks each object's size against the
local file, and only then writes the gate and, after it, the sha256 file (`result.json`, written by
the caller, comes last of all). A reader that sees the gate sees the whole new directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from finetune_contract.uris import S3Uri

from .exitcodes import TransientIOError

if TYPE_CHECKING:
    from .s3io import S3

GATES: Final = ("adapter_config.json", "config.json")


def gate_of(local: Path) -> str:
    """The file whose presence makes `local` a loadable adapter or model."""
    for name in GATES:
        if (local / name).is_file():
            return name
    raise ValueError(f"{local} holds neither {' nor '.join(GATES)}: not an adapter or a model")


def publish_dir(s3: S3, local: Path, dest: S3Uri, sha256_line: str, sha256_uri: S3Uri) -> None:
    gate = gate_of(local)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    # The old directory stops being loadable before any of its files change.
    s3.delete(dest.join(gate))
    s3.delete(sha256_uri)
    for rel in files:
        if rel != gate:
            s3.upload_file(local / rel, dest.join(rel))
    for key in s3.list_keys(dest):
        rel = key[len(dest.key) :]
        if rel not in files:
            s3.delete(S3Uri(dest.bucket, key))
    sizes = s3.list_sizes(dest)
    wrong = [rel for rel in files if rel != gate and sizes.get(rel) != (local / rel).stat().st_size]
    if wrong:
        raise TransientIOError(f"publishing {dest}: {', '.join(wrong[:3])} did not arrive whole; retrying")
    s3.upload_file(local / gate, dest.join(gate))
    s3.put_bytes(sha256_uri, sha256_line.encode(), "text/plain")
