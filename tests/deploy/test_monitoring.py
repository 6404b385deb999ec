"""Alert rules pass promtool's own tests; the dashboard only queries metrics we export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from gateway.observability.telemetry import Telemetry
from tests.conftest import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return promtool


def test_rules_are_valid():
    result = subprocess.run(
        [_promtool(), "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_tests_pass():
    result = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _exported() -> set[str]:
    names = set()
    for metric in Telemetry().registry.metrics:
        names.add(metric.name)
        if metric.kind == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
    return names


def test_rules_and_dashboard_query_only_exported_metrics():
    exported = _exported()
    texts = [(PROMETHEUS / "alerts.yml").read_text()]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
    texts += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for text in texts for m in re.findall(r"\b(gateway_[a-z_]+)\b", text)}
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("latency", "throughput", "error", "batch", "queue", "drift"):
        assert topic in titles
