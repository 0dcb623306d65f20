"""`python -m localcluster.nodeagent`: the local node agent (a kubelet stand-in)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from localcluster.nodeagent.agent import AgentConfig, run
from localcluster.nodeagent.ipam import POD_CIDR


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m localcluster.nodeagent", description=__doc__)
    p.add_argument("--kubeconfig", required=True, help="kubeconfig with the node's client certificate")
    p.add_argument("--node-name", required=True)
    p.add_argument("--state-dir", required=True, type=Path, help="pod sandboxes and agent state")
    p.add_argument("--pki-dir", required=True, type=Path, help="holds ca.crt and ca.key")
    p.add_argument("--gpus", type=int, default=2, help="nvidia.com/gpu capacity")
    p.add_argument("--port", type=int, default=10250, help="kubelet API port")
    p.add_argument("--address", default="127.0.0.1", help="node InternalIP and kubelet API address")
    p.add_argument("--cpu", default="16")
    p.add_argument("--memory", default="64Gi")
    p.add_argument("--max-pods", type=int, default=110)
    p.add_argument("--pod-cidr", default=POD_CIDR, help="loopback range pod IPs come from")
    p.add_argument("--log-file", default=None, help="JSON-lines log (default: stderr)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = AgentConfig(
        kubeconfig=args.kubeconfig,
        node_name=args.node_name,
        state_dir=args.state_dir.resolve(),
        pki_dir=args.pki_dir.resolve(),
        gpus=args.gpus,
        port=args.port,
        address=args.address,
        cpu=args.cpu,
        memory=args.memory,
        pods=args.max_pods,
        pod_cidr=args.pod_cidr,
    )
    return run(cfg, args.log_file)


if __name__ == "__main__":
    sys.exit(main())
