"""Cluster DNS for pods behind a headless Service, as a hosts file: a stand-in for CoreDNS.

On a real cluster a pod with `hostname` and `subdomain` (an Indexed Job's pod under its headless
Service) is `<hostname>.<subdomain>.<namespace>.svc.cluster.local` to every other pod; a multi-node
training attempt finds its rank-0 pod that way. The local environment runs no DNS server: the node
agent, which runs every pod here and knows their IPs, writes those names into one hosts file that
each image-based container sees as its /etc/hosts (the node's own entries first). The file is
rewritten in place, never replaced, so the bind mounts of running containers see each change.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

CLUSTER_DOMAIN = "cluster.local"


def pod_names(pod: JSON) -> list[str]:
    """The names cluster DNS gives a pod with hostname + subdomain (none without both), most specific
    first; the shorter ones are what the search path of a pod's resolv.conf would complete."""
    spec = pod.get("spec") or {}
    host, sub = spec.get("hostname"), spec.get("subdomain")
    ns = (pod.get("metadata") or {}).get("namespace", "default")
    if not host or not sub:
        return []
    base = f"{host}.{sub}"
    return [f"{base}.{ns}.svc.{CLUSTER_DOMAIN}", f"{base}.{ns}.svc", f"{base}.{ns}", base]


def render(node_hosts: str, entries: Sequence[tuple[str, Sequence[str]]]) -> str:
    lines = [node_hosts.rstrip("\n"), "# pods behind headless Services (the node agent's cluster DNS)"]
    lines += [f"{ip}\t{' '.join(names)}" for ip, names in sorted(entries)]
    return "\n".join(lines) + "\n"


class ClusterHosts:
    def __init__(self, path: Path, node_hosts: Path = Path("/etc/hosts")) -> None:
        self.path = path
        self.node_hosts = node_hosts
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[str, list[str]]] = {}
        with self.lock:
            self._write_locked()

    def set(self, uid: str, pod: JSON, ip: str) -> None:
        names = pod_names(pod)
        with self.lock:
            if not names or not ip or self.entries.get(uid) == (ip, names):
                return
            self.entries[uid] = (ip, names)
            self._write_locked()

    def remove(self, uid: str) -> None:
        with self.lock:
            if self.entries.pop(uid, None) is not None:
                self._write_locked()

    def _write_locked(self) -> None:
        try:
            node = self.node_hosts.read_text(encoding="utf-8")
        except OSError:
            node = "127.0.0.1\tlocalhost\n"
        data = render(node, list(self.entries.values())).encode()
        # In place: the containers' bind mounts hold this inode. Written whole, then cut to length.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
