"""Local node agent: a kubelet stand-in that runs pods as local processes (dev/test tooling).

It registers a GPU node (Lease + Ready heartbeat), watches the pods bound to it and runs each
container through `sandbox` (a shim in a private mount namespace whose root is a tmpfs of bind
mounts of the host's tree, so volumes appear at their mountPath without touching the host),
reports pod status like a kubelet, and serves `/containerLogs` for `kubectl logs`.

Modules: images (image table), podspec (pod -> launch plan, pure), volumes (volume contents),
sandbox (in-namespace launcher/shim), runtime (container instances on disk), probes, status
(pod status, pure), ipam (pod IPs on 127.1.0.0/16), logs + kubeletapi (kubelet HTTPS API),
node (Node, Lease), events, podworker (one thread per pod), agent + __main__ (wiring).

Not a container runtime: no image filesystems, network/PID namespaces, cgroups (resource
limits are not enforced), uid switching, `kubectl exec`/`port-forward`, or native sidecar
(restartPolicy: Always) init containers.
"""
