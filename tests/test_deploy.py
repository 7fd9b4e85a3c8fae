"""What operators load: the Prometheus rules (`promtool check rules` and the alert unit tests
of `promtool test rules`) and the Grafana dashboard; every expression in either names only
metrics the service exposes, read from app/core/metrics.py's registry.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.metrics import Metrics
from app.schemas.serving import Interval, OnlineMetricsOut, VersionOnlineMetrics
from app.services.operations import OnlineGauges

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "driftrec-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "driftrec-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "driftrec-dashboard.json"

# PromQL's functions, aggregations and keywords: every other identifier is a metric name.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "rate", "irate", "increase", "delta", "idelta", "histogram_quantile", "absent",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "stddev_over_time",
    "count_over_time", "clamp_min", "clamp_max", "abs", "vector", "scalar", "time",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset",
}
# Series Prometheus makes itself, not the service.
PROMETHEUS_SERIES = {"up"}


def exposed_names() -> set[str]:
    """Every series name the service's registry exposes (counters with `_total`, histograms
    with `_bucket`, `_sum` and `_count`), labelled or not, observed or not."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric (and recorded-series) names an expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, strings
    text = re.sub(r"\{[^}]*\}", "", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    words = re.findall(r"(?<![\w:$.])[A-Za-z_:][\w:]*", text)
    return {word for word in words if word not in PROMQL_WORDS}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def test_the_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make promtool` installs Debian's prometheus package")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        run = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr


def test_the_rules_alert_on_what_operators_need() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts >= {"DriftRecDown", "DriftRecUnready", "DriftRecHigh5xxRatio",
                      "DriftRecHighP99Latency", "DriftRecModelReloadFailing",
                      "DriftRecImpressionsDropped", "DriftRecDriftWave",
                      "DriftRecChallengerBelowChampion", "DriftRecWebhookFailing"}
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_rule_expression_names_existing_metrics() -> None:
    exposed = exposed_names()
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    for rule in _rules():
        names = metric_names(rule["expr"])
        assert names, rule["expr"]
        unknown = names - exposed - recorded - PROMETHEUS_SERIES
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)}"


def test_every_dashboard_expression_names_existing_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_names()
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    assert len(exprs) >= 20
    read: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        unknown = names - exposed - recorded - PROMETHEUS_SERIES
        assert not unknown, f"{expr}: {sorted(unknown)}"
        read |= names
    # the dashboard shows every driftrec metric the service exposes (histograms by any series)
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in read}
    missing = {name for name in exposed if name.startswith("driftrec_")
               and name not in read and re.sub(r"_(bucket|sum|count)$", "", name) not in shown}
    assert not missing, sorted(missing)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_a_metric_name_the_service_lacks_is_caught() -> None:
    assert metric_names('sum by (route) (rate(driftrec_nope_total{route="/x"}[5m])) > 1e-9') \
        == {"driftrec_nope_total"}


class _Runtime:
    def __init__(self, challenger: str | None) -> None:
        self.metrics = Metrics()
        self.challenger = challenger
        self.asked: list[datetime | None] = []

    def challenger_state(self) -> str | None:
        return self.challenger

    def online_metrics(self, *, since: datetime | None, until: datetime | None, k: int,
                       bucket: str) -> OnlineMetricsOut:
        self.asked.append(since)

        def version(name: str, role: Any, rate: float, low: float, high: float
                    ) -> VersionOnlineMetrics:
            return VersionOnlineMetrics(
                model_version=name, role=role, impressions=400, pending=3, hits=int(rate * 400),
                hit_rate=rate, hit_rate_ci=Interval(low=low, high=high), mrr=None, mrr_ci=None,
                series=[])

        return OnlineMetricsOut(
            since=since, until=until, k=k, bucket="day", event_window=5,
            time_window_seconds=86_400, confidence=0.95,
            versions=[version("1", "champion", 0.3, 0.26, 0.35),
                      version("2", "challenger", 0.2, 0.16, 0.24),
                      version("0", None, 0.9, 0.8, 0.95)])


def test_online_gauges_hold_each_roles_hit_rate_and_interval() -> None:
    runtime = _Runtime("serving v2")
    gauges = OnlineGauges(runtime, 300, 3600, 10)  # type: ignore[arg-type]
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    gauges.refresh(now)
    assert runtime.asked == [datetime(2024, 5, 1, 11, tzinfo=UTC)]
    value = runtime.metrics.registry.get_sample_value
    assert value("driftrec_online_hit_rate", {"role": "challenger"}) == 0.2
    assert value("driftrec_online_hit_rate_low", {"role": "champion"}) == 0.26
    assert value("driftrec_online_hit_rate_high", {"role": "champion"}) == 0.35
    assert value("driftrec_online_impressions", {"role": "challenger"}) == 400
    # a version served as neither has no series
    assert {s.labels["role"] for f in runtime.metrics.registry.collect()
            if f.name == "driftrec_online_hit_rate" for s in f.samples} == {"champion",
                                                                          "challenger"}

    idle = _Runtime(None)  # no challenger: nothing to compare, nothing read
    OnlineGauges(idle, 300, 3600, 10).refresh(now)  # type: ignore[arg-type]
    assert idle.asked == []
