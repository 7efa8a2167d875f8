"""The operator's files under deploy/ and docs/operations.md name metrics that exist, and every
PromQL expression in them parses (promtool checks the rule file too where it is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace

import promql_parser
import pytest
import yaml
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from leukoscreen import metrics
from leukoscreen.config import load_settings
from tests.conftest import REPO
from tests.test_prometheus_metrics import SCRAPER_TOKEN
from worker.celery_app import QUEUES

RULES = REPO / "deploy" / "prometheus" / "leukoscreen-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "leukoscreen-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "leukoscreen-dashboard.json"
KEDA = REPO / "deploy" / "keda" / "scaledobject.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
METRIC = re.compile(r"\bleukoscreen_[a-z_]+\b")
# Grafana's variables, as Grafana substitutes them before Prometheus sees the query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "1m"}


def _process_series() -> set[str]:
    """Series names of the counters and histograms in leukoscreen/metrics.py."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(value._name + "_total")
        elif isinstance(value, Histogram):
            names |= {value._name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:  # type: ignore[no-untyped-def]
    """Every series name /metrics can carry: the SQL gauges (scraped) and the process ones."""
    from db import migrate

    var = tmp_path_factory.mktemp("ops") / "var"
    settings = replace(
        load_settings(),
        var_dir=var,
        database_url=f"sqlite:///{var / 'ops.db'}",
        broker_url="filesystem://",
        storage_dir=var / "images",
        broker_dir=var / "broker",
        metrics_token=SCRAPER_TOKEN,
    )
    migrate.upgrade(settings.database_url)
    app = create_app(settings)
    text = (
        app.test_client()
        .get("/metrics", headers={"Authorization": f"Bearer {SCRAPER_TOKEN}"})
        .get_data(as_text=True)
    )
    gauges = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("leu")}
    assert "leukoscreen_images" in gauges
    return gauges | _process_series()


def _check_expression(expr: str, exported: set[str], where: str) -> None:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    try:
        promql_parser.parse(expr)
    except ValueError as exc:
        pytest.fail(f"{where}: {exc}\n{expr}")
    unknown = set(METRIC.findall(expr)) - exported
    assert not unknown, f"{where} names metrics LeukoScreen does not export: {unknown}"


def test_every_alert_rule_parses_and_names_exported_metrics(exported):
    rules = [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]
    assert len(rules) >= 8
    for rule in rules:
        assert rule["alert"].startswith("LeukoScreen"), rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        _check_expression(rule["expr"], exported | {"up"}, rule["alert"])
    alerts = {r["alert"] for r in rules}
    assert {"LeukoScreenQueueUnserved", "LeukoScreenQueuedWorkOld"} <= alerts


def test_promtool_accepts_the_rules_and_they_fire_on_their_unit_tests():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package); parsed above")
    for command in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        done = subprocess.run([promtool, *command], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_grafana_dashboard_queries_exported_metrics(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 8
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            _check_expression(target["expr"], exported, panel["title"])


def test_the_keda_example_scales_on_a_real_queue_and_metric(exported):
    scaled = yaml.safe_load(KEDA.read_text())
    assert scaled["kind"] == "ScaledObject"
    by_type = {t["type"]: t["metadata"] for t in scaled["spec"]["triggers"]}
    _check_expression(by_type["prometheus"]["query"], exported, "KEDA prometheus trigger")
    assert by_type["redis"]["listName"] in QUEUES


def test_the_operations_guide_lists_exactly_the_exported_metrics(exported):
    guide = OPERATIONS.read_text()
    table = set(re.findall(r"^\| `(leukoscreen_[a-z_]+)`", guide, flags=re.MULTILINE))
    # The table names a histogram or counter once, by its family name.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported}
    assert table == families
