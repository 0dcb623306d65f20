"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler, as a kubeadm cluster runs them.

Flags follow what controller-runtime's envtest gives a standalone API server (certs, SA keys,
authn/authz), plus the controller-manager and scheduler so Jobs, garbage collection,
ServiceAccounts and scheduling all happen for real.
"""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path

from localcluster import pki, procs
from localcluster.paths import HOST, LAYOUT, NODE_NAME, PORTS, SERVICE_CIDR

APISERVER_URL = f"https://{HOST}:{PORTS.apiserver}"

# identities: name -> (CN, groups)
_CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "node": (f"system:node:{NODE_NAME}", ("system:nodes",)),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("kubeadm:cluster-admins",)),
    "prometheus": ("local:prometheus", ()),
    # Kueue runs as its own user with the ClusterRole of its release (localcluster.kueue).
    "kueue": ("kueue", ()),
}


def ensure_pki() -> None:
    d = LAYOUT.pki
    pki.ensure_ca(d)
    pki.ensure_service_account_keys(d)
    pki.issue(
        d,
        pki.CertRequest(
            name="apiserver",
            common_name="kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=(HOST, "10.0.0.1"),
            server=True,
        ),
    )
    for name, (cn, groups) in _CLIENTS.items():
        crt, key = pki.issue(d, pki.CertRequest(name=name, common_name=cn, organizations=groups, client=True))
        (d / f"{name}-kubeconfig").write_text(pki.kubeconfig(APISERVER_URL, d / "ca.crt", crt, key, cn))
    admin = (d / "admin-kubeconfig").read_text()
    LAYOUT.kubeconfig.write_text(admin)
    LAYOUT.kubeconfig.chmod(0o600)


def etcd_argv(bin_dir: Path) -> list[str]:
    client = f"http://{HOST}:{PORTS.etcd_client}"
    peer = f"http://{HOST}:{PORTS.etcd_peer}"
    return [
        str(bin_dir / "etcd"),
        "--name=local",
        f"--data-dir={LAYOUT.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=local={peer}",
        # A throwaway dev cluster: fsync per write would dominate test time on a shared disk.
        "--unsafe-no-fsync",
        "--quota-backend-bytes=2147483648",
        "--log-level=warn",
    ]


def apiserver_argv(bin_dir: Path) -> list[str]:
    d = LAYOUT.pki
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://{HOST}:{PORTS.etcd_client}",
        f"--bind-address={HOST}",
        f"--advertise-address={HOST}",
        f"--secure-port={PORTS.apiserver}",
        f"--cert-dir={d}",
        f"--tls-cert-file={d / 'apiserver.crt'}",
        f"--tls-private-key-file={d / 'apiserver.key'}",
        f"--client-ca-file={d / 'ca.crt'}",
        f"--service-account-issuer={APISERVER_URL}",
        f"--service-account-key-file={d / 'sa.pub'}",
        f"--service-account-signing-key-file={d / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--kubelet-client-certificate={d / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={d / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={d / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=true",
        # The `kubernetes` Service's Endpoints may not hold a loopback address; nothing here
        # routes Service IPs anyway (no kube-proxy), pods reach the API at 127.0.0.1 directly.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_argv(bin_dir: Path) -> list[str]:
    d = LAYOUT.pki
    kc = d / "controller-manager-kubeconfig"
    return [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        f"--bind-address={HOST}",
        f"--secure-port={PORTS.controller_manager}",
        f"--cert-dir={d / 'controller-manager'}",
        f"--service-account-private-key-file={d / 'sa.key'}",
        f"--root-ca-file={d / 'ca.crt'}",
        f"--cluster-signing-cert-file={d / 'ca.crt'}",
        f"--cluster-signing-key-file={d / 'ca.key'}",
        # Each controller acts with its own ServiceAccount, so RBAC is exercised as in a real cluster.
        "--use-service-account-credentials=true",
        "--leader-elect=false",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
        "--v=1",
    ]


def scheduler_argv(bin_dir: Path) -> list[str]:
    d = LAYOUT.pki
    kc = d / "scheduler-kubeconfig"
    return [
        str(bin_dir / "kube-scheduler"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        f"--bind-address={HOST}",
        f"--secure-port={PORTS.scheduler}",
        f"--cert-dir={d / 'scheduler'}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def _ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(LAYOUT.pki / "ca.crt"))
    ctx.load_cert_chain(str(LAYOUT.pki / "admin.crt"), str(LAYOUT.pki / "admin.key"))
    return ctx


def api_get(path: str, timeout: float = 5.0) -> str:
    """GET from the API server as admin (used before any client library is configured)."""
    with urllib.request.urlopen(APISERVER_URL + path, context=_ssl_context(), timeout=timeout) as r:  # noqa: S310
        return str(r.read().decode())


def apiserver_ready() -> bool:
    try:
        return api_get("/readyz") == "ok"
    except OSError:
        return False


def component_healthy(port: int) -> bool:
    """kube-controller-manager and kube-scheduler serve /healthz to anyone (always-allow path)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # their serving certs are self-signed at start; we only ask for health
    try:
        url = f"https://{HOST}:{port}/healthz"
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return bool(r.read().decode() == "ok")
    except OSError:
        return False


def start(bin_dir: Path) -> None:
    ensure_pki()
    LAYOUT.etcd_data.mkdir(parents=True, exist_ok=True)
    LAYOUT.etcd_data.chmod(0o700)
    procs.start("etcd", etcd_argv(bin_dir))
    procs.wait_until(lambda: procs.port_open(PORTS.etcd_client), 30, "etcd", ["etcd"])
    procs.start("kube-apiserver", apiserver_argv(bin_dir))
    procs.wait_until(apiserver_ready, 120, "kube-apiserver /readyz", ["kube-apiserver"])
    procs.start("kube-controller-manager", controller_manager_argv(bin_dir))
    procs.start("kube-scheduler", scheduler_argv(bin_dir))
    procs.wait_until(
        lambda: component_healthy(PORTS.controller_manager),
        60,
        "kube-controller-manager /healthz",
        ["kube-controller-manager"],
    )
    procs.wait_until(
        lambda: component_healthy(PORTS.scheduler), 60, "kube-scheduler /healthz", ["kube-scheduler"]
    )


COMPONENTS = ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")
