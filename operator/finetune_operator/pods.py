"""The current attempt's pods as status.world shows them: one row per node rank, each pod's state.

A multi-node attempt is all-or-nothing, so a user waiting on one needs to see which pod holds it back
(unschedulable, pulling its image) before the attempt fails; `kubectl describe` then shows that pod's
events. Pure: reconcile passes in the pods it observed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune_contract.distributed import COMPLETION_INDEX_ANNOTATION

from .api import FineTuneJobSpec
from .api.status import TrainerPod, World
from .failures import pod_blocker, terminated_state
from .manifests import base_model_claim, world

JSON = dict[str, Any]


def completion_index(pod: JSON) -> int:
    """The pod's node rank: the Indexed Job's completion index (0 for a single-pod Job)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    return int(str(raw)) if str(raw).isdigit() else 0


def _created(pod: JSON) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def _row(pod: JSON, claim: str | None, namespace: str) -> TrainerPod:
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    reason: str | None = None
    if phase in ("Pending", "Running"):
        blocker = pod_blocker(pod, claim, namespace)
        reason = str(blocker.reason) if blocker is not None else None
    else:
        term = terminated_state(pod) or {}
        reason = str(term.get("reason") or status.get("reason") or "") or None
    if (pod.get("metadata") or {}).get("deletionTimestamp") and phase in ("Pending", "Running"):
        reason = "Terminating"
    return TrainerPod(
        name=str((pod.get("metadata") or {}).get("name") or "") or None,
        index=completion_index(pod),
        phase=phase,
        reason=reason,
        node=(pod.get("spec") or {}).get("nodeName") or None,
    )


def world_status(spec: FineTuneJobSpec, pods: Sequence[JSON], namespace: str) -> World:
    """The attempt's world and, per index, its newest pod (a preempted pod's replacement replaces it)."""
    shape = world(spec)
    newest: dict[int, JSON] = {}
    for pod in sorted(pods, key=_created):
        newest[completion_index(pod)] = pod
    claim = base_model_claim(spec)
    return World(
        nodes=shape.nodes,
        processes_per_node=shape.nproc_per_node,
        size=shape.size,
        pods=[_row(newest[i], claim, namespace) for i in sorted(newest)],
    )


def summary(w: World) -> str:
    """e.g. "2 of 2 pods running, world size 4 (2 x 2)": for the Running message of a distributed attempt."""
    running = sum(1 for p in w.pods if p.phase == "Running" and p.reason != "Terminating")
    return f"{running} of {w.nodes} pods running, world size {w.size} ({w.nodes} x {w.processes_per_node})"
