"""The node agent's cluster-DNS stand-in (localcluster.nodeagent.dns): the names a pod behind a headless
Service gets, and a hosts file that changes in place for the containers that bind it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from localcluster.nodeagent.dns import ClusterHosts, pod_names


def pod(hostname: str | None, subdomain: str | None, namespace: str = "team-a") -> dict[str, Any]:
    spec = {k: v for k, v in (("hostname", hostname), ("subdomain", subdomain)) if v}
    return {"metadata": {"namespace": namespace}, "spec": spec}


def test_a_pod_with_hostname_and_subdomain_gets_the_cluster_names() -> None:
    assert pod_names(pod("bot-a1-0", "bot-a1")) == [
        "bot-a1-0.bot-a1.team-a.svc.cluster.local",
        "bot-a1-0.bot-a1.team-a.svc",
        "bot-a1-0.bot-a1.team-a",
        "bot-a1-0.bot-a1",
    ]


def test_a_pod_without_both_gets_none() -> None:
    assert pod_names(pod("bot-a1-0", None)) == []
    assert pod_names(pod(None, "bot-a1")) == []


def test_the_hosts_file_follows_pods_in_place(tmp_path: Path) -> None:
    node = tmp_path / "node-hosts"
    node.write_text("127.0.0.1\tlocalhost\n")
    hosts = ClusterHosts(tmp_path / "hosts", node_hosts=node)
    inode = os.stat(hosts.path).st_ino
    hosts.set("uid-0", pod("bot-a1-0", "bot-a1"), "127.1.0.7")
    hosts.set("uid-1", pod("bot-a1-1", "bot-a1"), "127.1.0.8")
    hosts.set("uid-2", pod(None, None), "127.1.0.9")
    text = hosts.path.read_text()
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert "127.1.0.7\tbot-a1-0.bot-a1.team-a.svc.cluster.local" in text
    assert "127.1.0.8\tbot-a1-1.bot-a1.team-a.svc.cluster.local" in text
    assert "127.1.0.9" not in text
    hosts.remove("uid-0")
    text = hosts.path.read_text()
    assert "bot-a1-0" not in text
    assert "bot-a1-1.bot-a1" in text
    # Rewritten, never replaced: a container's bind mount holds this inode.
    assert os.stat(hosts.path).st_ino == inode
    hosts.remove("uid-1")
    assert hosts.path.read_text().rstrip().endswith("(the node agent's cluster DNS)")
