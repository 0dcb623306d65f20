"""Kueue's view of a queued trainer Job, in words a user can act on. Pure: the job's loop reads the
Workload, the LocalQueue and the ClusterQueue (service.read_kueue), reconcile turns them into status.

Kueue admits a Job by unsuspending it and stops it (preemption, deactivation) by suspending it again;
its Workload says why a job waits. The message names the ClusterQueue and the quota it lacks, e.g.
"waiting for quota in ClusterQueue gpus: needs 2 nvidia.com/gpu, 0 of 2 free; position 1 of 1 in
LocalQueue team-a", since "pending" alone does not tell a user whether to wait or to act.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from kubernetes.utils import parse_quantity

from .api import Reason
from .api.status import Queue

JSON = dict[str, Any]
GROUP: Final = "kueue.x-k8s.io"
VERSION: Final = "v1beta2"
LABEL_QUEUE_NAME: Final = "kueue.x-k8s.io/queue-name"
LABEL_PRIORITY_CLASS: Final = "kueue.x-k8s.io/priority-class"
# Kueue labels each Workload with the UID of the Job it was made for.
LABEL_JOB_UID: Final = "kueue.x-k8s.io/job-uid"
GPU: Final = "nvidia.com/gpu"
# On a Workload the operator deactivated for spec.suspend (and only there).
ANNOTATION_DEACTIVATED: Final = "finetune.dev/deactivated-for-suspend"
# QuotaReserved=False reasons that no amount of waiting changes (Inadmissible: a stopped or missing
# queue; the others with Kueue's UnadmittedWorkloadsObservability gate).
_BLOCKED: Final = ("Inadmissible", "Misconfigured", "NoMatchingFlavor", "ExceedsMaxQuota")


@dataclass(frozen=True)
class KueueView:
    """What the job's loop read for the current attempt. None: not found (yet)."""

    # False when the cluster has no kueue.x-k8s.io API at all.
    installed: bool = True
    workload: JSON | None = None
    local_queue: JSON | None = None
    cluster_queue: JSON | None = None
    # The namespace's Workloads, for the position in the LocalQueue.
    namespace_workloads: Sequence[JSON] = ()
    # The LocalQueue names a ClusterQueue that does not exist (None cluster_queue alone may be unreadable).
    cluster_queue_missing: bool = False


@dataclass(frozen=True)
class QueueState:
    admitted: bool
    reason: str
    message: str
    # Waiting will not end by itself: the user or the platform team must change something.
    stalled: bool = False
    # Kueue's words when it preempted or evicted the workload (empty otherwise).
    evicted: str = ""
    status: Queue | None = None


def _conditions(obj: JSON | None) -> dict[str, JSON]:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return {str(c.get("type")): c for c in conds if isinstance(c, dict)}


def _true(obj: JSON | None, type_: str) -> bool:
    return _conditions(obj).get(type_, {}).get("status") == "True"


def _name(obj: JSON | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("name") or "")


def quantity(value: object) -> Decimal:
    """A Kubernetes quantity as a number; 0 for what is not one (Kueue writes only valid ones)."""
    try:
        return Decimal(parse_quantity(value))
    except (ValueError, TypeError):
        return Decimal(0)


def _fmt(value: Decimal) -> str:
    return str(int(value)) if value == value.to_integral_value() else f"{value:f}"


def gpu_quota(cluster_queue: JSON) -> tuple[Decimal, Decimal, Decimal] | None:
    """(nominal, reserved, largest flavor's nominal) nvidia.com/gpu of a ClusterQueue over all flavors
    (a pod set is admitted in one flavor); None if it has no GPU quota."""
    flavors = [
        quantity(res.get("nominalQuota"))
        for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []
        for flavor in group.get("flavors") or []
        for res in flavor.get("resources") or []
        if res.get("name") == GPU
    ]
    if not flavors:
        return None
    nominal = sum(flavors, Decimal(0))
    reserved = Decimal(0)
    for flavor in (cluster_queue.get("status") or {}).get("flavorsReservation") or []:
        for res in flavor.get("resources") or []:
            if res.get("name") == GPU:
                reserved += quantity(res.get("total"))
    return nominal, reserved, max(flavors)


def _queued_since(workload: JSON) -> str:
    """Kueue orders equal priorities by creation, except a workload evicted by a PodsReady timeout or an
    admission check, which queues from its eviction (Kueue's workload.Ordering; a preempted one keeps
    its creation time)."""
    evicted = _conditions(workload).get("Evicted") or {}
    if (
        evicted.get("status") == "True"
        and evicted.get("reason") in ("PodsReadyTimeout", "AdmissionCheck")
        and evicted.get("lastTransitionTime")
    ):
        return str(evicted["lastTransitionTime"])
    return str((workload.get("metadata") or {}).get("creationTimestamp") or "")


def _pending(workload: JSON) -> bool:
    spec = workload.get("spec") or {}
    return (
        spec.get("active", True) is not False
        and not _true(workload, "QuotaReserved")
        and not _true(workload, "Finished")
    )


