"""Cost: the estimate before training and the usage while it runs (pure).

The price table is a ConfigMap (default `finetune-operator-prices` in the operator's namespace):

    data:
      default: "2.00"                      # price per GPU-hour when the gpuType is not listed
      nvidia-h100-80gb: "4.10"             # <gpuType>: price per GPU-hour
      default.tokensPerSecond: "2500"      # expected training throughput per GPU
      nvidia-h100-80gb.tokensPerSecond: "9000"

estimate = dataset tokens x epochs / (tokens per second per GPU) -> GPU-hours x price.
usage    = sum over trainer pods of GPUs x seconds the container ran -> x price.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final

from .api import Estimate, FineTuneJobSpec, Usage
from .manifests import CONTAINER_NAME, GPU_RESOURCE

JSON = dict[str, Any]

DEFAULT_KEY: Final = "default"
THROUGHPUT_SUFFIX: Final = ".tokensPerSecond"
# Used when the table is missing or silent: a price of 0 makes the missing table visible (COST 0.00).
FALLBACK_PRICE: Final = Decimal("0")
FALLBACK_TOKENS_PER_SECOND: Final = 2000.0
CENT: Final = Decimal("0.01")


@dataclass(frozen=True)
class PriceTable:
    prices: Mapping[str, Decimal] = field(default_factory=dict)
    throughput: Mapping[str, float] = field(default_factory=dict)

    def price(self, gpu_type: str | None) -> Decimal:
        if gpu_type and gpu_type in self.prices:
            return self.prices[gpu_type]
        return self.prices.get(DEFAULT_KEY, FALLBACK_PRICE)

    def tokens_per_second(self, gpu_type: str | None) -> float:
        if gpu_type and gpu_type in self.throughput:
            return self.throughput[gpu_type]
        return self.throughput.get(DEFAULT_KEY, FALLBACK_TOKENS_PER_SECOND)


def parse_price_table(data: Mapping[str, str] | None) -> tuple[PriceTable, list[str]]:
    """The ConfigMap's data -> table, plus one message per entry that was ignored (bad numbers)."""
    prices: dict[str, Decimal] = {}
    throughput: dict[str, float] = {}
    problems: list[str] = []
    for key, raw in (data or {}).items():
        try:
            if key.endswith(THROUGHPUT_SUFFIX):
                value = float(raw)
                if value <= 0:
                    raise ValueError
                throughput[key[: -len(THROUGHPUT_SUFFIX)]] = value
            else:
                price = Decimal(raw.strip())
                if price < 0 or not price.is_finite():
                    raise InvalidOperation
                prices[key] = price
        except (ValueError, InvalidOperation):
            problems.append(f"price table entry {key}={raw!r} is not a non-negative number; ignored")
    return PriceTable(prices, throughput), problems


def money(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


def estimate(spec: FineTuneJobSpec, tokens: int, table: PriceTable) -> Estimate:
    """The cost of training on `tokens` (one pass over the data times the epochs in force)."""
    gpus = spec.resources.total_gpus
    if gpus == 0:
        return Estimate(tokens=tokens, gpu_hours="0.00", cost=money(Decimal(0)))
    tps = table.tokens_per_second(spec.resources.gpu_type)
    # Linear scaling: n GPUs finish n times sooner, so the GPU-hours do not depend on n.
    gpu_hours = Decimal(tokens) / Decimal(str(tps)) / Decimal(3600)
    cost = gpu_hours * table.price(spec.resources.gpu_type)
    return Estimate(tokens=tokens, gpu_hours=money(gpu_hours), cost=money(cost))


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def pod_gpus(pod: JSON) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        limits = (c.get("resources") or {}).get("limits") or {}
        try:
            total += int(limits.get(GPU_RESOURCE, 0))
        except (TypeError, ValueError):
            continue
    return total


def pod_run_seconds(pod: JSON, now: datetime) -> float:
    """Seconds the trainer container ran (so far), from the pod's container state times."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != CONTAINER_NAME:
            continue
        state = cs.get("state") or {}
        if "running" in state:
            start = _parse_time(state["running"].get("startedAt"))
            return max(0.0, (now - start).total_seconds()) if start else 0.0
        term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            start, end = _parse_time(term.get("startedAt")), _parse_time(term.get("finishedAt"))
            if start and end:
                return max(0.0, (end - start).total_seconds())
    return 0.0


def pod_gpu_seconds(
    pods: Iterable[JSON], now: datetime, seen: Mapping[str, float] | None = None
) -> dict[str, float]:
    """GPU-seconds per pod uid: what the visible pods used so far, never less than `seen` (pods of a
    suspension or an earlier attempt disappear, but what they used stays counted)."""
    out = dict(seen or {})
    for pod in pods:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if uid:
            out[uid] = max(out.get(uid, 0.0), pod_gpus(pod) * pod_run_seconds(pod, now))
    return out


def usage(gpu_seconds: float, price_per_gpu_hour: Decimal, floor: int = 0) -> Usage:
    """Usage of `gpu_seconds`, never below `floor` (the last value written: after an operator restart the
    pods that are gone are known only through it)."""
    seconds = max(int(gpu_seconds), floor)
    cost = Decimal(seconds) / Decimal(3600) * price_per_gpu_hour
    return Usage(gpu_seconds=seconds, estimated_cost=money(cost))


def over_budget(spec: FineTuneJobSpec, spent: Usage | Estimate | None) -> tuple[str, str] | None:
    """(reason, message) when `spent` (usage so far, or the estimate) passes spec.budget, else None."""
    budget = spec.budget
    if budget is None or spent is None:
        return None
    if isinstance(spent, Usage):
        cost = Decimal(spent.estimated_cost) if spent.estimated_cost else None
        hours = Decimal(spent.gpu_seconds or 0) / Decimal(3600)
        what = "usage"
    else:
        cost = Decimal(spent.cost) if spent.cost else None
        hours = Decimal(spent.gpu_hours) if spent.gpu_hours else Decimal(0)
        what = "estimate"
    if budget.max_cost is not None and cost is not None and cost > budget.max_cost:
        return "MaxCostExceeded", f"the {what} of {money(cost)} passed spec.budget.maxCost {budget.max_cost}"
    if budget.max_gpu_hours is not None and hours > budget.max_gpu_hours:
        return (
            "MaxGPUHoursExceeded",
            f"the {what} of {money(hours)} GPU-hours passed spec.budget.maxGPUHours {budget.max_gpu_hours}",
        )
    return None
