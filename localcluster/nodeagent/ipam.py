"""Pod IPs on loopback: one 127.1.x.y per live pod, persisted so that an agent restart keeps them.

All of 127.0.0.0/8 routes to `lo` on Linux, so a process can bind any of these addresses
without configuring anything; two pods can then listen on the same port.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

POD_CIDR = "127.1.0.0/16"


def next_free(used: Iterable[str], cidr: str = POD_CIDR, after: str | None = None) -> str:
    """The next free host address of `cidr` (network, broadcast and .0/.255 octets skipped),
    searching round-robin from `after` so a just-released address is not reused at once."""
    net = ipaddress.IPv4Network(cidr)
    taken = {ipaddress.IPv4Address(u) for u in used}
    hosts = [h for h in net.hosts() if h.packed[-1] not in (0, 255) and h != net.network_address + 1]
    start = 0
    if after is not None:
        a = ipaddress.IPv4Address(after)
        for i, h in enumerate(hosts):
            if h > a:
                start = i
                break
    for i in range(len(hosts)):
        h = hosts[(start + i) % len(hosts)]
        if h not in taken:
            return str(h)
    raise RuntimeError(f"no free pod IP left in {cidr}")


class IPAM:
    """Allocations keyed by pod UID, stored as JSON in the state dir."""

    def __init__(self, path: Path, cidr: str = POD_CIDR) -> None:
        self.path = path
        self.cidr = cidr
        self._lock = threading.Lock()
        self._by_uid: dict[str, str] = {}
        self._last: str | None = None
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            self._by_uid = dict(data.get("allocations", {}))
            self._last = data.get("last")

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"allocations": self._by_uid, "last": self._last}), encoding="utf-8")
        os.replace(tmp, self.path)

    def allocate(self, uid: str) -> str:
        with self._lock:
            if uid in self._by_uid:
                return self._by_uid[uid]
            ip = next_free(self._by_uid.values(), self.cidr, self._last)
            self._by_uid[uid] = ip
            self._last = ip
            self._save()
            return ip

    def release(self, uid: str) -> None:
        with self._lock:
            if self._by_uid.pop(uid, None) is not None:
                self._save()

    def get(self, uid: str) -> str | None:
        with self._lock:
            return self._by_uid.get(uid)

    def uids(self) -> set[str]:
        with self._lock:
            return set(self._by_uid)
