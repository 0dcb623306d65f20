from __future__ import annotations

from pathlib import Path

import pytest

from localcluster.nodeagent.ipam import IPAM, next_free


def test_next_free_skips_reserved_and_taken_addresses() -> None:
    assert next_free([]) == "127.1.0.2"
    assert next_free(["127.1.0.2", "127.1.0.3"]) == "127.1.0.4"
    assert next_free([], after="127.1.0.254") == "127.1.1.1"


def test_next_free_is_round_robin_and_wraps() -> None:
    assert next_free(["127.1.0.2"], after="127.1.0.9") == "127.1.0.10"
    assert next_free([], after="127.1.255.254") == "127.1.0.2"


def test_next_free_raises_when_exhausted() -> None:
    with pytest.raises(RuntimeError):
        next_free(["10.0.0.1", "10.0.0.2"], cidr="10.0.0.0/30")


def test_allocations_are_unique_stable_released_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    ipam = IPAM(path)
    a = ipam.allocate("uid-a")
    b = ipam.allocate("uid-b")
    assert a != b
    assert ipam.allocate("uid-a") == a
    reloaded = IPAM(path)
    assert reloaded.get("uid-a") == a
    assert reloaded.uids() == {"uid-a", "uid-b"}
    reloaded.release("uid-a")
    assert IPAM(path).get("uid-a") is None
    c = reloaded.allocate("uid-c")
    assert c not in (a, b)
