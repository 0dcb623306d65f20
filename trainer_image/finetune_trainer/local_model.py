"""A base model on the pod's disk, ready for transformers: what every model source resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LocalModel:
    directory: Path
    gguf_file: str | None  # file name inside `directory` when the model is a GGUF
    # Bytes of the weight files (.safetensors or the .gguf), wherever they are; None where the source
    # does not say (hf://). The operator sizes the trainer's scratch volume from it.
    weight_bytes: int | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}
