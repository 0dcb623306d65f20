"""Fetch the base model from S3 and load it: a Hugging Face directory or a single .gguf file.

A pvc:// model is already in the pod (the operator mounts the claim read-only): it is checked and
loaded in place, nothing is copied.

Safety: safetensors only (a directory holding only pickle weights is refused) and
`trust_remote_code=False`: the trainer never executes code that came with a model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_contract.config import TrainerBaseModel
from finetune_contract.uris import PVC_MOUNT_PATH, S3Uri

from .exitcodes import InvalidInputError, InvalidModelError, TransientIOError
from .local_model import LocalModel
from .s3io import S3
from .safepaths import escapes, resolves_inside

log = logging.getLogger(__name__)

_MODEL_FILES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".gguf")


def fetch_model(s3: S3, source: TrainerBaseModel, dest: Path, weights: bool = True) -> LocalModel:
    """Download the model (config + safetensors + tokenizer, or one .gguf) into dest.

    With weights=False (validate-only, on a small CPU pod) the safetensors shards are not
    downloaded; their headers are read with ranged GETs instead to prove they are readable.
    A pvc:// model (mounted at source.mount_path) is used where it is.
    """
    uri = source.uri
    if source.local_path is not None:
        return local_model(source.local_path, uri, root=Path(source.mount_path or PVC_MOUNT_PATH))
    if uri.startswith("hf://"):
        from .hf_hub import fetch_hf_model

        return fetch_hf_model(uri, dest, weights)
    src = S3Uri.parse(uri)
    if src.key.endswith(".gguf"):
        name = src.key.rsplit("/", 1)[-1]
        target = dest / name
        if not target.exists():
            s3.download_file(src, target)
        return LocalModel(dest, name, weight_bytes=target.stat().st_size)
    prefix = S3Uri(src.bucket, src.key if src.key.endswith("/") or not src.key else src.key + "/")
    sizes = {rel: size for rel, size in s3.list_sizes(prefix).items() if not rel.endswith("/")}
    keys = [prefix.key + rel for rel in sizes]
    if not keys:
        raise InvalidModelError(f"baseModel.uri {uri} is empty: upload a Hugging Face model directory there")
    names = {k[len(prefix.key) :] for k in keys}
    if "config.json" not in names:
        raise InvalidModelError(
            f"baseModel.uri {uri} has no config.json: it must be a Hugging Face model directory"
        )
    if not any(n.endswith(".safetensors") for n in names):
        raise InvalidModelError(
            f"baseModel.uri {uri} has no .safetensors weights (pickle .bin weights are refused for safety); "
            "convert the model to safetensors"
        )
    for key in keys:
        rel = key[len(prefix.key) :]
        if not rel.endswith(_MODEL_FILES):
            continue
        if escapes(rel):
            raise InvalidModelError(
                f"baseModel.uri {uri} holds s3://{prefix.bucket}/{key}, whose name leaves the model "
                "directory; remove or rename that object"
            )
        if not weights and rel.endswith(".safetensors"):
            _check_safetensors_header(s3, S3Uri(prefix.bucket, key))
            continue
        target = dest / rel
        if not target.exists():
            s3.download_file(S3Uri(prefix.bucket, key), target)
    return LocalModel(dest, None, weight_bytes=sum(v for n, v in sizes.items() if n.endswith(".safetensors")))


def local_model(path: Path, uri: str, root: Path | None = None) -> LocalModel:
    """A model on a volume the pod mounts (pvc://): a Hugging Face directory or one .gguf file.

    Checked like an S3 model (config.json, safetensors only) plus each weights file's header, and
    used in place. Errors name the URI and the path in the pod. Symlinks that lead out of the
    claim (`root`), or out of the model directory for its files, are refused: the claim may be
    written by others, and a link to another mount would make the trainer read and publish it.
    """
    where = f"baseModel.uri {uri} ({path} in the pod)"
    if root is not None and path.exists() and not resolves_inside(path, root):
        raise InvalidModelError(
            f"{where} is a symlink to {path.resolve()}, outside the claim; point baseModel.uri at the "
            "model itself"
        )
    try:
        if path.is_file():
            if not path.name.lower().endswith(".gguf"):
                raise InvalidModelError(
                    f"{where} is a file but not a .gguf file: point baseModel.uri at a Hugging Face "
                    "model directory or at one .gguf file"
                )
            _check_local_header(path, where)
            return LocalModel(path.parent, path.name, weight_bytes=path.stat().st_size)
        if not path.is_dir():
            raise InvalidModelError(
                f"{where} does not exist: check the claim's contents and the path after the claim's name"
            )
        files = {p.name: p for p in path.iterdir() if p.is_file()}
        outside = sorted(n for n, p in files.items() if not resolves_inside(p, path))
        if outside:
            raise InvalidModelError(
                f"{where}: {', '.join(outside[:3])} link outside the model directory; copy the files in "
                "instead of linking them"
            )
        if "config.json" not in files:
            ggufs = sorted(n for n in files if n.lower().endswith(".gguf"))
            hint = f"; it holds {ggufs[0]}: point baseModel.uri at that file" if ggufs else ""
            raise InvalidModelError(
                f"{where} has no config.json: it must be a Hugging Face model directory or one .gguf file{hint}"
            )
        weights = sorted(n for n in files if n.endswith(".safetensors"))
        if not weights:
            raise InvalidModelError(
                f"{where} has no .safetensors weights (pickle .bin weights are refused for safety); "
                "convert the model to safetensors"
            )
        for name in weights:
            _check_local_header(files[name], f"{where}: {name}")
        weight_bytes = sum(files[name].stat().st_size for name in weights)
    except PermissionError as exc:
        raise InvalidModelError(
            f"{where} is not readable ({exc.strerror}: {exc.filename}): the trainer runs as uid 1000, "
            "make the files readable to it"
        ) from exc
    except InvalidInputError:
        raise
    except OSError as exc:
        raise TransientIOError(f"reading {where}: {exc}") from exc
    return LocalModel(path, None, weight_bytes=weight_bytes)


def _check_local_header(path: Path, where: str) -> None:
    """The file starts like a GGUF file or a safetensors file (by its suffix)."""
    with path.open("rb") as handle:
        if path.name.lower().endswith(".gguf"):
            if handle.read(4) != b"GGUF":
                raise InvalidModelError(f"{where} is not a GGUF file (no GGUF magic number)")
            return

        def read(first: int, last: int) -> bytes:
            handle.seek(first)
            return handle.read(last - first + 1)

        _check_safetensors_bytes(read, where)


def _check_safetensors_header(s3: S3, uri: S3Uri) -> None:
    _check_safetensors_bytes(lambda first, last: s3.get_range(uri, first, last), str(uri))


def _check_safetensors_bytes(read: Callable[[int, int], bytes], where: str) -> None:
    """read(first, last) gives bytes first..last inclusive (an HTTP range, or a seek in a local file).
    Layout: 8-byte little-endian header length, then a JSON header describing the tensors."""
    head = read(0, 7)
    size = int.from_bytes(head, "little") if len(head) == 8 else -1
    if size <= 0 or size > 100 * 1024 * 1024:
        raise InvalidModelError(f"{where} is not a safetensors file (bad header length)")
    try:
        header = json.loads(read(8, 8 + size - 1))
    except ValueError as exc:
        raise InvalidModelError(f"{where} is not a safetensors file (header is not JSON)") from exc
    if not isinstance(header, dict):
        raise InvalidModelError(f"{where} is not a safetensors file (header is not an object)")


def load_tokenizer(model: LocalModel) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model.directory), trust_remote_code=False, **model.kwargs)
    except Exception as exc:
        raise InvalidModelError(f"cannot load the tokenizer of the base model: {exc}") from exc
    if tok.pad_token_id is None:
        # Padding only happens for generation/eval batches; eos is the usual stand-in.
        tok.pad_token = tok.eos_token
    return tok


def check_loadable(model: LocalModel) -> dict[str, Any]:
    """Cheap checks that the weights are readable without materialising the model."""
    if model.gguf_file:
        from gguf import GGUFReader

        try:
            reader = GGUFReader(str(model.directory / model.gguf_file))
        except Exception as exc:
            raise InvalidModelError(f"{model.gguf_file} is not a readable GGUF file: {exc}") from exc
        arch = reader.fields.get("general.architecture")
        architecture = bytes(arch.parts[arch.data[0]]).decode() if arch is not None else "unknown"
        return {"format": "gguf", "architecture": architecture, "tensors": len(reader.tensors)}
    from safetensors import safe_open

    config = json.loads((model.directory / "config.json").read_text())
    tensors = 0
    # Shards absent locally were checked remotely by fetch_model(weights=False).
    for path in sorted(model.directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="np") as handle:
                tensors += len(list(handle.keys()))
        except Exception as exc:
            raise InvalidModelError(f"{path.name} is not a readable safetensors file: {exc}") from exc
    return {
        "format": "hf",
        "architecture": (config.get("architectures") or ["unknown"])[0],
        "tensors": tensors,
    }


def load_model(model: LocalModel, method: str, device: str, *, attention: str = "sdpa") -> Any:
    """Load the causal LM for training: bf16 on GPU, float32 on CPU; 4-bit for QLoRA; the attention
    kernel the run's kernel plan chose (kernels.py).

    A full fine-tune keeps fp32 weights on the GPU too: training computes in bf16 (autocast) while the
    optimizer updates fp32 master weights, so updates far smaller than a weight do not round away."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": False, "attn_implementation": attention, **model.kwargs}
    if device == "cuda" and method != "full":
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.float32
    if method == "qlora":
        if device != "cuda":
            raise InvalidModelError(
                "method.type 'qlora' needs a CUDA GPU (bitsandbytes 4-bit); use 'lora' to train on CPU"
            )
        if model.gguf_file:
            raise InvalidModelError("QLoRA needs a Hugging Face safetensors model, not a GGUF file")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if not model.gguf_file:
        kwargs["use_safetensors"] = True
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(model.directory), **kwargs)
    except ValueError as exc:
        if attention == "sdpa" or attention not in str(exc):
            raise InvalidModelError(f"cannot load the base model: {exc}") from exc
        # An architecture without this kernel (FlexAttention: GPT-2, Falcon, Bloom, ...) trains on SDPA.
        log.info("the model does not support %s; loading it with sdpa", attention)
        return load_model(model, method, device, attention="sdpa")
    except OSError as exc:
        raise InvalidModelError(f"cannot load the base model: {exc}") from exc
    if model.gguf_file:
        lm = _as_plain_model(lm)
    if device == "cuda" and method != "qlora":
        lm = lm.to("cuda")  # type: ignore[arg-type]
    return lm


def _as_plain_model(lm: Any) -> Any:
    """Turn a GGUF-loaded model into an ordinary trainable one.

    transformers dequantizes GGUF tensors to float on load but keeps its GGUF "quantizer"
    attached, and Trainer refuses to train models that carry one. Once every parameter is a
    float tensor the quantizer describes nothing, so it is dropped (checked, not assumed).
    """
    if not all(p.is_floating_point() for p in lm.parameters()):
        raise InvalidModelError(
            "this GGUF file loads as packed quantized blocks that cannot be trained; "
            "use the model in Hugging Face safetensors format"
        )
    lm.hf_quantizer = None
    lm.is_quantized = False
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    return lm
