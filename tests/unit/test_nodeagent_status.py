from __future__ import annotations

import pytest

from localcluster.nodeagent.status import (
    ContainerState,
    PodStatusInput,
    Terminated,
    comparable,
    pod_conditions,
    pod_phase,
    status_patch,
)


def running(name: str = "c", ready: bool = True) -> ContainerState:
    return ContainerState(
        name=name,
        image="busybox",
        state="running",
        started_at="2026-01-01T00:00:00.5Z",
        ready=ready,
        started=True,
    )


def waiting(name: str = "c", reason: str = "ContainerCreating") -> ContainerState:
    return ContainerState(name=name, image="busybox", reason=reason)


def done(code: int, name: str = "c") -> ContainerState:
    term = Terminated(
        exit_code=code, reason="Completed" if code == 0 else "Error", started_at=None, finished_at=None
    )
    return ContainerState(name=name, image="busybox", state="terminated", terminated=term)


def backing_off(last_code: int, name: str = "c") -> ContainerState:
    c = waiting(name, "CrashLoopBackOff")
    c.last_terminated = Terminated(exit_code=last_code, reason="Error", started_at=None, finished_at=None)
    return c


@pytest.mark.parametrize(
    ("policy", "init", "app", "phase"),
    [
        ("Never", [], [waiting()], "Pending"),
        ("Never", [], [running()], "Running"),
        ("Never", [], [done(0)], "Succeeded"),
        ("Never", [], [done(1)], "Failed"),
        ("Never", [], [done(0, "a"), done(1, "b")], "Failed"),
        ("Never", [], [done(0, "a"), running("b")], "Running"),
        ("OnFailure", [], [done(0)], "Succeeded"),
        ("OnFailure", [], [backing_off(1)], "Running"),
        ("Always", [], [done(0)], "Running"),
        ("Always", [], [backing_off(0)], "Running"),
        ("Never", [running("i")], [waiting()], "Pending"),
        ("Never", [done(1, "i")], [waiting()], "Failed"),
        ("OnFailure", [done(1, "i")], [waiting()], "Pending"),
        ("Never", [done(0, "i")], [running()], "Running"),
    ],
)
def test_phase(policy: str, init: list[ContainerState], app: list[ContainerState], phase: str) -> None:
    assert pod_phase(policy, init, app) == phase


def test_phase_of_a_pod_being_torn_down() -> None:
    assert pod_phase("Always", [], [done(143)], terminal=True) == "Failed"
    assert pod_phase("Always", [], [done(0)], terminal=True) == "Succeeded"
    assert pod_phase("Never", [], [waiting()], terminal=True) == "Failed"


def test_conditions_follow_readiness_and_keep_transition_times() -> None:
    conds = {
        c["type"]: c
        for c in pod_conditions([], "Running", True, [], [running("a"), running("b", ready=False)])
    }
    assert conds["PodReadyToStartContainers"]["status"] == "True"
    assert conds["Initialized"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["reason"] == "ContainersNotReady"
    assert conds["Ready"]["message"] == "containers with unready status: [b]"
    previous = [dict(conds["Ready"], lastTransitionTime="2020-01-01T00:00:00Z")]
    again = {
        c["type"]: c
        for c in pod_conditions(previous, "Running", True, [], [running("a"), running("b", ready=False)])
    }
    assert again["Ready"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    now_ready = {
        c["type"]: c for c in pod_conditions(previous, "Running", True, [], [running("a"), running("b")])
    }
    assert now_ready["Ready"]["status"] == "True"
    assert now_ready["Ready"]["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_conditions_of_completed_and_initialising_pods() -> None:
    completed = {c["type"]: c for c in pod_conditions([], "Succeeded", True, [], [done(0)])}
    assert completed["Ready"]["reason"] == "PodCompleted"
    assert completed["PodReadyToStartContainers"]["status"] == "False"
    init = {c["type"]: c for c in pod_conditions([], "Pending", True, [running("setup")], [waiting()])}
    assert init["Initialized"]["status"] == "False"
    assert init["Initialized"]["message"] == "containers with incomplete status: [setup]"


def test_status_patch_shape() -> None:
    term = Terminated(
        exit_code=143,
        reason="Error",
        started_at="2026-01-01T00:00:00.123456789Z",
        finished_at="2026-01-01T00:00:05.1Z",
        message="bye",
        signal=15,
    )
    app = ContainerState(
        name="c",
        image="busybox",
        image_id="local://busybox",
        container_id="local://x",
        state="terminated",
        terminated=term,
        restart_count=2,
    )
    app.last_terminated = Terminated(exit_code=1, reason="Error", started_at=None, finished_at=None)
    patch = status_patch(
        PodStatusInput(
            uid="u",
            phase="Failed",
            pod_ip="127.1.0.9",
            host_ip="127.0.0.1",
            sandbox_ready=True,
            app=[app],
            start_time="2026-01-01T00:00:00Z",
        )
    )
    assert patch["metadata"] == {"uid": "u"}
    st = patch["status"]
    assert st["phase"] == "Failed"
    assert st["podIP"] == "127.1.0.9"
    assert st["podIPs"] == [{"ip": "127.1.0.9"}]
    assert st["hostIPs"] == [{"ip": "127.0.0.1"}]
    assert st["startTime"] == "2026-01-01T00:00:00Z"
    cs = st["containerStatuses"][0]
    assert cs["restartCount"] == 2
    assert cs["state"]["terminated"] == {
        "exitCode": 143,
        "reason": "Error",
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T00:00:05Z",
        "message": "bye",
        "signal": 15,
        "containerID": "local://x",
    }
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert "initContainerStatuses" not in st


def test_waiting_and_running_container_json() -> None:
    w = waiting(reason="ErrImagePull")
    w.message = "no such image"
    assert w.to_json()["state"] == {"waiting": {"reason": "ErrImagePull", "message": "no such image"}}
    assert w.to_json()["lastState"] == {}
    r = running()
    assert r.to_json()["state"] == {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    assert r.to_json()["started"] is True


def test_comparable_ignores_transition_times_only() -> None:
    a = status_patch(
        PodStatusInput(uid="u", phase="Running", pod_ip="1", host_ip="h", sandbox_ready=True, app=[running()])
    )
    b = status_patch(
        PodStatusInput(uid="u", phase="Running", pod_ip="1", host_ip="h", sandbox_ready=True, app=[running()])
    )
    for c in b["status"]["conditions"]:
        c["lastTransitionTime"] = "1999-01-01T00:00:00Z"
    assert comparable(a) == comparable(b)
    c = status_patch(
        PodStatusInput(
            uid="u", phase="Running", pod_ip="1", host_ip="h", sandbox_ready=True, app=[running(ready=False)]
        )
    )
    assert comparable(a) != comparable(c)
