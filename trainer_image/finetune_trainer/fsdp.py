"""FSDP2 for distributed full fine-tunes: every weight and its optimizer state sharded over the ranks.

A full fine-tune under DDP holds the whole model, its gradients and two AdamW moments on every rank;
FSDP2 (`torch.distributed.fsdp.fully_shard`, per decoder layer and then the root) keeps 1/world of each
and gathers a layer's weights only while it computes. LoRA and QLoRA stay on DDP: their trainable part
is small, and sharding the frozen base would only add communication.

transformers' Trainer runs the sharded model as one "sharded at load time": it neither wraps it in DDP
nor moves it, and defers FSDP's gradient reduction to the last micro-batch of a step. It does not
checkpoint such a model's optimizer, so `ShardedTrainer` checkpoints with torch.distributed.checkpoint
(DCP): `model/` and `optimizer/` hold one `__<rank>_0.distcp` shard file per rank plus `.metadata`, and
DCP reshards on load, so a run resumes on another world size. The scheduler and the Trainer state are
rank 0's files, the RNG states each rank's own, as with DDP (checkpoints.py uploads them, each rank its
own files). The full weights exist only where they are needed whole: the best evaluation's weights
(best.py) and the final model, gathered to rank 0 on CPU, which evaluates and publishes them as a
`from_pretrained`-loadable model.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from finetune_contract.config import TrainerConfig
from transformers import Trainer

from .distributed import Rank

log = logging.getLogger(__name__)

MODEL_DIR = "model"
OPTIMIZER_DIR = "optimizer"
SCHEDULER = "scheduler.pt"
_SHARD = re.compile(r"__(\d+)_\d+\.distcp$")
_RNG = re.compile(r"rng_state_(\d+)\.pth$")


def enabled(cfg: TrainerConfig, rank: Rank) -> bool:
    return cfg.method.type == "full" and rank.distributed


def owner(relative: str) -> int | None:
    """The rank whose file this is in a checkpoint (its DCP shard, its RNG state); None: rank 0's to
    upload with the rest (metadata, Trainer state, scheduler)."""
    name = relative.rsplit("/", 1)[-1]
    for pattern in (_SHARD, _RNG):
        found = pattern.fullmatch(name)
        if found:
            return int(found.group(1))
    return None


def is_sharded_checkpoint(directory: Path) -> bool:
    return (directory / MODEL_DIR / ".metadata").is_file()


def resume_problem(directory: Path, *, sharded: bool) -> str | None:
    """Why this checkpoint cannot resume this run, or None. DCP reshards between any numbers of ranks,
    but a sharded checkpoint is not one process's Trainer checkpoint or the other way round. A job's
    world size is fixed (`resources` is immutable), so this is a checkpoint written before an upgrade
    that brought FSDP2, or by a run started by hand: the run starts from the base model instead."""
    if is_sharded_checkpoint(directory) == sharded:
        return None
    kind = "an FSDP2 (sharded)" if not sharded else "a single-process (unsharded)"
    doing = "shards" if sharded else "does not shard"
    return f"{directory.name} is {kind} checkpoint of a full fine-tune and this run {doing}"


def shard(model: Any, layers: list[torch.nn.Module], device: str) -> Any:
    """Shard each decoder layer, then the root (embeddings, final norm, LM head), over all ranks."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device, (dist.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # What transformers sets for a model it sharded itself: the Trainer leaves placement and gradient
    # reduction to FSDP (no DDP wrap, no `.to()`).
    model._is_distributed_loading_by_transformers = True
    log.info(
        "FSDP2: %d decoder layers and the root sharded over %d ranks", len(layers), dist.get_world_size()
    )
    return model


def full_state(model: Any) -> dict[str, torch.Tensor]:
    """The whole model's parameters on rank 0's CPU ({} elsewhere). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = {name for name, _ in model.named_parameters()}
    # Parameters only (a tied LM head appears once, as in named_parameters), as best.py keeps them.
    return {k: v for k, v in state.items() if k in names and isinstance(v, torch.Tensor)}


def _optimizer(trainer: Trainer) -> Any:
    # accelerate wraps the optimizer; DCP needs the torch one.
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)


class ShardedTrainer(Trainer):
    """transformers' Trainer with DCP checkpoints of a model sharded by `shard` (module docstring)."""

    @property
    def _sharded(self) -> Any:
        return self.model

    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self) -> Iterator[None]:
        # transformers' own reads a DistributedConfig that only its load-time sharding sets; one mesh
        # dimension here (no HSDP), so a step's micro-batches before the last keep their gradients local.
        self._sharded.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self._sharded.set_requires_gradient_sync(True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        from torch.distributed.checkpoint.state_dict_saver import save

        assert output_dir is not None
        save({"model": get_model_state_dict(self._sharded)}, checkpoint_id=str(Path(output_dir) / MODEL_DIR))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        from torch.distributed.checkpoint.state_dict_saver import save

        super()._save_checkpoint(model, trial)  # the model (save_model) and, on rank 0, the Trainer state
        output = Path(self.args.output_dir or ".") / f"checkpoint-{self.state.global_step}"
        optimizer = get_optimizer_state_dict(self._sharded, _optimizer(self))
        save({"optimizer": optimizer}, checkpoint_id=str(output / OPTIMIZER_DIR))
        if self.args.should_save and self.lr_scheduler is not None:
            torch.save(self.lr_scheduler.state_dict(), output / SCHEDULER)
        self._save_rng_state(str(output))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
        from torch.distributed.checkpoint.state_dict_loader import load

        state = {"model": get_model_state_dict(self._sharded)}
        load(state, checkpoint_id=str(Path(resume_from_checkpoint) / MODEL_DIR))
        set_model_state_dict(self._sharded, state["model"])

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
        from torch.distributed.checkpoint.state_dict_loader import load

        if checkpoint is None:
            return
        optimizer = _optimizer(self)
        # get_optimizer_state_dict initialises the (lazy) AdamW state, so DCP has tensors to load into.
        state = {"optimizer": get_optimizer_state_dict(self._sharded, optimizer)}
        load(state, checkpoint_id=str(Path(checkpoint) / OPTIMIZER_DIR))
        set_optimizer_state_dict(self._sharded, optimizer, state["optimizer"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER, weights_only=True))
