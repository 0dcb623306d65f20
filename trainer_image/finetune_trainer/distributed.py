"""This process's place in a distributed run, and the few collectives the trainer needs around
transformers' own DDP (which handles gradients, data sharding and the loss normalisation).

The launcher (launch.py) starts one worker per GPU (or one per pod on CPU) with torch elastic's
variables: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT. A single-process run
has none of them and every helper below is then a no-op, so the single-GPU path is unchanged.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# A collective waits at most this long for the slowest rank: rank 0 uploads checkpoints and evaluates
# while the others wait at the next collective, and a large model's upload takes minutes.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Rank:
        env = os.environ if environ is None else environ

        def number(name: str, default: int) -> int:
            try:
                return int(env.get(name, default))
            except ValueError:
                return default

        return cls(
            rank=number("RANK", 0),
            local_rank=number("LOCAL_RANK", 0),
            world_size=number("WORLD_SIZE", 1),
            local_world_size=number("LOCAL_WORLD_SIZE", 1),
        )

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that serves /metrics, uploads, evaluates, reports and publishes."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """Local rank 0: downloads for its pod (the others of the pod reuse what it fetched)."""
        return self.local_rank == 0


def init(rank: Rank, device: str) -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs) before anything needs a collective."""
    if not rank.distributed:
        return
    import torch
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(rank.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device == "cuda" else "gloo",
            timeout=COLLECTIVE_TIMEOUT,
            rank=rank.rank,
            world_size=rank.world_size,
        )
    log.info(
        "rank %d of %d (local %d of %d)", rank.rank, rank.world_size, rank.local_rank, rank.local_world_size
    )


def _device() -> Any:
    import torch
    import torch.distributed as dist

    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def barrier(rank: Rank) -> None:
    if rank.distributed:
        import torch.distributed as dist

        dist.barrier()


def any_rank(rank: Rank, flag: bool) -> bool:
    """True on every rank when it is true on any (e.g. one pod received SIGTERM)."""
    if not rank.distributed:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def total(rank: Rank, value: int) -> int:
    """The sum over ranks (e.g. tokens trained: each rank counts its own share of the batch)."""
    if not rank.distributed:
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())


def from_main(rank: Rank, value: T) -> T:
    """Rank 0's value on every rank (a decision every rank must share, e.g. the checkpoint to resume)."""
    if not rank.distributed:
        return value
    import torch.distributed as dist

    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def gather_to_main(rank: Rank, value: T) -> list[T] | None:
    """Every rank's value, in rank order, on rank 0 (None elsewhere)."""
    if not rank.distributed:
        return [value]
    import torch.distributed as dist

    out: list[Any] | None = [None] * rank.world_size if rank.is_main else None
    dist.gather_object(value, out, dst=0)
    return out


def shutdown(rank: Rank) -> None:
    if rank.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
