"""The alert rules and dashboards with the real promtool: `check rules`, `test rules` (tests/promtool/), and
every dashboard/rule expression parsed by promtool (as recording rules in a scratch file)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from finetune_trainer.metrics_server import create_metrics

from tests.promtool.queries import (
    RULE_FILES,
    Query,
    dashboard_queries,
    label_values_as_promql,
    load_dashboards,
    metric_names,
    panels,
    promtool,
    rule_queries,
    substitute,
    variable_queries,
)

PROMTOOL_TESTS = sorted((Path(__file__).resolve().parents[1] / "promtool").glob("*.yaml"))
# The trainer's own registry is the list of what trainer pods expose (not a copy of its names).
TRAINER_METRICS = {family.name for family in create_metrics().registry.collect()}


def run(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{out}"
    return out


def test_check_rules() -> None:
    assert RULE_FILES
    out = run("check", "rules", *map(str, RULE_FILES))
    assert "SUCCESS" in out


def test_rule_unit_tests() -> None:
    assert PROMTOOL_TESTS
    out = run("test", "rules", *(p.name for p in PROMTOOL_TESTS), cwd=PROMTOOL_TESTS[0].parent)
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in PROMTOOL_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fired if t.get("exp_alerts") else silent).add(t["alertname"])
    alerts = {q.where.split(": ", 1)[1] for q in rule_queries()}
    assert alerts - fired == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"


def test_every_alert_has_summary_description_and_runbook_section() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
        for h in re.findall(r"^#+\s+(.*)$", docs, re.M)
    }
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                ann = rule.get("annotations", {})
                assert ann.get("summary"), rule["alert"]
                assert ann.get("description"), rule["alert"]
                assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), rule[
                    "alert"
                ]
                anchor = ann["runbook"].split("#", 1)[1]
                assert anchor == rule["alert"].lower(), rule["alert"]
                assert anchor in anchors, f"no section {rule['alert']} in docs/operations.md"


def test_dashboards_have_fixed_uid_and_variables() -> None:
    dashboards = load_dashboards()
    assert {d["uid"] for d in dashboards} == {"finetune-overview", "finetune-job"}
    for d in dashboards:
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("namespace", "job"):
            assert variables[name]["type"] == "query"
            assert variables[name]["datasource"]["uid"] == "${datasource}"
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), d["uid"]
        for p in panels(d):
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", p["title"]


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule (variables substituted as Grafana would)."""
    queries = dashboard_queries() + rule_queries()
    exprs = [substitute(q.expr, {"namespace": "team-a", "job": "bot"}) for q in queries]
    exprs += [label_values_as_promql(substitute(q.expr))[0] for q in variable_queries()]
    rules = {
        "groups": [
            {"name": "parse", "rules": [{"record": f"parse:expr{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "exprs.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = run("check", "rules", str(path))
    assert f"SUCCESS: {len(exprs)} rules found" in out


def test_expressions_use_only_metrics_that_exist() -> None:
    """Every series name a dashboard or rule selects is one the operator exposes (after exercising every
    function), one of the trainer's, or Prometheus' own `up`."""
    from finetune_operator.metrics import OperatorMetrics
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tests.unit.test_metrics import run_lifecycle

    met = OperatorMetrics()
    run_lifecycle(met)
    met.observe_reconcile(0.1, error=True)
    met.record_transition("team-a", "failing", "Running", "Failed", "OOMKilled")
    exposed = {
        s.name
        for f in text_string_to_metric_families(generate_latest(met.registry).decode())
        for s in f.samples
    }
    known = exposed | TRAINER_METRICS | {"up"}
    queries = dashboard_queries() + rule_queries()
    queries += [Query(q.where, label_values_as_promql(q.expr)[0]) for q in variable_queries()]
    for q in queries:
        unknown = metric_names(q.expr) - known
        assert not unknown, f"{q.where}: unknown series {sorted(unknown)} in {q.expr}"
