"""The trainer pod's scratch volume, sized from what validation measured (pure).

A trainer writes to its scratch emptyDir: the base model it downloads, one dataset file at a time,
Hugging Face caches, and its training state — a checkpoint being written next to the previous one, the
checkpoint it resumed from, and the best evaluation's weights. The pod requests what it surely writes
(`ephemeral-storage`, so the scheduler places it on a node with that much disk) and the volume's
`sizeLimit` bounds the whole, so a runaway job is evicted instead of filling the node's disk.

The training state scales with the trainable parameters, estimated from the weight files' bytes:
16-bit safetensors (2 bytes a parameter; an fp32 model is over-counted, which errs towards room) or a
quantized GGUF (at least half a byte a parameter). A full fine-tune keeps fp32 weights and Adam's two
moments (12 bytes a parameter); LoRA trains about 0.25% of the parameters per rank on all linear layers
(r 16: 3.6% of SmolLM2-135M), counted at the same 12 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from finetune_contract.spec import MethodType

MIB: Final = 1024**2
GIB: Final = 1024**3
# Hugging Face caches, tokenizer files, reports and temporary files.
CACHE_BYTES: Final = GIB
STATE_BYTES_PER_PARAMETER: Final = 12
LORA_SHARE_PER_RANK: Final = 0.0025
# A checkpoint being written, the previous one, the one resumed from, and the best weights.
STATES_ON_DISK: Final = 4


@dataclass(frozen=True)
class Scratch:
    request: int
    """The ephemeral-storage request: downloads + the largest dataset file + caches."""
    size_limit: int | None
    """The emptyDir sizeLimit; None where the model's size is unknown (the volume is then unbounded)."""


def parameters(weight_bytes: int, gguf: bool) -> int:
    """Parameters estimated from the weight files, erring high (see the module docstring)."""
    return weight_bytes * 2 if gguf else weight_bytes // 2


def trainer_scratch(
    *,
    method: MethodType,
    lora_rank: int,
    weight_bytes: int | None,
    gguf: bool,
    downloaded: bool,
    dataset_file_bytes: int,
    minimum: int,
) -> Scratch:
    """`downloaded`: the model is copied to scratch (S3, hf://), not used in place (pvc://).
    `minimum`: the platform's floor for the limit (settings.trainer_scratch_min)."""
    download = (weight_bytes or 0) if downloaded else 0
    request = _round_up(download + dataset_file_bytes + CACHE_BYTES)
    if weight_bytes is None:
        return Scratch(request=request, size_limit=None)
    params = parameters(weight_bytes, gguf)
    trainable = (
        params if method is MethodType.FULL else min(params, int(params * LORA_SHARE_PER_RANK * lora_rank))
    )
    limit = _round_up(max(minimum, request + STATES_ON_DISK * trainable * STATE_BYTES_PER_PARAMETER))
    return Scratch(request=request, size_limit=limit)


def quantity(n: int) -> str:
    """Bytes (rounded up to a MiB) as a Kubernetes quantity in the API server's canonical form: the
    largest binary suffix that keeps the number whole (10240Mi is stored as 10Gi)."""
    mib = -(-n // MIB)
    for suffix, size in (("Ti", 1024**2), ("Gi", 1024)):
        if mib % size == 0:
            return f"{mib // size}{suffix}"
    return f"{mib}Mi"


def _round_up(n: int) -> int:
    return -(-n // MIB) * MIB
