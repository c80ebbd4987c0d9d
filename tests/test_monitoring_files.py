"""The monitoring files: the alert rules (deploy/prometheus/alerts.yml) valid for Prometheus,
each firing in a unit test and silent in another (promtool, from Debian's prometheus package),
each with its runbook entry; Prometheus's configuration; the Grafana dashboard; every query of
them on metrics /metrics serves."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "celery-saas.json"
DATA_SOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
RUNBOOK = ROOT / "docs" / "operations.md"


def alerts() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def rule_tests() -> list[dict]:
    return yaml.safe_load(RULE_TESTS.read_text())["tests"]


def promtool(*arguments: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        why = "promtool comes with Debian's prometheus package: run `make setup`"
        if os.environ.get("CI"):
            pytest.fail(why)  # setup.sh ran there: a missing promtool is a broken setup
        pytest.skip(why)
    return subprocess.run(
        ["promtool", *arguments], cwd=RULES.parent, capture_output=True, text=True, timeout=60
    )


def test_the_rules_are_valid_for_prometheus():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_prometheus_configuration_is_valid_and_loads_the_rules():
    # Syntax only: its token file exists in the container alone (the compose file's secret).
    result = promtool("check", "config", "--syntax-only", PROMETHEUS_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"


def test_the_rules_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_a_test_and_stays_silent_in_another():
    for alert in alerts():
        name = alert["alert"]
        tests = [
            test
            for test in rule_tests()
            if any(case["alertname"] == name for case in test["alert_rule_test"])
        ]
        cases = [case for test in tests for case in test["alert_rule_test"]]
        assert any(case.get("exp_alerts") for case in cases), f"{name} never fires in a test"
        # Silent: a moment that expects nothing, or a series of the test that no expected
        # alert names (a burst, a young message, a steady count).
        silent = any(not case.get("exp_alerts") for case in cases) or any(
            len(test["input_series"]) > len(case.get("exp_alerts") or [])
            for test in tests
            for case in test["alert_rule_test"]
        )
        assert silent, f"{name} is never shown silent"


def test_every_alert_has_its_runbook_entry():
    headings = set(re.findall(r"^### (\w+)$", RUNBOOK.read_text(), flags=re.MULTILINE))
    for alert in alerts():
        name = alert["alert"]
        assert alert["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
        assert name in headings, f"no runbook entry '### {name}' in docs/operations.md"


def dashboard_queries() -> dict[str, str]:
    return {
        f"{panel['title']} ({target['refId']})": target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    }


@pytest.mark.django_db
def test_every_alert_and_dashboard_query_reads_metrics_that_metrics_serves(settings):
    settings.METRICS_BEARER_TOKEN = ""
    families = text_string_to_metric_families(Client().get("/metrics").content.decode())
    # A family with no sample yet (no task has run) is still declared: a counter's under its
    # name without the _total its samples carry, a histogram's without _bucket, _count, _sum.
    served = {family.name for family in families}
    queries = {alert["alert"]: alert["expr"] for alert in alerts()} | dashboard_queries()
    for name, query in queries.items():
        used = set(re.findall(r"\b(?:celery|jobs)_[a-z_]+\b", query))
        assert used, name
        missing = {
            metric
            for metric in used
            if metric not in served
            and re.sub(r"_(total|bucket|count|sum)$", "", metric) not in served
        }
        assert not missing, f"{name} reads {missing}, which /metrics does not serve"


def test_the_dashboard_is_grafana_json_on_the_provisioned_data_source():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    source = yaml.safe_load(DATA_SOURCE.read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
