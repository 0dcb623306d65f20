"""Background processes of the local environment: start, find again, stop.

Each daemon runs in its own session (process group) with a pid file in `.dev/pids/`, so a
later `cluster-down` -- from another shell, after a crash of the starter -- can stop it and
everything it forked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from localcluster.paths import LAYOUT


def pid_file(name: str) -> Path:
    return LAYOUT.pids / f"{name}.pid"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def running_pid(name: str) -> int | None:
    try:
        pid = int(pid_file(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid) else None


def start(
    name: str,
    argv: list[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start `argv` detached, logging to `.dev/logs/<name>.log`; no-op if already running."""
    pid = running_pid(name)
    if pid is not None:
        return pid
    LAYOUT.logs.mkdir(parents=True, exist_ok=True)
    LAYOUT.pids.mkdir(parents=True, exist_ok=True)
    with open(LAYOUT.logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    pid_file(name).write_text(str(proc.pid))
    return proc.pid


def stop(name: str, grace: float = 10.0) -> None:
    """SIGTERM the daemon's process group, SIGKILL what is left after `grace` seconds."""
    path = pid_file(name)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        path.unlink(missing_ok=True)
        return
    kill_group(pid, grace)
    path.unlink(missing_ok=True)


def kill_group(pid: int, grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            if not alive(pid) and not _group_alive(pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # fields[0] is state, fields[2] is the process group id
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout: float, what: str, logs: Iterable[str] = ()) -> None:
    """Poll `check` until true; on timeout raise with the tail of the named logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    tails = []
    for name in logs:
        path = LAYOUT.logs / f"{name}.log"
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-25:]
            tails.append(f"--- {path} ---\n" + "\n".join(lines))
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n" + "\n".join(tails))