def position(workload: JSON, others: Iterable[JSON]) -> tuple[int, int] | None:
    """(place, count) among the pending Workloads of the same LocalQueue: higher priority first, then
    the earlier queued (Kueue's BestEffortFIFO/StrictFIFO order within a queue)."""
    if not _pending(workload):
        return None
    queue = (workload.get("spec") or {}).get("queueName")

    def key(w: JSON) -> tuple[int, str, str]:
        return (-int((w.get("spec") or {}).get("priority") or 0), _queued_since(w), _name(w))

    same = [w for w in others if (w.get("spec") or {}).get("queueName") == queue and _pending(w)]
    if not any(_name(w) == _name(workload) for w in same):
        same.append(workload)
    same.sort(key=key)
    names = [_name(w) for w in same]
    return names.index(_name(workload)) + 1, len(same)


def _quota_text(cluster_queue: JSON | None, name: str, gpus: int, kueue_says: str) -> tuple[str, bool]:
    """ "waiting for quota in ClusterQueue X: needs N nvidia.com/gpu, F of T free" and whether it can
    never fit (more GPUs than the ClusterQueue has, with no cohort to borrow from). When the GPUs are
    not what it waits for (they are free, or the job needs none), Kueue's own words."""
    waiting = f"waiting for ClusterQueue {name} to admit it" + (f": {kueue_says}" if kueue_says else "")
    if "unavailable in ClusterQueue" in kueue_says:
        # Kueue refuses a workload that requests a resource its ClusterQueue does not cover.
        return (
            f"ClusterQueue {name} cannot admit it: {kueue_says}; the ClusterQueue must cover every resource "
            "the trainer pods request (cpu, memory, nvidia.com/gpu and ephemeral-storage for the scratch "
            "volume): ask the platform team",
            True,
        )
    if cluster_queue is None or gpus <= 0:
        return waiting, False
    quota = gpu_quota(cluster_queue)
    if quota is None:
        return (
            f"ClusterQueue {name} has no {GPU} quota, so a job that asks for GPUs is never admitted: ask "
            "the platform team to add it or use another queue",
            True,
        )
    nominal, reserved, largest = quota
    free = max(Decimal(0), nominal - reserved)
    cohort = (cluster_queue.get("spec") or {}).get("cohortName")
    if gpus > largest and not cohort:
        most = (
            f"{_fmt(nominal)} {GPU} in all"
            if largest == nominal
            else f"at most {_fmt(largest)} {GPU} in one flavor"
        )
        text = (
            f"ClusterQueue {name} has {most} and this job needs {gpus}: it is never "
            "admitted; lower resources.gpus or resources.nodes (a new job), or ask the platform team for more quota"
        )
        return text, True
    if free >= gpus and kueue_says:
        return waiting, False
    return (
        f"waiting for quota in ClusterQueue {name}: needs {gpus} {GPU}, {_fmt(free)} of {_fmt(nominal)} free",
        False,
    )


def _evicted(workload: JSON) -> JSON | None:
    cond = _conditions(workload).get("Evicted") or {}
    return cond if cond.get("status") == "True" else None


