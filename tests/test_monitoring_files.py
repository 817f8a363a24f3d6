"""manifests/monitoring: the Grafana dashboard and the alerts are well formed, and ask only for metrics that
exist (the operator's own, read from its registry; the model servers'; the drift detector's, expected later).

Whether each query returns data from a real Prometheus is e2e/test_monitoring.py's; whether each alert
fires when it should, hack/test-alerts.sh's (promtool)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelloop.controllers.state_metrics import gauges
from modelloop.machinery import metrics

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "manifests" / "monitoring"
DASHBOARD = MONITORING / "dashboard.json"
ALERTS = MONITORING / "alerts.yaml"

# The model servers' metrics (runtimes/server/README.md, runtimes/seldon/README.md: each in its own
# environment, so not importable here).
MODEL_SERVER_METRICS = {
    "modelloop_server_requests_total",
    "modelloop_server_request_duration_seconds_bucket",
    "modelloop_server_request_duration_seconds_count",
    "modelloop_server_request_duration_seconds_sum",
    "modelloop_server_predictions_total",
    "modelloop_seldon_requests_total",
    "modelloop_seldon_errors_total",
    "modelloop_seldon_predictions_total",
}
# The drift detector's, which comes with DriftPolicy's drift detection (a later issue); the dashboard shows
# them already, and e2e/test_monitoring.py expects no data from them until then.
DRIFT_DETECTOR_METRICS = {
    "modelloop_drift_score",
    "modelloop_drift_p_value",
    "modelloop_drift_verdict",
    "modelloop_feedback_accuracy",
    "modelloop_estimated_performance",
    "modelloop_estimated_performance_lower",
    "modelloop_estimated_performance_upper",
    "modelloop_realised_performance",
}
SEVERITIES = {"critical", "warning", "info"}
METRIC_NAME = re.compile(r"\bmodelloop_[a-z0-9_]+\b|\bup(?=\{)")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)[^}]*\}")
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}


def operator_metrics() -> set[str]:
    """Every sample name the operator can serve: its registry's families, and those of the collectors its
    runtime registers while it runs (the work queues' depths, the object-state gauges)."""
    names: set[str] = set()
    depth = metrics.QueueDepth(lambda: [("TrainingRun", 0, 0)])
    families = [*metrics.REGISTRY.collect(), *depth.collect(), *gauges({}, datetime.now(UTC))]
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    """Every panel that shows data (rows only group them)."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def alert_rules() -> list[dict[str, Any]]:
    [rule] = list(yaml.safe_load_all(ALERTS.read_text()))
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


def test_the_operator_serves_the_metrics_its_alerts_and_dashboard_are_built_on() -> None:
    served = operator_metrics()
    assert {
        "modelloop_reconciles_total",
        "modelloop_reconcile_duration_seconds_bucket",
        "modelloop_queue_depth",
        "modelloop_retrainings_total",
        "modelloop_champion_version",
        "modelloop_rollout_oldest_step_seconds",
        "modelloop_training_run_oldest_pending_seconds",
        "modelloop_drift_policy_oldest_inconclusive_seconds",
    } <= served


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "modelloop" and board["title"]
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert [p["title"] for p in board["panels"] if p["type"] == "row"] == [
        "Operator",
        "Models",
        "Rollouts",
        "Drift",
        "Retrainings",
    ]


@pytest.mark.parametrize("panel", panels(), ids=lambda p: p["title"])
def test_every_panel_queries_prometheus_through_the_datasource_variable(panel: dict[str, Any]) -> None:
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert panel["targets"], "a panel without queries"
    assert panel.get("description"), "say what the panel shows"
    for target in panel["targets"]:
        assert target["datasource"] == panel["datasource"]
        assert target["expr"].strip()
    assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


@pytest.mark.parametrize("panel", panels(), ids=lambda p: p["title"])
def test_every_panel_asks_for_metrics_that_exist_and_variables_the_dashboard_defines(
    panel: dict[str, Any],
) -> None:
    known = operator_metrics() | MODEL_SERVER_METRICS | DRIFT_DETECTOR_METRICS | {"up"}
    defined = {v["name"] for v in dashboard()["templating"]["list"]} | GRAFANA_VARIABLES
    for target in panel["targets"]:
        used = metric_names(target["expr"])
        assert used, f"no metric found in {target['expr']!r}"
        assert used <= known, f"unknown metrics {sorted(used - known)} in {target['expr']!r}"
        variables = {a or b for a, b in VARIABLE.findall(target["expr"])}
        assert variables <= defined, f"undefined variables {sorted(variables - defined)}"


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    assert len({p["id"] for p in dashboard()["panels"]}) == len(dashboard()["panels"])


def test_the_alerts_are_one_prometheusrule_with_the_five_alerts() -> None:
    [rule] = list(yaml.safe_load_all(ALERTS.read_text()))
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert [r["alert"] for r in alert_rules()] == [
        "ModelloopOperatorDown",
        "ModelloopReconcileErrors",
        "ModelloopRolloutStuck",
        "ModelloopDriftPolicyInconclusive",
        "ModelloopTrainingRunStuckPending",
    ]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    for annotation in ("summary", "description", "runbook"):
        assert rule["annotations"].get(annotation, "").strip(), f"no {annotation}"
    assert rule.get("for"), "an alert fires only once its condition has held a while"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_asks_for_metrics_the_operator_serves(rule: dict[str, Any]) -> None:
    used = metric_names(rule["expr"])
    assert used, rule["expr"]
    assert used <= operator_metrics() | {"up"}, sorted(used - operator_metrics())


def test_every_alert_has_a_promtool_test_that_expects_it_to_fire() -> None:
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test") or ()
        if case.get("exp_alerts")
    }
    assert fired == {r["alert"] for r in alert_rules()}
