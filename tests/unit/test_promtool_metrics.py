"""`promtool check metrics` on the operator's real /metrics endpoint, after every metric function ran."""

from __future__ import annotations

import subprocess
import urllib.request

from finetune_operator.metrics import OperatorMetrics

from tests.promtool.queries import promtool
from tests.unit.test_metrics import run_lifecycle


def test_promtool_check_metrics_reports_no_problem() -> None:
    met = OperatorMetrics()
    run_lifecycle(met, ns="team-a", name="bot")
    run_lifecycle(met, ns="team-b", name="other")
    met.observe_reconcile(0.05)
    met.observe_reconcile(1.5, error=True)
    met.set_leader(True)
    met.record_transition("team-a", "failing", "Running", "Failed", "OOMKilled")
    met.forget_job("team-b", "other")
    server, _ = met.serve(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as resp:
            body = resp.read()
    finally:
        server.shutdown()
        server.server_close()
    assert b"finetune_job_train_loss" in body
    proc = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60)
    problems = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, f"promtool check metrics:\n{problems}"
    assert not problems.strip(), f"promtool check metrics:\n{problems}"
