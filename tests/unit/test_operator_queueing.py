"""Kueue's view of a queued job (finetune_operator.queueing) and how reconcile follows it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from finetune_operator.api import ConditionType, FineTuneJobSpec, FineTuneJobStatus, Phase
from finetune_operator.manifests import trainer_job
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.queueing import KueueView, gpu_quota, position, quantity, state, workload_patch
from finetune_operator.reconcile import JobInput, Observed, reconcile
from pydantic import ValidationError

from tests.unit.test_operator_reconcile import (
    NOW,
    PRICES,
    REF,
    SETTINGS,
    cond,
    make_spec,
    terminated,
    tjob,
    tpod,
    ts,
    validated,
)


def cluster_queue(nominal: int | None = 2, reserved: int = 0, cohort: str = "") -> dict[str, Any]:
    resources: list[dict[str, Any]] = [{"name": "cpu", "nominalQuota": "64"}]
    if nominal is not None:
        resources.append({"name": "nvidia.com/gpu", "nominalQuota": nominal})
    spec: dict[str, Any] = {"resourceGroups": [{"flavors": [{"name": "gpu-a", "resources": resources}]}]}
    if cohort:
        spec["cohortName"] = cohort
    return {
        "metadata": {"name": "gpus"},
        "spec": spec,
        "status": {
            "conditions": [{"type": "Active", "status": "True"}],
            "pendingWorkloads": 3,
            "flavorsReservation": [
                {"name": "gpu-a", "resources": [{"name": "nvidia.com/gpu", "total": str(reserved)}]}
            ],
        },
    }


LOCAL_QUEUE = {"metadata": {"name": "team-a"}, "spec": {"clusterQueue": "gpus"}}


def workload(
    name: str = "job-bot-train-a1-abcde",
    *,
    conditions: list[dict[str, Any]] | None = None,
    priority: int = 0,
    created: float = -60,
    active: bool = True,
    admitted_to: str = "",
    queue: str = "team-a",
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": conditions or []}
    if admitted_to:
        status["admission"] = {
            "clusterQueue": admitted_to,
            "podSetAssignments": [{"name": "main", "flavors": {"nvidia.com/gpu": "gpu-a", "cpu": "gpu-a"}}],
        }
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": ts(created),
            "labels": {"kueue.x-k8s.io/job-uid": "j"},
        },
        "spec": {"queueName": queue, "priority": priority, "active": active},
        "status": status,
    }


def waiting(message: str = "couldn't assign flavors") -> list[dict[str, Any]]:
    return [{"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": message}]


ADMITTED = [
    {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
    {"type": "Admitted", "status": "True", "reason": "Admitted"},
]


def view(wl: dict[str, Any] | None, *, cq: dict[str, Any] | None = None, **kw: Any) -> KueueView:
    others = kw.pop("others", [wl] if wl else [])
    return KueueView(
        workload=wl,
        local_queue=kw.pop("lq", LOCAL_QUEUE),
        cluster_queue=cq if cq is not None else cluster_queue(),
        namespace_workloads=others,
        **kw,
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2),
        ("500m", Decimal("0.5")),
        ("1Gi", 2**30),
        ("3k", 3000),
        ("", 0),
        ("x", 0),
        ("1.5", Decimal("1.5")),
    ],
)
def test_quantities_read_as_kueue_writes_them(text: str, value: Decimal) -> None:
    assert quantity(text) == value


def test_gpu_quota_sums_flavors_and_says_when_there_is_none() -> None:
    assert gpu_quota(cluster_queue(4, reserved=3)) == (Decimal(4), Decimal(3), Decimal(4))
    assert gpu_quota(cluster_queue(None)) is None


def test_the_message_names_the_queue_what_is_missing_and_the_place() -> None:
    wl = workload(conditions=waiting())
    ahead = workload("other", conditions=waiting(), created=-120)
    qs = state(
        "team-a", "ns", 2, "bot-train-a1", view(wl, cq=cluster_queue(2, reserved=2), others=[wl, ahead])
    )
    assert not qs.admitted
    assert not qs.stalled
    assert qs.message == (
        "waiting for quota in ClusterQueue gpus: needs 2 nvidia.com/gpu, 0 of 2 free; position 2 of 2 in LocalQueue team-a"
    )
    assert qs.status is not None
    assert (qs.status.position, qs.status.cluster_queue, qs.status.pending_workloads) == (2, "gpus", 3)
    assert qs.status.workload == "job-bot-train-a1-abcde"


def test_position_puts_higher_priority_first_then_the_earlier_queued() -> None:
    # A preempted workload keeps its creation time in Kueue's order; a PodsReady timeout does not.
    preempted = workload(
        "preempted",
        created=-30,
        conditions=[
            *waiting(),
            {"type": "Evicted", "status": "True", "reason": "Preempted", "lastTransitionTime": ts(-1)},
        ],
    )
    timed_out = workload(
        "timed-out",
        created=-3000,
        conditions=[
            *waiting(),
            {"type": "Evicted", "status": "True", "reason": "PodsReadyTimeout", "lastTransitionTime": ts(-1)},
        ],
    )
    newer = workload("newer", conditions=waiting(), created=-10)
    assert position(newer, [preempted, timed_out, newer]) == (2, 3)
    me = workload("me", conditions=waiting(), created=-60)
    older = workload("older", conditions=waiting(), created=-600)
    urgent = workload("urgent", conditions=waiting(), created=-1, priority=100)
    admitted = workload("running", conditions=ADMITTED, created=-900)
    elsewhere = workload("other-queue", conditions=waiting(), created=-900, queue="team-b")
    held = workload("held", conditions=waiting(), created=-900, active=False)
    assert position(me, [me, older, urgent, admitted, elsewhere, held]) == (3, 3)
    assert position(admitted, [me]) is None


def test_a_job_larger_than_the_whole_queue_is_stalled_with_what_to_change() -> None:
    qs = state("team-a", "ns", 4, "bot-train-a1", view(workload(conditions=waiting())))
    assert qs.stalled
    assert "has 2 nvidia.com/gpu in all and this job needs 4" in qs.message
    assert "lower resources.gpus" in qs.message
    # In a cohort it may borrow: then it only waits.
    qs = state(
        "team-a",
        "ns",
        4,
        "bot-train-a1",
        view(workload(conditions=waiting()), cq=cluster_queue(cohort="org")),
    )
    assert not qs.stalled


def test_missing_kueue_queue_or_gpu_quota_is_said_plainly() -> None:
    qs = state("team-a", "ns", 1, "bot-train-a1", KueueView(installed=False))
    assert qs.stalled
    assert "Kueue is not installed" in qs.message
    qs = state("team-a", "ns", 1, "bot-train-a1", view(None, lq=None))
    assert qs.stalled
    assert "LocalQueue team-a does not exist in namespace ns" in qs.message
    qs = state("team-a", "ns", 1, "bot-train-a1", view(None))
    assert not qs.stalled
    assert "waiting for Kueue to queue trainer Job bot-train-a1" in qs.message
    qs = state(
        "team-a", "ns", 1, "bot-train-a1", view(workload(conditions=waiting()), cq=cluster_queue(None))
    )
    assert qs.stalled
    assert "has no nvidia.com/gpu quota" in qs.message


def test_when_gpus_are_free_kueues_own_words_say_why() -> None:
    uncovered = waiting(
        "couldn't assign flavors to pod set main: resource ephemeral-storage unavailable in ClusterQueue"
    )
    qs = state("team-a", "ns", 1, "bot-train-a1", view(workload(conditions=uncovered)))
    assert qs.stalled
    assert "ClusterQueue gpus cannot admit it: couldn't assign flavors" in qs.message
    assert "must cover every resource the trainer pods request" in qs.message
    behind = waiting("Workload is waiting behind another one")
    qs = state("team-a", "ns", 1, "bot-train-a1", view(workload(conditions=behind)))
    assert not qs.stalled
    assert qs.message.startswith(
        "waiting for ClusterQueue gpus to admit it: Workload is waiting behind another one"
    )


def test_admitted_and_preempted() -> None:
    qs = state("team-a", "ns", 1, "bot-train-a1", view(workload(conditions=ADMITTED, admitted_to="gpus")))
    assert qs.admitted
    assert qs.message == "admitted by Kueue to ClusterQueue gpus (flavor gpu-a)"
    preempted = [
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "x"},
        {"type": "Evicted", "status": "True", "reason": "Preempted", "lastTransitionTime": ts(-5)},
        {
            "type": "Preempted",
            "status": "True",
            "reason": "InClusterQueue",
            "message": "Preempted to accommodate a workload (UID: 1)",
        },
    ]
    qs = state(
        "team-a", "ns", 1, "bot-train-a1", view(workload(conditions=preempted), cq=cluster_queue(2, 2))
    )
    assert not qs.admitted
    assert qs.reason == "Preempted"
    assert qs.message.startswith("preempted by Kueue (Preempted to accommodate a workload (UID: 1))")
    assert "resumes from it in the same attempt when admitted again" in qs.message
    assert "needs 1 nvidia.com/gpu, 0 of 2 free" in qs.message


def ours(wl: dict[str, Any]) -> dict[str, Any]:
    wl["metadata"]["annotations"] = {"finetune.dev/deactivated-for-suspend": "true"}
    return wl


def test_suspend_goes_through_the_workloads_active_field_and_undoes_only_its_own() -> None:
    assert workload_patch(workload(), suspend=True) == {
        "metadata": {"annotations": {"finetune.dev/deactivated-for-suspend": "true"}},
        "spec": {"active": False},
    }
    assert workload_patch(workload(active=False), suspend=True) is None
    assert workload_patch(ours(workload(active=False)), suspend=False) == {
        "metadata": {"annotations": {"finetune.dev/deactivated-for-suspend": None}},
        "spec": {"active": True},
    }
    # Deactivated by Kueue or an administrator: left as it is.
    assert workload_patch(workload(active=False), suspend=False) is None
    assert workload_patch(workload(), suspend=False) is None
    assert workload_patch(None, suspend=True) is None


def test_a_workload_kueue_deactivated_is_stalled_with_kueues_reason() -> None:
    wl = workload(
        active=False,
        conditions=[
            {
                "type": "Evicted",
                "status": "True",
                "reason": "MaximumExecutionTimeExceeded",
                "message": "exceeded",
            },
            *waiting(),
        ],
    )
    qs = state("team-a", "ns", 1, "bot-train-a1", view(wl))
    assert qs.stalled
    assert "is deactivated (MaximumExecutionTimeExceeded: exceeded)" in qs.message
    assert "set its spec.active to true" in qs.message


def test_evicted_while_still_admitted_is_no_longer_admitted() -> None:
    # Kueue sets Evicted at once and clears the admission only when the Job's pods are gone.
    wl = workload(
        admitted_to="gpus",
        conditions=[
            *ADMITTED,
            {
                "type": "Evicted",
                "status": "True",
                "reason": "Preempted",
                "message": "Preempted to accommodate x",
            },
            {
                "type": "Preempted",
                "status": "True",
                "reason": "InClusterQueue",
                "message": "Preempted to accommodate x",
            },
        ],
    )
    qs = state("team-a", "ns", 1, "bot-train-a1", view(wl, cq=cluster_queue(1, 1)))
    assert not qs.admitted
    assert qs.evicted
    assert qs.message.startswith("preempted by Kueue (Preempted to accommodate x)")
    evicted = workload(
        admitted_to="gpus",
        conditions=[
            *ADMITTED,
            {"type": "Evicted", "status": "True", "reason": "PodsReadyTimeout", "message": "slow"},
        ],
    )
    qs = state("team-a", "ns", 1, "bot-train-a1", view(evicted))
    assert not qs.admitted
    assert qs.message.startswith("evicted by Kueue (PodsReadyTimeout: slow)")


def test_a_stopped_or_missing_cluster_queue_is_stalled() -> None:
    stopped = [
        {
            "type": "QuotaReserved",
            "status": "False",
            "reason": "Inadmissible",
            "message": "LocalQueue team-a is stopped",
        }
    ]
    qs = state("team-a", "ns", 1, "bot-train-a1", view(workload(conditions=stopped)))
    assert qs.stalled
    assert qs.message.startswith("ClusterQueue gpus cannot admit it: LocalQueue team-a is stopped")
    missing = KueueView(
        workload=workload(conditions=waiting()), local_queue=LOCAL_QUEUE, cluster_queue_missing=True
    )
    qs = state("team-a", "ns", 1, "bot-train-a1", missing)
    assert qs.stalled
    assert "ClusterQueue gpus, which LocalQueue team-a feeds, does not exist" in qs.message


def test_quota_reserved_but_waiting_for_admission_checks() -> None:
    wl = workload(
        conditions=[
            {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
            {
                "type": "Admitted",
                "status": "False",
                "reason": "NoChecks",
                "message": "waiting for provisioning",
            },
        ]
    )
    qs = state("team-a", "ns", 1, "bot-train-a1", view(wl, cq=cluster_queue(1, 1)))
    assert not qs.admitted
    assert not qs.stalled
    assert (
        qs.message
        == "quota reserved in ClusterQueue gpus; waiting for its admission checks: waiting for provisioning"
    )


def test_a_job_that_fits_no_single_flavor_is_never_admitted() -> None:
    cq = cluster_queue(4)
    cq["spec"]["resourceGroups"][0]["flavors"].append(
        {"name": "gpu-b", "resources": [{"name": "nvidia.com/gpu", "nominalQuota": 4}]}
    )
    qs = state("team-a", "ns", 8, "bot-train-a1", view(workload(conditions=waiting()), cq=cq))
    assert qs.stalled
    assert "has at most 4 nvidia.com/gpu in one flavor and this job needs 8" in qs.message


def test_the_trainer_job_carries_the_queue_and_the_workload_priority() -> None:
    spec = make_spec(queueName="team-a", workloadPriorityClassName="urgent")
    job = trainer_job(
        REF, spec, SETTINGS, attempt=1, retries_used=0, active_deadline_seconds=None, suspend=True
    )
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert labels["kueue.x-k8s.io/priority-class"] == "urgent"
    assert (
        "kueue.x-k8s.io/priority-class"
        not in trainer_job(
            REF, make_spec(), SETTINGS, attempt=1, retries_used=0, active_deadline_seconds=None
        )["metadata"]["labels"]
    )


def test_a_workload_priority_needs_a_queue() -> None:
    with pytest.raises(ValidationError, match="workloadPriorityClassName needs queueName"):
        make_spec(workloadPriorityClassName="urgent")


# --- reconcile ------------------------------------------------------------------------------------


def qrun(
    status: FineTuneJobStatus,
    spec: FineTuneJobSpec,
    kueue: KueueView | None,
    *,
    jobs: list[dict[str, Any]],
    tpods: list[dict[str, Any]] | None = None,
) -> Any:
    job = JobInput(REF, 1, spec, status)
    return reconcile(job, Observed([], jobs, tpods or [], None, PRICES, kueue=kueue), SETTINGS, NOW)


QSPEC = make_spec(queueName="team-a")


def queued_status() -> FineTuneJobStatus:
    from tests.unit.test_operator_reconcile import run, vpod

    return run(spec=QSPEC, vpods=[vpod("Succeeded", state=terminated(0))]).status


def test_a_queued_job_is_not_admitted_until_kueue_admits_it() -> None:
    st = queued_status()
    assert cond_of(st, ConditionType.ADMITTED) == ("False", "WaitingForQuota")
    wl = workload(conditions=waiting())
    d = qrun(st, QSPEC, view(wl, cq=cluster_queue(2, 2)), jobs=[tjob(1, suspend=True)])
    assert d.status.phase == Phase.QUEUED
    assert cond(d, ConditionType.ADMITTED) == ("False", "WaitingForQuota")
    assert d.status.message is not None
    assert "needs 1 nvidia.com/gpu, 0 of 2 free" in d.status.message
    assert d.status.queue is not None
    assert d.status.queue.position == 1
    assert d.patch_jobs == []  # Kueue, not the operator, unsuspends the Job
    admitted = workload(conditions=ADMITTED, admitted_to="gpus")
    running = tpod(1, "Running", state={"running": {"startedAt": ts(-30)}})
    d = qrun(d.status, QSPEC, view(admitted), jobs=[tjob(1)], tpods=[running])
    assert cond(d, ConditionType.ADMITTED) == ("True", "QuotaReserved")
    assert d.status.phase == Phase.RUNNING


def test_preemption_by_kueue_waits_again_without_using_a_retry() -> None:
    running = tpod(1, "Running", state={"running": {"startedAt": ts(-30)}})
    admitted = workload(conditions=ADMITTED, admitted_to="gpus")
    st = qrun(queued_status(), QSPEC, view(admitted), jobs=[tjob(1)], tpods=[running]).status
    evicted = workload(
        conditions=[
            {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "x"},
            {
                "type": "Evicted",
                "status": "True",
                "reason": "Preempted",
                "message": "Preempted to accommodate a workload",
            },
        ]
    )
    stopping = dict(running, metadata=dict(running["metadata"], deletionTimestamp=ts()))
    d = qrun(st, QSPEC, view(evicted), jobs=[tjob(1, suspend=True)], tpods=[stopping])
    assert d.status.phase == Phase.QUEUED
    assert cond(d, ConditionType.RUNNING) == ("False", "Preempted")
    assert "stopping 1 trainer pod(s)" in (d.status.message or "")
    assert [(e.type, e.reason) for e in d.events if e.reason == "Preempted"] == [("Warning", "Preempted")]
    assert d.create == []
    assert d.status.attempts == 1


def test_suspending_a_queued_job_deactivates_its_workload_and_resuming_reactivates_it() -> None:
    st = queued_status()
    wl = workload(conditions=waiting())
    d = qrun(st, make_spec(queueName="team-a", suspend=True), view(wl), jobs=[tjob(1, suspend=True)])
    assert d.patch_workloads == [
        (
            "job-bot-train-a1-abcde",
            {
                "metadata": {"annotations": {"finetune.dev/deactivated-for-suspend": "true"}},
                "spec": {"active": False},
            },
        )
    ]
    assert d.patch_jobs == []
    assert d.status.phase == Phase.SUSPENDED
    inactive = workload(conditions=waiting(), active=False)
    d = qrun(d.status, QSPEC, view(ours(inactive)), jobs=[tjob(1, suspend=True)])
    assert d.patch_workloads == [
        (
            "job-bot-train-a1-abcde",
            {
                "metadata": {"annotations": {"finetune.dev/deactivated-for-suspend": None}},
                "spec": {"active": True},
            },
        )
    ]
    assert d.status.phase == Phase.QUEUED


def test_suspend_is_not_claimed_when_the_workload_cannot_be_read() -> None:
    running = tpod(1, "Running", state={"running": {"startedAt": ts(-30)}})
    st = qrun(
        queued_status(),
        QSPEC,
        view(workload(conditions=ADMITTED, admitted_to="gpus")),
        jobs=[tjob(1)],
        tpods=[running],
    ).status
    d = qrun(st, make_spec(queueName="team-a", suspend=True), None, jobs=[tjob(1)], tpods=[running])
    assert d.status.phase == Phase.RUNNING
    assert "could not be read" in (d.status.message or "")
    assert d.patch_jobs == []
    assert d.patch_workloads == []


def test_an_admitted_job_is_no_longer_stalled() -> None:
    st = qrun(queued_status(), QSPEC, view(None, lq=None), jobs=[tjob(1, suspend=True)]).status
    assert cond_of(st, ConditionType.STALLED) == ("True", "WaitingForQuota")
    d = qrun(st, QSPEC, view(workload(conditions=ADMITTED, admitted_to="gpus")), jobs=[tjob(1)])
    assert cond(d, ConditionType.STALLED) == ("False", "Progressing")


def test_queue_wait_is_observed_at_admission() -> None:
    metrics = OperatorMetrics(process_collectors=False)
    before = queued_status()
    admitted = qrun(
        before, QSPEC, view(workload(conditions=ADMITTED, admitted_to="gpus")), jobs=[tjob(1)]
    ).status
    metrics.record_status("ns", "bot", created=ts(-300), spec=QSPEC, old=before, new=admitted, now=NOW)
    assert metrics.registry.get_sample_value("finetune_job_queue_wait_seconds_count") == 1
    info = metrics.registry.get_sample_value(
        "finetune_job_info",
        {
            "namespace": "ns",
            "name": "bot",
            "phase": "Queued",
            "reason": "Pending",
            "gpu_type": "default",
            "queue": "team-a",
        },
    )
    assert info == 1


def cond_of(st: FineTuneJobStatus, type_: str) -> tuple[str, str] | None:
    c = next((c for c in st.conditions if c.type == type_), None)
    return (c.status.value, c.reason) if c else None


def test_without_a_queue_nothing_changes() -> None:
    st = validated()
    assert cond_of(st, ConditionType.ADMITTED) == ("True", "JobCreated")
