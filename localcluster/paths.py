"""Where the local environment keeps its state, binaries and ports.

Everything binds to 127.0.0.1 and lives under the repo's `.dev/` (git-ignored) so that
`cluster-down` can find and stop exactly what `cluster-up` started.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("FTO_STATE_DIR", REPO_ROOT / ".dev"))
CACHE_DIR = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
VENV_BIN = Path(sys.executable).parent

K8S_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
PROM_VERSION = "v0.313.5"
HELM_VERSION = "v3.21.4"  # built against the control plane's Kubernetes minor (build-binaries.sh)
KUEUE_VERSION = "v0.19.2"

HOST = "127.0.0.1"
NODE_NAME = "local-gpu-0"
NODE_GPUS = 2
# Each environment gets its own /16 of loopback for pod IPs (127.1/16, or 127.2/16 ... with
# FTO_ENV_INDEX), so pods of two environments never collide.
ENV_INDEX = int(os.environ.get("FTO_ENV_INDEX", "0"))
POD_CIDR = f"127.{1 + ENV_INDEX}.0.0/16"
SERVICE_CIDR = "10.0.0.0/24"


@dataclass(frozen=True)
class Ports:
    apiserver: int = 16443
    etcd_client: int = 12379
    etcd_peer: int = 12380
    controller_manager: int = 10257
    scheduler: int = 10259
    kubelet: int = 10250
    s3: int = 18333
    s3_master: int = 19333  # grpc ports are these + 10000
    s3_volume: int = 18080
    s3_filer: int = 18888
    s3_admin: int = 18646
    prometheus: int = 19090
    kueue_webhook: int = 19443
    kueue_health: int = 18481
    kueue_metrics: int = 18480


def _ports() -> Ports:
    """FTO_PORT_OFFSET shifts every port, so a second environment (tests of cluster-up and
    cluster-down themselves) can run beside the main one."""
    offset = int(os.environ.get("FTO_PORT_OFFSET", "0"))
    base = Ports()
    return Ports(**{k: v + offset for k, v in base.__dict__.items()})


PORTS = _ports()


@dataclass(frozen=True)
class Layout:
    """Paths inside the state dir."""

    root: Path

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def up_lock(self) -> Path:
        return self.root / "up.lock"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def s3_data(self) -> Path:
        return self.root / "s3"

    @property
    def prometheus(self) -> Path:
        return self.root / "prometheus"

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    @property
    def bin(self) -> Path:
        """Symlinks to the cached binaries, so PATH needs one entry."""
        return self.root / "bin"


LAYOUT = Layout(STATE_DIR)