def deactivated_by_operator(workload: JSON) -> bool:
    return ((workload.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DEACTIVATED) == "true"


def _eviction_text(workload: JSON) -> str:
    """Why Kueue took the workload's quota away ("" if it did not, or for the operator's own suspend).
    Kueue sets Evicted at once and clears the admission only once the Job's pods are gone."""
    conds = _conditions(workload)
    evicted = _evicted(workload)
    if _true(workload, "Preempted") or (evicted is not None and evicted.get("reason") == "Preempted"):
        said = str((conds.get("Preempted") or evicted or {}).get("message") or "")
        return f"preempted by Kueue ({said or 'to make room for a workload of higher priority'})"
    if evicted is not None and evicted.get("reason") != "Deactivated":
        return f"evicted by Kueue ({evicted.get('reason')}: {evicted.get('message') or 'no message'})"
    return ""


def state(queue_name: str, namespace: str, gpus: int, trainer_job: str, view: KueueView) -> QueueState:
    """The current attempt's place in Kueue. `gpus` is what the whole attempt asks for (gpus x nodes)."""
    if not view.installed:
        return QueueState(
            admitted=False,
            reason=Reason.WAITING_FOR_QUOTA,
            message=(
                f"spec.queueName is {queue_name} but this cluster serves no {GROUP}/{VERSION} API (Kueue is not "
                f"installed, or older than that API), so nothing will admit trainer Job {trainer_job}: install "
                "Kueue, or delete the job and create it without queueName"
            ),
            stalled=True,
        )
    lq, cq, wl = view.local_queue, view.cluster_queue, view.workload
    cq_name = str(((lq or {}).get("spec") or {}).get("clusterQueue") or "") or None
    status = Queue(
        local_queue=queue_name,
        cluster_queue=cq_name,
        workload=_name(wl) or None,
        pending_workloads=((cq or {}).get("status") or {}).get("pendingWorkloads"),
    )
    if lq is None:
        return QueueState(
            admitted=False,
            reason=Reason.WAITING_FOR_QUOTA,
            message=(
                f"LocalQueue {queue_name} does not exist in namespace {namespace}: ask the platform team to "
                f"create it, or delete the job and create it with an existing queue "
                f"(kubectl get localqueues -n {namespace})"
            ),
            stalled=True,
            status=status,
        )
    if wl is None:
        return QueueState(
            admitted=False,
            reason=Reason.WAITING_FOR_QUOTA,
            message=f"waiting for Kueue to queue trainer Job {trainer_job} in LocalQueue {queue_name}",
            status=status,
        )
    conds = _conditions(wl)
    where = cq_name or "?"
    if (wl.get("spec") or {}).get("active", True) is False and not deactivated_by_operator(wl):
        # Kueue's own deactivation (requeuing limit, maximum execution time) or an administrator's: the
        # operator does not undo it, and Kueue admits nothing inactive.
        why = _evicted(wl) or {}
        said = f" ({why.get('reason')}: {why.get('message')})" if why else ""
        return QueueState(
            admitted=False,
            reason=Reason.WAITING_FOR_QUOTA,
            message=(
                f"Kueue Workload {_name(wl)} is deactivated{said}, so it is not admitted again: set its "
                "spec.active to true (kubectl patch workload), or delete the job and create it again"
            ),
            stalled=True,
            status=status,
        )
    eviction = _eviction_text(wl)
    admission = (wl.get("status") or {}).get("admission") or {}
    if admission and _true(wl, "Admitted") and not eviction and _evicted(wl) is None:
        flavors = sorted(
            {
                str(f)
                for ps in admission.get("podSetAssignments") or []
                for f in (ps.get("flavors") or {}).values()
            }
        )
        where = str(admission.get("clusterQueue") or where)
        text = f"admitted by Kueue to ClusterQueue {where}" + (
            f" (flavor {', '.join(flavors)})" if flavors else ""
        )
        return QueueState(admitted=True, reason=Reason.QUOTA_RESERVED, message=text, status=status)
    reserved = conds.get("QuotaReserved") or {}
    kueue_says = str(reserved.get("message") or "")
    if reserved.get("status") == "True" and not eviction:
        # Quota held; Kueue's admission checks (e.g. a ProvisioningRequest) decide the rest.
        checks = str((conds.get("Admitted") or {}).get("message") or "")
        text = f"quota reserved in ClusterQueue {where}; waiting for its admission checks" + (
            f": {checks}" if checks else ""
        )
        return QueueState(admitted=False, reason=Reason.WAITING_FOR_QUOTA, message=text, status=status)
    text, never = _quota_text(cq, where, gpus, kueue_says)
    if view.cluster_queue_missing:
        text = (
            f"ClusterQueue {where}, which LocalQueue {queue_name} feeds, does not exist: ask the platform team"
            + (f" (Kueue: {kueue_says})" if kueue_says else "")
        )
        never = True
    elif reserved.get("reason") in _BLOCKED or (cq is not None and not _true(cq, "Active")):
        # Not a matter of waiting (a stopped queue, no flavor that fits, ...): Kueue's own words first.
        text = f"ClusterQueue {where} cannot admit it: {kueue_says or 'the ClusterQueue is not active'}"
        never = True
    place = position(wl, view.namespace_workloads)
    if place is not None:
        status = status.model_copy(update={"position": place[0]})
        text += f"; position {place[0]} of {place[1]} in LocalQueue {queue_name}"
    if eviction:
        text = (
            f"{eviction}; the trainer saves a checkpoint and the job resumes from it in the same attempt when "
            f"admitted again; {text}"
        )
    return QueueState(
        admitted=False,
        reason=Reason.PREEMPTED if eviction else Reason.WAITING_FOR_QUOTA,
        message=text,
        stalled=never,
        evicted=eviction,
        status=status,
    )


def workload_patch(workload: JSON | None, *, suspend: bool) -> JSON | None:
    """spec.active for spec.suspend: Kueue unsuspends a Job it admitted, so a held job must be held in
    its Workload (Kueue then evicts it and suspends the Job itself). The Workload is marked, so that
    resuming reactivates only what the operator deactivated, never a Workload Kueue or an administrator
    turned off. None: nothing to change."""
    if workload is None:
        return None
    active = (workload.get("spec") or {}).get("active", True) is not False
    if suspend and active:
        return {"metadata": {"annotations": {ANNOTATION_DEACTIVATED: "true"}}, "spec": {"active": False}}
    if not suspend and not active and deactivated_by_operator(workload):
        return {"metadata": {"annotations": {ANNOTATION_DEACTIVATED: None}}, "spec": {"active": True}}
    return None


def trainer_job_labels(queue_name: str, priority_class: str) -> Mapping[str, str]:
    labels = {LABEL_QUEUE_NAME: queue_name} if queue_name else {}
    if queue_name and priority_class:
        labels[LABEL_PRIORITY_CLASS] = priority_class
    return labels
