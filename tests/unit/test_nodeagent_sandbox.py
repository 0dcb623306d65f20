"""The sandbox shim for real (it needs root for mount namespaces, which this environment has):
volumes at their mount paths, a read-only root, the termination log, exit codes, signals."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from localcluster.nodeagent.podspec import LaunchPlan, Mount
from localcluster.nodeagent.runtime import Instance, log_tail

TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def plan(tmp: Path, script: str, read_only_root: bool = False) -> tuple[LaunchPlan, Instance]:
    inst = Instance(tmp / "containers" / "main", 0)
    (tmp / "token").mkdir()
    (tmp / "token" / "token").write_text("jwt")
    (tmp / "scratch").mkdir()
    p = LaunchPlan(
        argv=["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "GREETING": "hi"},
        working_dir="/work/dir",
        mounts=[
            Mount(str(tmp / "token"), TOKEN_DIR, read_only=True),
            Mount(str(tmp / "scratch"), "/scratch"),
            Mount(str(inst.termination_log), "/dev/termination-log", is_file=True),
        ],
        termination_message_path="/dev/termination-log",
        read_only_root=read_only_root,
    )
    return p, inst


def run_to_end(p: LaunchPlan, inst: Instance, timeout: float = 20) -> None:
    inst.launch(p, sys.executable)
    assert inst.popen is not None
    inst.popen.wait(timeout)


def test_mounts_read_only_root_and_termination_message(tmp_path: Path) -> None:
    script = (
        f"cat {TOKEN_DIR}/token; echo; echo $GREETING; pwd; "
        "echo all-good > /dev/termination-log; "
        "touch /usr/x 2>/dev/null || echo root-ro; "
        f"touch {TOKEN_DIR}/x 2>/dev/null || echo token-ro; "
        "touch /scratch/ok && echo scratch-rw; echo oops >&2; exit 3"
    )
    p, inst = plan(tmp_path, script, read_only_root=True)
    run_to_end(p, inst)
    result = inst.result("File")
    assert result.exit_code == 3
    assert result.reason == "Error"
    assert result.message == "all-good\n"
    assert result.started_at
    assert result.finished_at
    lines = inst.log_path.read_text().splitlines()
    streams = [(line.split(" ")[1], line.split(" ", 3)[3]) for line in lines]
    assert streams == [
        ("stdout", "jwt"),
        ("stdout", "hi"),
        ("stdout", "/work/dir"),
        ("stdout", "root-ro"),
        ("stdout", "token-ro"),
        ("stdout", "scratch-rw"),
        ("stderr", "oops"),
    ]
    assert (tmp_path / "scratch" / "ok").exists()
    # Nothing leaked onto the host.
    assert not os.path.exists("/run/secrets/kubernetes.io")
    assert not os.path.exists("/dev/termination-log")
    assert not os.path.exists("/work/dir")
    assert not (tmp_path / "containers" / "main" / "0" / "container.pid").exists()


def test_fallback_to_logs_on_error(tmp_path: Path) -> None:
    p, inst = plan(tmp_path, "echo first; echo last words; exit 1")
    run_to_end(p, inst)
    assert inst.result("FallbackToLogsOnError").message == "first\nlast words\n"
    assert inst.result("File").message == ""
    assert log_tail(inst.log_path, 1, 100) == "last words\n"


def test_sigterm_to_the_container_group_is_recorded_as_143(tmp_path: Path) -> None:
    p, inst = plan(tmp_path, "echo up; sleep 30")
    inst.launch(p, sys.executable)
    inst.wait_started(10)
    assert inst.running()
    deadline = time.monotonic() + 10
    while "up" not in inst.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    inst.signal(signal.SIGTERM)
    assert inst.popen is not None
    inst.popen.wait(10)
    result = inst.result("File")
    assert result.exit_code == 143
    assert result.signal == signal.SIGTERM


def test_processes_the_container_left_in_other_sessions_end_with_it(tmp_path: Path) -> None:
    """As tini puts its child in a process group of its own and torch elastic its workers in sessions of
    their own: a runtime kills them with the container (its cgroup); the shim, their subreaper, does."""
    script = "setsid sleep 300 & echo $! > /scratch/orphan; sleep 300"
    p, inst = plan(tmp_path, script)
    inst.launch(p, sys.executable)
    inst.wait_started(10)
    pid_file = tmp_path / "scratch" / "orphan"
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    orphan = int(pid_file.read_text())
    # `$!` is written as soon as the shell forks, possibly before the child has called setsid().
    while os.getsid(orphan) == os.getsid(inst.container_pid() or 0):
        assert time.monotonic() < deadline, "the orphan never left the container's session"
        time.sleep(0.05)
    inst.signal(signal.SIGKILL)
    assert inst.popen is not None
    inst.popen.wait(10)
    assert inst.result("File").exit_code == 137
    # Gone, not a zombie: the shim reaped it.
    assert not Path(f"/proc/{orphan}").exists()


def test_missing_executable_is_a_start_error(tmp_path: Path) -> None:
    p, inst = plan(tmp_path, "true")
    p = LaunchPlan(**{**p.__dict__, "argv": ["no-such-binary-xyz"]})
    run_to_end(p, inst)
    result = inst.result("File")
    assert result.exit_code == 128
    assert result.reason == "StartError"
    assert "executable file not found" in result.message


def test_a_volume_over_an_ancestor_of_the_state_dir_hides_no_later_source(tmp_path: Path) -> None:
    """The state dir lives under /tmp (a clone in /tmp) and the pod mounts an emptyDir at /tmp:
    the termination log and the other sources under /tmp must still be bound."""
    assert str(tmp_path).startswith("/tmp/")
    inst = Instance(tmp_path / "containers" / "main", 0)
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{}")
    p = LaunchPlan(
        argv=["sh", "-c", "cat /etc/app/config.json; touch /tmp/mine; echo done > /dev/termination-log"],
        env={"PATH": "/usr/bin:/bin"},
        working_dir="/",
        mounts=[
            Mount(str(tmp_path / "emptydir"), "/tmp"),
            Mount(str(tmp_path / "cfg"), "/etc/app", read_only=True),
            Mount(str(inst.termination_log), "/dev/termination-log", is_file=True),
        ],
        termination_message_path="/dev/termination-log",
        read_only_root=True,
    )
    run_to_end(p, inst)
    result = inst.result("File")
    assert result.exit_code == 0, inst.log_path.read_text()
    assert result.message == "done\n"
    assert (tmp_path / "emptydir" / "mine").exists()


def test_the_project_tree_stays_visible_under_a_volume_over_its_ancestor(tmp_path: Path) -> None:
    """Pods run the project's venv python; an emptyDir over an ancestor of the repo (here its
    parent) must not hide it."""
    repo = Path(__file__).resolve().parents[2]
    inst = Instance(tmp_path / "containers" / "main", 0)
    (tmp_path / "emptydir").mkdir()
    p = LaunchPlan(
        argv=[sys.executable, "-c", f"import localcluster; open('{repo.parent}/mine', 'w').write('x')"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)},
        working_dir="/",
        mounts=[
            Mount(str(tmp_path / "emptydir"), str(repo.parent)),
            Mount(str(inst.termination_log), "/dev/termination-log", is_file=True),
        ],
        termination_message_path="/dev/termination-log",
        read_only_root=True,
    )
    run_to_end(p, inst)
    assert inst.result("File").exit_code == 0, inst.log_path.read_text()
    assert (tmp_path / "emptydir" / "mine").read_text() == "x"
