"""Container probes (httpGet, tcpSocket, exec) and their period/threshold bookkeeping."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
KINDS = ("startupProbe", "livenessProbe", "readinessProbe")


@dataclass
class ProbeState:
    kind: str
    spec: JSON
    next_due: float
    result: bool
    successes: int = 0
    failures: int = 0

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    def record(self, ok: bool, now: float) -> bool:
        """Count one result; returns True when the probe's overall result changed."""
        self.next_due = now + self.period
        if ok:
            self.successes += 1
            self.failures = 0
            threshold = int(self.spec.get("successThreshold") or 1)
            if not self.result and self.successes >= threshold:
                self.result = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            threshold = int(self.spec.get("failureThreshold") or 3)
            if self.result and self.failures >= threshold:
                self.result = False
                return True
        return False


def new_probes(container: JSON, started: float) -> dict[str, ProbeState]:
    """Probe states of a freshly started container: readiness and startup begin failed (not ready,
    not started), liveness begins passing, each first due after initialDelaySeconds."""
    out: dict[str, ProbeState] = {}
    for kind in KINDS:
        spec = container.get(kind)
        if spec:
            out[kind] = ProbeState(
                kind=kind,
                spec=spec,
                next_due=started + float(spec.get("initialDelaySeconds") or 0),
                result=kind == "livenessProbe",
            )
    return out


def _port(container: JSON, port: Any) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"port {port!r} not found in the container's ports")


def run_probe(
    spec: JSON, container: JSON, pod_ip: str, exec_prefix: list[str] | None, env: dict[str, str]
) -> tuple[bool, str]:
    """One probe attempt: (success, message for a failure)."""
    timeout = float(spec.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in spec:
            h = spec["httpGet"]
            host = h.get("host") or pod_ip
            port = _port(container, h.get("port"))
            conn: http.client.HTTPConnection
            if (h.get("scheme") or "HTTP").upper() == "HTTPS":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                headers.setdefault("User-Agent", "kube-probe/local")
                conn.request("GET", h.get("path") or "/", headers=headers)
                resp = conn.getresponse()
                resp.read(10240)
            finally:
                conn.close()
            if 200 <= resp.status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {resp.status}"
        if "tcpSocket" in spec:
            t = spec["tcpSocket"]
            port = _port(container, t.get("port"))
            with socket.create_connection((t.get("host") or pod_ip, port), timeout=timeout):
                return True, ""
        if "exec" in spec:
            if exec_prefix is None:
                return False, "container is not running"
            argv = [*exec_prefix, *(spec["exec"].get("command") or [])]
            try:
                out = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                return False, f"command timed out after {timeout:g}s"
            if out.returncode == 0:
                return True, ""
            text = (out.stdout + out.stderr).decode("utf-8", "replace").strip()[:512]
            return False, f"command exited with {out.returncode}: {text}"
        # grpc probes need a gRPC health client; report success rather than kill a healthy pod.
        return True, ""
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return False, f"probe failed: {exc}"


def exec_prefix_for(pid: int) -> list[str]:
    """Run a command inside a container: its mount namespace, root and working directory."""
    return ["nsenter", f"--target={pid}", "--mount", "--root", "--wd", "--"]


def monotonic() -> float:
    return time.monotonic()
