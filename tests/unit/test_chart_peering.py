"""finetune_operator.peering: the HA settings the chart passes (FTO_PEERING_*) and who leads."""

from __future__ import annotations

import datetime
import time

import pytest
from finetune_operator.peering import from_env, is_leader

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def peer(priority: int, seconds_ago: float, lifetime: int = 10) -> dict[str, object]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lastseen": seen.isoformat(), "lifetime": lifetime}


def test_no_name_means_standalone() -> None:
    assert from_env({}) is None
    assert from_env({"FTO_PEERING_NAME": " "}) is None


def test_oldest_replica_has_the_highest_priority() -> None:
    env = {"FTO_PEERING_NAME": "p"}
    first = from_env(env)
    time.sleep(0.002)
    later = [from_env({**env, "FTO_PEERING_PRIORITY": "oldest"}) for _ in range(20)]
    assert first is not None
    assert all(p is not None and p.priority < first.priority for p in later)
    assert len({p.priority for p in later if p}) == 20


def test_random_priorities_differ_and_fixed_ones_parse() -> None:
    env = {"FTO_PEERING_NAME": "p", "FTO_PEERING_PRIORITY": "random", "FTO_NAMESPACES": "a, b"}
    drawn = {p.priority for p in (from_env(env) for _ in range(20)) if p}
    assert len(drawn) == 20
    fixed = from_env({"FTO_PEERING_NAME": "p", "FTO_PEERING_PRIORITY": "7", "FTO_PEERING_LIFETIME": "15"})
    assert fixed is not None
    assert (fixed.priority, fixed.lifetime, fixed.namespaces) == (7, 15, ())
    assert from_env(env).namespaces == ("a", "b")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FTO_PEERING_PRIORITY": "high"}, "FTO_PEERING_PRIORITY"),
        ({"FTO_PEERING_LIFETIME": "soon"}, "FTO_PEERING_LIFETIME"),
        ({"FTO_PEERING_LIFETIME": "1"}, "at least 2"),
    ],
)
def test_bad_settings_stop_the_operator_with_a_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_env({"FTO_PEERING_NAME": "p", **env})


def test_the_highest_live_priority_leads() -> None:
    status = {"a": peer(10, 1), "b": peer(20, 1)}
    assert is_leader(status, 20, NOW)
    assert not is_leader(status, 10, NOW)


def test_a_dead_peer_does_not_count() -> None:
    status = {"a": peer(10, 1), "b": peer(20, 30)}  # b last seen 30 s ago, lifetime 10 s
    assert is_leader(status, 10, NOW)


def test_same_priority_pauses_both_and_absence_is_not_leading() -> None:
    assert not is_leader({"a": peer(10, 1), "b": peer(10, 1)}, 10, NOW)
    assert not is_leader({"b": peer(20, 1)}, 10, NOW)  # not (yet) registered
    assert not is_leader({}, 10, NOW)
