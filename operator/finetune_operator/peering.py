"""High availability: Kopf peering for several replicas of the operator, from FTO_PEERING_* variables.

Replicas announce themselves in a (Cluster)KopfPeering object; only the one with the highest priority
handles resources, the others stand by and take over when its record expires (at once when it stops
gracefully, after FTO_PEERING_LIFETIME seconds when it dies). Kopf pauses *every* replica that sees a
peer of the same priority, so each replica must have a distinct one. The default, `oldest`, derives it
from the start time: the longest-running replica leads, and a replica that (re)starts always stands by,
so a crash, a rollout or a new pod never moves the work to a newcomer while an older replica is there.

`python -m finetune_operator.peering` runs the operator with this module loaded (the Helm chart's
command). A startup handler may change `settings.peering` because Kopf starts peering only after the
startup handlers have run. The handler also creates the peering object if it is missing (a Helm chart
cannot ship an object of a CRD it installs in the same release), and keeps the
`finetune_operator_leader` gauge true to the peering: Kopf does not tell handlers when it pauses.
Without FTO_PEERING_NAME nothing changes (standalone, as `python -m finetune_operator`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import metrics
from .kube import load_api_client

GROUP, VERSION = "kopf.dev", "v1"
# Kopf's own assumption for peers that do not say their lifetime.
DEFAULT_PEER_LIFETIME = 60


@dataclass(frozen=True)
class Peering:
    name: str
    priority: int
    lifetime: int
    # Watched namespaces (one KopfPeering each); empty: all namespaces (one ClusterKopfPeering).
    namespaces: tuple[str, ...] = ()


def oldest_first_priority() -> int:
    """Higher for earlier starts (microseconds, negated), with a random tie-break below them."""
    return -(time.time_ns() // 1_000 * 1_000 + random.SystemRandom().randint(0, 999))


def from_env(env: Mapping[str, str]) -> Peering | None:
    """None when FTO_PEERING_NAME is unset. FTO_PEERING_PRIORITY: `oldest` (or empty; see the module's
    docstring), `random`, or an integer (only for a single replica: equal priorities pause all)."""
    name = env.get("FTO_PEERING_NAME", "").strip()
    if not name:
        return None
    raw = env.get("FTO_PEERING_PRIORITY", "").strip()
    if raw in ("", "oldest"):
        priority = oldest_first_priority()
    elif raw == "random":
        priority = random.SystemRandom().randint(1, 2**31 - 1)
    else:
        try:
            priority = int(raw)
        except ValueError as err:
            raise ValueError(
                f"FTO_PEERING_PRIORITY must be 'oldest', 'random' or an integer, not {raw!r}"
            ) from err
    raw_lifetime = env.get("FTO_PEERING_LIFETIME", "").strip() or "60"
    try:
        lifetime = int(raw_lifetime)
    except ValueError as err:
        raise ValueError(f"FTO_PEERING_LIFETIME must be an integer (seconds), not {raw_lifetime!r}") from err
    if lifetime < 2:
        raise ValueError(f"FTO_PEERING_LIFETIME must be at least 2 seconds, not {lifetime}")
    namespaces = tuple(n.strip() for n in env.get("FTO_NAMESPACES", "").split(",") if n.strip())
    return Peering(name=name, priority=priority, lifetime=lifetime, namespaces=namespaces)


def is_leader(status: Mapping[str, Any], priority: int, now: datetime.datetime) -> bool:
    """Whether the peer of `priority` is the one Kopf lets work: no live peer with a priority as high.

    `status` is a peering object's status: operator id -> {priority, lastseen, lifetime}.
    """
    ours = False
    for info in status.values():
        if not isinstance(info, Mapping):
            continue
        lastseen = datetime.datetime.fromisoformat(str(info.get("lastseen", "1970-01-01T00:00:00+00:00")))
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=datetime.UTC)
        lifetime = datetime.timedelta(seconds=int(info.get("lifetime", DEFAULT_PEER_LIFETIME)))
        if lastseen + lifetime < now:
            continue  # dead: Kopf ignores it too
        if int(info.get("priority", 0)) == priority:
            if ours:  # a second live peer with our priority: Kopf pauses both
                return False
            ours = True
        elif int(info.get("priority", 0)) > priority:
            return False
    return ours


class PeeringObjects:
    """The peering object(s) of this operator, through the blocking Kubernetes client."""

    def __init__(self, peering: Peering) -> None:
        self.peering = peering
        self.custom = client.CustomObjectsApi(load_api_client(2))

    def _targets(self) -> list[str | None]:
        return list(self.peering.namespaces) or [None]

    def ensure(self) -> None:
        """Create the ClusterKopfPeering or the KopfPeering of each watched namespace if missing."""
        for namespace in self._targets():
            kind = "KopfPeering" if namespace else "ClusterKopfPeering"
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": self.peering.name}}
            try:
                if namespace:
                    self.custom.create_namespaced_custom_object(
                        GROUP, VERSION, namespace, "kopfpeerings", body
                    )
                else:
                    self.custom.create_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings", body)
            except ApiException as err:
                if err.status != 409:  # 409: the other replica, or an earlier start, made it
                    raise

    def statuses(self) -> list[dict[str, Any]]:
        out = []
        for namespace in self._targets():
            if namespace:
                obj = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "kopfpeerings", self.peering.name
                )
            else:
                obj = self.custom.get_cluster_custom_object(
                    GROUP, VERSION, "clusterkopfpeerings", self.peering.name
                )
            out.append(dict(obj.get("status") or {}))
        return out

    def leading(self) -> bool:
        now = datetime.datetime.now(datetime.UTC)
        return all(is_leader(status, self.peering.priority, now) for status in self.statuses())


async def report_leadership(
    objects: PeeringObjects, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """Keep finetune_operator_leader in step with the peering; log each change of role."""
    loop = asyncio.get_running_loop()
    interval = max(1.0, min(5.0, objects.peering.lifetime / 3))
    leading: bool | None = None
    while True:
        try:
            now_leading = await loop.run_in_executor(None, objects.leading)
        except Exception as err:
            logger.warning(f"cannot read the peering object: {err}")
        else:
            if now_leading != leading:
                leading = now_leading
                metrics.METRICS.set_leader(leading)
                logger.info("this replica is the active one" if leading else "this replica stands by")
        await asyncio.sleep(interval)


_tasks: set[asyncio.Task[None]] = set()


@kopf.on.startup()
async def configure_peering(
    *, settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    peering = from_env(os.environ)
    if peering is None:
        return
    settings.peering.standalone = False
    settings.peering.mandatory = True  # no peering object: stop, rather than run unpeered next to a peer
    settings.peering.name = peering.name
    settings.peering.priority = peering.priority
    settings.peering.lifetime = peering.lifetime
    settings.peering.stealth = True  # no log line per keep-alive
    objects = PeeringObjects(peering)
    await asyncio.get_running_loop().run_in_executor(None, objects.ensure)
    task = asyncio.create_task(report_leadership(objects, logger), name="peering leadership")
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    logger.info(
        f"peering {peering.name!r}: priority {peering.priority}, lifetime {peering.lifetime}s "
        "(the highest priority handles jobs, the others stand by)"
    )


@kopf.on.cleanup()
async def stop_reporting(**_: Any) -> None:
    for task in list(_tasks):
        task.cancel()


def main() -> None:
    from .__main__ import main as run

    run()


if __name__ == "__main__":
    main()
