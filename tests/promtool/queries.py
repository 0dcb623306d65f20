"""Every PromQL expression the chart ships, extracted from the dashboards' JSON and the rule files (never
listed by hand), and Grafana's template variables substituted the way Grafana would."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "finetune-operator"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
RULE_FILES = sorted((CHART / "rules").glob("*.yaml"))


@dataclass(frozen=True)
class Query:
    where: str  # "finetune-job.json: panel 'Loss' A" or "rules.yaml: alert X"
    expr: str
    panel: str = ""  # "<dashboard uid>/<panel id>" for dashboard targets


def promtool() -> str:
    """The local environment's promtool (built by `make cluster-up`); missing is a failure, not a skip."""
    found = shutil.which("promtool") or str(REPO / ".dev" / "bin" / "promtool")
    if not Path(found).exists():
        raise AssertionError("promtool is missing: run `make cluster-up` (it builds .dev/bin/promtool)")
    return found


def load_dashboards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in DASHBOARDS]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return [p for p in out if p.get("type") != "row"]


def dashboard_queries() -> list[Query]:
    out = []
    for path, dash in zip(DASHBOARDS, load_dashboards(), strict=True):
        for p in panels(dash):
            for t in p.get("targets", []):
                out.append(
                    Query(
                        f"{path.name}: panel {p['title']!r} {t['refId']}",
                        t["expr"],
                        f"{dash['uid']}/{p['id']}",
                    )
                )
    return out


def variable_queries() -> list[Query]:
    out = []
    for path, dash in zip(DASHBOARDS, load_dashboards(), strict=True):
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                out.append(Query(f"{path.name}: variable {v['name']}", q))
    return out


def rule_queries() -> list[Query]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                out.append(Query(f"{path.name}: {name}", rule["expr"]))
    return out


def substitute(expr: str, values: dict[str, str] | None = None, range_: str = "1h") -> str:
    """Grafana's variables: given values (regex-safe), else `.*`; $__rate_interval -> 1m, $__range -> range_."""
    values = values or {}
    out = expr.replace("$__rate_interval", "1m").replace("${__range}", range_).replace("$__range", range_)
    out = out.replace("$__interval", "1m")

    def var(m: re.Match[str]) -> str:
        return values.get(m.group(1) or m.group(2), ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, out)


def label_values_as_promql(query: str) -> tuple[str, str]:
    """`label_values(selector, label)` -> (`group by (label) (selector)`, label)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.S)
    if not m:
        raise AssertionError(f"unsupported variable query {query!r}")
    return f"group by ({m.group(2)}) ({m.group(1)})", m.group(2)


# PromQL words that look like metric names but are functions, aggregations or keywords.
_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "group",
    "stddev",
    "stdvar",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "histogram_quantile",
    "time",
    "absent",
    "clamp_min",
    "clamp_max",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "changes",
    "resets",
    "label_replace",
    "label_join",
    "vector",
    "scalar",
    "abs",
    "round",
    "le",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (string literals and label matchers removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\bby\s*\([^)]*\)|\bon\s*\([^)]*\)|\bwithout\s*\([^)]*\)|group_left\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", text))
    return {n for n in names if n.lower() not in _WORDS and not re.fullmatch(r"\d.*|e\d+", n)}
