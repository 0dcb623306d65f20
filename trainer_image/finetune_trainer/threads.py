"""Threads follow the pod's CPU, not the node's.

torch, OpenMP/MKL and the tokenizers size their thread pools from the node's core count whatever the
container may use: a pod with `cpu: "8"` on a 128-core node would run 128 threads against an 8-core
quota (or 8 cores' share) and thrash. The operator passes the container's CPU limit and request in
millicores through the downward API (FTO_CPU_LIMIT, FTO_CPU_REQUEST); the thread count is the limit
when there is one, else the request, rounded up, at least 1 and at most the cores this process sees.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

LIMIT_ENV = "FTO_CPU_LIMIT"
REQUEST_ENV = "FTO_CPU_REQUEST"
# The pools that read their size from the environment when they start.
POOL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


def _millicores(value: str | None) -> int | None:
    try:
        parsed = int(value) if value else 0
    except ValueError:
        return None
    return parsed if parsed > 0 else None


def thread_count(limit_m: int | None, request_m: int | None, host_cpus: int) -> int:
    """Threads for a container with CPU `limit_m` / `request_m` millicores on `host_cpus` cores. The
    downward API reports an unset limit as the node's allocatable CPU, which is no limit at all."""
    host = max(1, host_cpus)
    if limit_m is not None and limit_m < host * 1000:
        wanted = math.ceil(limit_m / 1000)
    elif request_m is not None:
        wanted = math.ceil(request_m / 1000)
    else:
        wanted = host
    return max(1, min(wanted, host))


def host_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def configure(environ: MutableMapping[str, str]) -> int:
    """Size the thread pools before torch or the tokenizers start; returns the count for torch. Values
    the pod sets itself (e.g. OMP_NUM_THREADS in its env) are kept, and then the count is that one."""
    count = thread_count(
        _millicores(environ.get(LIMIT_ENV)), _millicores(environ.get(REQUEST_ENV)), host_cpus()
    )
    for name in POOL_ENV:
        environ.setdefault(name, str(count))
    # With one core the tokenizers' own pool only adds contention.
    environ.setdefault("TOKENIZERS_PARALLELISM", "true" if count > 1 else "false")
    try:
        return max(1, int(environ["OMP_NUM_THREADS"]))
    except ValueError:
        return count


def share(environ: MutableMapping[str, str], count: int, processes: int) -> int:
    """Split the pod's threads between the workers it launches (a distributed run on CPU): each worker's
    pools get count / processes, at least one, whatever was set for the pod as a whole."""
    each = max(1, count // max(1, processes))
    for name in POOL_ENV:
        environ[name] = str(each)
    return each


def apply_to_torch(count: int) -> None:
    """torch's intra-op pool (inter-op work is rare in eager training: one thread)."""
    import torch

    torch.set_num_threads(count)
    # Fails once inter-op work has started in this process; the intra-op size above still applies.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    log.info("using %d CPU threads", count)
