"""Container instances on disk and the processes that run them (through the sandbox shim).

A container instance is one run of a container: `<sandbox>/containers/<name>/<n>/` holds the
launch spec, the shim's state (`state.json`: the container's pid and start time) and its result
(`exit.json`); `<n>.log` beside it is the CRI log. The files, not the agent's memory, are the
truth, so an agent restart adopts running instances and still learns how finished ones ended.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localcluster.nodeagent import sandbox
from localcluster.nodeagent.podspec import LaunchPlan
from localcluster.nodeagent.status import Terminated, exit_reason

log = logging.getLogger("nodeagent.runtime")

JSON = dict[str, Any]
TERMINATION_MESSAGE_MAX = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _read_json(path: Path) -> JSON | None:
    try:
        data: JSON = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: tells a live process from a recycled pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the rest follows the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def log_tail(path: Path, lines: int, max_bytes: int) -> str:
    """The last lines of a CRI log as plain text (for FallbackToLogsOnError)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    out: list[str] = []
    for line in data.decode("utf-8", "replace").splitlines()[-lines:]:
        parts = line.split(" ", 3)
        if len(parts) == 4:
            out.append(parts[3] + ("\n" if parts[2] == "F" else ""))
    text = "".join(out)
    return text.encode()[-max_bytes:].decode("utf-8", "ignore")


class Instance:
    """One run of a container."""

    def __init__(self, container_dir: Path, number: int) -> None:
        self.dir = container_dir / str(number)
        self.number = number
        self.log_path = container_dir / f"{number}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.done = threading.Event()

    @property
    def termination_log(self) -> Path:
        return self.dir / "termination-log"

    def exists(self) -> bool:
        return self.dir.is_dir()

    def launch(self, plan: LaunchPlan, python: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "root").mkdir(exist_ok=True)
        self.termination_log.touch()
        self.termination_log.chmod(0o666)
        spec = {
            "argv": plan.argv,
            "env": plan.env,
            "workingDir": plan.working_dir,
            "readOnlyRoot": plan.read_only_root,
            "log": str(self.log_path),
            "staging": str(self.dir / "root"),
            "rootfs": plan.rootfs,
            "hostsFile": plan.hosts_file,
            # The overlay's writable layer: this instance's, so the image in the store never changes.
            "layers": str(self.dir / "layers"),
            "identity": (
                None
                if plan.identity is None
                else {
                    "uid": plan.identity.uid,
                    "gid": plan.identity.gid,
                    "groups": list(plan.identity.groups),
                }
            ),
            "mounts": [
                {
                    "source": m.source,
                    "target": m.target,
                    "readOnly": m.read_only,
                    "isFile": m.is_file,
                    "createSource": m.create_source,
                }
                for m in plan.mounts
            ],
        }
        spec_path = self.dir / "spec.json"
        # The spec holds the container's environment (secrets among it): owner-only.
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        with open(self.dir / "shim.log", "ab") as shim_log:
            self.popen = subprocess.Popen(
                [python, "-m", "localcluster.nodeagent.sandbox", str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=shim_log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": PACKAGE_ROOT},
                # Its own session: the agent's signals and exit never reach the container.
                start_new_session=True,
                close_fds=True,
            )
        start = process_start_time(self.popen.pid) or ""
        dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            sandbox.write_json(dir_fd, "shim.json", {"pid": self.popen.pid, "start": start})
            sandbox.write_text(dir_fd, "shim.pid", f"{self.popen.pid}\n")
        finally:
            os.close(dir_fd)

    def state(self) -> JSON | None:
        return _read_json(self.dir / sandbox.STATE_FILE)

    def exit(self) -> JSON | None:
        return _read_json(self.dir / sandbox.EXIT_FILE)

    def shim_alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        shim = _read_json(self.dir / "shim.json")
        if not shim:
            return False
        return process_start_time(int(shim["pid"])) == shim.get("start")

    def container_pid(self) -> int | None:
        state = self.state()
        return int(state["pid"]) if state else None

    def running(self) -> bool:
        return self.exit() is None and self.shim_alive()

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state() is not None or self.exit() is not None or not self.shim_alive():
                return
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        pid = self.container_pid()
        if pid is not None and self.exit() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            return
        if self.exit() is None and sig == signal.SIGKILL:
            self.kill_shim()

    def kill_shim(self) -> None:
        shim = _read_json(self.dir / "shim.json")
        if shim and process_start_time(int(shim["pid"])) == shim.get("start"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(shim["pid"]), signal.SIGKILL)

    def watch(self, on_exit: Callable[[], None]) -> None:
        """Call on_exit (from a thread) once the instance has ended."""

        def wait() -> None:
            if self.popen is not None:
                self.popen.wait()
            else:
                while self.shim_alive():
                    time.sleep(1.0)
            # A stale pid file would name a recycled pid to `localcluster down`.
            (self.dir / "shim.pid").unlink(missing_ok=True)
            self.done.set()
            on_exit()

        threading.Thread(target=wait, name=f"wait-{self.dir.parent.name}-{self.number}", daemon=True).start()

    def result(self, policy: str) -> Terminated:
        """How the instance ended, with its termination message."""
        ex = self.exit()
        state = self.state() or {}
        if ex is None:
            return Terminated(
                exit_code=137,
                reason="Error",
                started_at=state.get("startedAt"),
                finished_at=sandbox.now_rfc3339(),
                message="the container's process disappeared (killed together with its shim)",
            )
        code = int(ex.get("exitCode", 0))
        reason = ex.get("reason") or exit_reason(code)
        message = str(ex.get("message") or "")
        if not message:
            try:
                with open(self.termination_log, "rb") as f:
                    message = f.read(TERMINATION_MESSAGE_MAX).decode("utf-8", "replace")
            except FileNotFoundError:
                message = ""
        if not message.strip() and code != 0 and policy == "FallbackToLogsOnError":
            message = log_tail(self.log_path, FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
        return Terminated(
            exit_code=code,
            reason=reason,
            started_at=ex.get("startedAt") or state.get("startedAt"),
            finished_at=ex.get("finishedAt"),
            message=message,
            signal=ex.get("signal"),
        )


def instances(container_dir: Path) -> list[int]:
    if not container_dir.is_dir():
        return []
    return sorted(int(p.name) for p in container_dir.iterdir() if p.is_dir() and p.name.isdigit())


def shim_python() -> str:
    """The interpreter the shim runs under: the agent's own (the project's venv)."""
    return os.path.join(sys.prefix, "bin", "python")


def decode_secret(data: JSON | None) -> dict[str, bytes] | None:
    if data is None:
        return None
    return {k: base64.b64decode(v) for k, v in (data.get("data") or {}).items()}


def decode_config_map(data: JSON | None) -> dict[str, bytes] | None:
    if data is None:
        return None
    out = {k: str(v).encode() for k, v in (data.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (data.get("binaryData") or {}).items()})
    return out
