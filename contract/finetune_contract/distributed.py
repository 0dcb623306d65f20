"""The shape of a distributed run, as the operator tells it to every trainer pod.

The names are those of Kubeflow Trainer's torch runtime (`PET_*`, which torchrun also reads): a platform
that already knows them reads these pods the same way. The operator writes them (finetune_operator
manifests), the trainer's launcher reads them (finetune_trainer.launch); this module is the one place
both sides take them from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

NNODES: Final = "PET_NNODES"
NPROC_PER_NODE: Final = "PET_NPROC_PER_NODE"
NODE_RANK: Final = "PET_NODE_RANK"
MASTER_ADDR: Final = "PET_MASTER_ADDR"
MASTER_PORT: Final = "PET_MASTER_PORT"

# Indexed Jobs annotate each pod with its index; the node rank is read from it with the downward API.
COMPLETION_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"

# The rendezvous port is chosen per job from this range. On a real cluster every pod has its own IP and
# any fixed port would do; where pods share one network namespace (the local environment), two
# multi-node jobs on one fixed port would meet each other's rendezvous.
PORT_RANGE: Final = (20000, 30000)


@dataclass(frozen=True)
class World:
    """Pods (nodes) x processes per pod; ranks are node_rank * nproc_per_node + local_rank."""

    nodes: int = 1
    nproc_per_node: int = 1

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.nproc_per_node < 1:
            raise ValueError(f"a world needs at least one node and one process per node, not {self}")

    @property
    def size(self) -> int:
        return self.nodes * self.nproc_per_node

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def for_resources(cls, gpus: int, nodes: int) -> World:
        """One process per GPU (one process on CPU), on each of `nodes` pods."""
        return cls(nodes=max(1, nodes), nproc_per_node=max(1, gpus))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> World:
        def number(name: str) -> int:
            raw = environ.get(name, "1") or "1"
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a whole number") from None

        return cls(nodes=number(NNODES), nproc_per_node=number(NPROC_PER_NODE))

    def env(self) -> dict[str, str]:
        return {NNODES: str(self.nodes), NPROC_PER_NODE: str(self.nproc_per_node)}


def rendezvous_port(job_uid: str, attempt: int) -> int:
    """A port for one attempt's rendezvous, stable for that attempt (every pod computes the same)."""
    low, high = PORT_RANGE
    digest = hashlib.sha256(f"{job_uid}/{attempt}".encode()).digest()
    return low + int.from_bytes(digest[:4], "big") % (high - low)
