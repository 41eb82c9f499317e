"""The alert rules and the Grafana dashboard shipped in docker/: valid, tested, and naming metrics that exist.

promtool (Debian's `prometheus` package; `make test` installs it through scripts/ops_tools.sh)
checks the rules and the Prometheus config and runs the rules' unit tests. Every PromQL query of
the dashboard and the rules is parsed, and each metric it selects must be a family the exporter
renders (read from its registry against the real Redis, broker and database) or a rule recorded
in the rules file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from notifier.ops import counters, exporter
from sandbox import devstack

PROMETHEUS = devstack.ROOT / "docker" / "prometheus"
RULES = PROMETHEUS / "notifier-rules.yml"
DASHBOARD = devstack.ROOT / "docker" / "grafana" / "dashboards" / "notifier.json"
# What Grafana substitutes before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
SCRAPE_SERIES = {"up"}  # written by Prometheus itself for every scrape target


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: `make test` installs it (scripts/ops_tools.sh)")
        pytest.skip("promtool is not installed: run `bash scripts/ops_tools.sh` (Debian package prometheus)")
    return path


def _run(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> str:
    result = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_rules_and_the_config(promtool):
    assert "SUCCESS" in _run(promtool, "check", "rules", RULES.name)
    assert "SUCCESS" in _run(promtool, "check", "config", "prometheus.yml")


def test_promtool_unit_tests_of_the_alerts_pass(promtool):
    assert "SUCCESS" in _run(promtool, "test", "rules", "notifier-rules.test.yml")


def test_every_alert_has_a_unit_test_and_a_severity():
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load((PROMETHEUS / "notifier-rules.test.yml").read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    # Absence is Prometheus' own bookkeeping, and the slow burn's healthy case is tested with the fast one.
    assert set(alerts) - tested <= {"NotifierExporterAbsent", "NotifierRetriesPilingUp", "NotifierLowLaneBacklog",
                                    "NotifierBridgeLag", "NotifierEmailBounceRate"}, set(alerts) - tested
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert rule["annotations"]["summary"], name


# ---------------------------------------------------------------------------- metric names


@pytest.fixture(scope="module")
def exposed(database) -> dict[str, set[str]]:
    """Each family the exporter renders, with its label names (from its samples, and as the counters declare them)."""
    families = {}
    for family in text_string_to_metric_families(exporter.render().decode()):
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        families[family.name] = labels
    for family in counters.FAMILIES:  # a family with no sample yet still has its labels
        families[family.name] |= set(family.labels)
    return families


def _series_names(name: str, kind_suffixes=("_bucket", "_count", "_sum", "_total", "_created")) -> set[str]:
    return {name + s for s in kind_suffixes} | {name}


def _selectors(expr: str) -> list[tuple[str, list[str]]]:
    """(metric name, label names matched) of every selector in a PromQL expression."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    found: list[tuple[str, list[str]]] = []

    def walk(node) -> None:
        if isinstance(node, promql_parser.MatrixSelector):
            node = node.vector_selector
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, [m.name for m in node.matchers.matchers]))
            return
        for attr in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (int, float, str)):
                walk(child)
        for child in getattr(node, "args", None) or []:
            walk(child)

    walk(promql_parser.parse(expr))
    return found


def _recorded() -> set[str]:
    return {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                queries.append((inner["title"], target["expr"]))
    return queries


def _assert_known(where: str, expr: str, exposed: dict[str, set[str]], recorded: set[str]) -> None:
    selectors = _selectors(expr)
    assert selectors, f"{where}: {expr!r} selects no metric"
    by_sample = {sample: family for family in exposed for sample in _series_names(family)}
    for name, labels in selectors:
        if name in recorded or name in SCRAPE_SERIES:
            continue
        assert name in by_sample, f"{where}: {name} is not a metric the exporter renders ({expr!r})"
        family = by_sample[name]
        known = exposed[family]
        if known:  # a family with samples: its label names are known too
            unknown = set(labels) - known - {"le", "__name__"}
            assert not unknown, f"{where}: {name} has no label {unknown} (it has {sorted(known)})"


def test_the_dashboard_queries_name_metrics_the_exporter_exposes(exposed):
    queries = _dashboard_queries()
    assert len(queries) >= 20
    recorded = _recorded()
    for title, expr in queries:
        _assert_known(f"panel {title!r}", expr, exposed, recorded)
    used = {name for _, expr in queries for name, _ in _selectors(expr)}
    # The SLO's histogram and the new counters are on the dashboard, not only in the exporter.
    for family in ("notifier_accepted_to_sent_seconds_bucket", "notifier_delivery_errors_total",
                   "notifier_webhook_reports_total", "notifier_events_accepted_total", "notifier_build_info",
                   "notifier_deliveries_suppressed_total", "notifier_deliveries_rate_limited_total",
                   "notifier_events_duplicate_total", "notifier_dead_letters_total"):
        assert family in used, f"{family} is on no panel"


def test_the_rules_name_metrics_the_exporter_exposes(exposed):
    recorded = _recorded()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            _assert_known(rule.get("alert") or rule["record"], rule["expr"], exposed, recorded)


def test_the_check_catches_a_metric_that_does_not_exist(exposed):
    with pytest.raises(AssertionError, match="notifier_no_such_thing_total is not a metric"):
        _assert_known("panel", "sum(rate(notifier_no_such_thing_total[5m]))", exposed, set())
    with pytest.raises(AssertionError, match="has no label"):
        _assert_known("panel", 'notifier_queue_messages{lane="high"}', exposed, set())


def test_the_dashboard_loads_from_the_provisioned_folder():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    provider = yaml.safe_load((devstack.ROOT / "docker" / "grafana" / "provisioning" / "dashboards" /
                               "notifier.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
