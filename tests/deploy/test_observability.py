"""The Prometheus rules and the Grafana dashboard that compose and the Helm chart ship.

The rules pass ``promtool check rules`` and their unit tests (``alerts.test.yml``), which
cover every alert both ways; every metric, label and enumerable label value the rules
and the dashboard name is one paystream really has: names and labels from a real
worker's /metrics, labels and values of counters that have not fired yet from the code.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
import subprocess
import time
import typing
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from paystream.streams.outcomes import RejectReason
from tests.deploy.tools import ROOT, run, tool
from tests.fixtures.pipeline import Deployment

FILES = ROOT / "helm" / "paystream" / "files"
ALERTS = FILES / "prometheus" / "alerts.yml"
ALERT_TESTS = FILES / "prometheus" / "alerts.test.yml"
DASHBOARD = FILES / "grafana" / "paystream.json"

# Labels the scrape adds (compose: job, instance; the Helm ServiceMonitor: namespace too).
TARGET_LABELS = frozenset({"job", "instance", "namespace"})
# Prometheus makes `up` itself: never on a worker's /metrics.
SYNTHETIC = frozenset({"up"})
# What the Grafana variables stand for, so that the dashboard's exprs parse as PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$tenant": "acme",
}

# ---- reading the files --------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def exprs() -> dict[str, str]:
    """Every PromQL expression shipped, by where it is (for the failure messages)."""
    found = {f"alert {rule['alert']}": str(rule["expr"]) for rule in alert_rules()}
    found.update({f"dashboard expr {i}": e for i, e in enumerate(dashboard_exprs())})
    return found


def promql(expr: str) -> str:
    """``expr`` with the Grafana variables replaced by what they stand for."""
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    return expr


# ---- a small PromQL reader: enough to find metric names, label names and values ---------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"(?P<name>[a-zA-Z_:][\w:]*)?\s*\{(?P<matchers>[^{}]*)\}")
_MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\((?P<labels>[^)]*)\)"
)
# Not a function's name (followed by "("), nor part of a number or a duration.
_IDENTIFIER = re.compile(r"(?<![\w:.$])[a-zA-Z_:][\w:]*+(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "inf", "nan"})


@dataclass
class Matcher:
    metric: str | None
    label: str
    op: str
    value: str


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (functions, keywords, labels and durations aside)."""
    bare = _STRING.sub('""', expr)
    bare = re.sub(r"\{[^{}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = _GROUPING.sub(" ", bare)
    return {name for name in _IDENTIFIER.findall(bare) if name.lower() not in _KEYWORDS}


def matchers(expr: str) -> list[Matcher]:
    return [
        Matcher(sel["name"], m["label"], m["op"], m["value"])
        for sel in _SELECTOR.finditer(expr)
        for m in _MATCHER.finditer(sel["matchers"])
    ]


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for clause in _GROUPING.finditer(_STRING.sub('""', expr))
        for label in clause["labels"].split(",")
        if label.strip()
    }


def test_promql_reader_finds_names_labels_and_values() -> None:
    # The checks below are only as good as this reader: pin what it sees.
    expr = (
        'sum by (namespace, tenant) (increase(paystream_parked_total{tenant=~"$tenant"}[5m]))'
        ' / ignoring (le) histogram_quantile(0.9, rate(x_bucket{le!="1"}[$__rate_interval]))'
        ' or up{job="paystream"} unless time() - y offset 15m'
    )
    assert metric_names(expr) == {"paystream_parked_total", "x_bucket", "up", "y"}
    assert grouping_labels(expr) == {"namespace", "tenant", "le"}
    assert [(m.metric, m.label, m.op, m.value) for m in matchers(expr)] == [
        ("paystream_parked_total", "tenant", "=~", "$tenant"),
        ("x_bucket", "le", "!=", "1"),
        ("up", "job", "=", "paystream"),
    ]


# ---- promtool -----------------------------------------------------------------------------


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # A missing promtool fails (never skips), saying how to install it.
    return run(tool("promtool"), *args, cwd=cwd)


def test_alert_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": promql(expr)}
                    for i, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


# Per-tenant counters of events a tenant may see once: their panels count per interval
# with a new series counted whole (see the test below).
RARE_EVENT_METRICS = (
    "paystream_parked_total",
    "paystream_repaired_entities_total",
    "paystream_command_rejections_total",
    "paystream_limited_commands_total",
    "paystream_ingress_requests_total",
)


def test_rare_event_panels_show_a_tenants_first_event(tmp_path: Path) -> None:
    """prometheus_client creates a labelled series at its first increment: its first
    sample is already 1, and rate() or increase() alone never showed a tenant's first
    park, repair, rejection or refusal at the door. Evaluated by promtool over the
    panels' own exprs."""
    panels = {
        metric: promql(expr).replace('"$namespace"', '".*"').replace('"acme"', '".*"')
        for expr in dashboard_exprs()
        for metric in RARE_EVENT_METRICS
        if f"increase({metric}" in expr
    }
    assert set(panels) == set(RARE_EVENT_METRICS)
    parked = 'paystream_parked_total{job="paystream", instance="w1:6066", namespace="payments"'
    repaired = (
        'paystream_repaired_entities_total{job="paystream", instance="w1:6066", '
        'namespace="payments", entity_type="payment"'
    )
    # Each other panel: acme's first event at 10m, expected as {labels: 1} at 12m.
    firsts = {
        "paystream_command_rejections_total": (
            'reason="not_found"',
            '{tenant="acme", reason="not_found"}',
        ),
        "paystream_limited_commands_total": (
            'limit="commands_per_second"',
            '{tenant="acme", limit="commands_per_second"}',
        ),
        "paystream_ingress_requests_total": ('result="rate_limited"', '{tenant="acme"}'),
    }
    target = 'job="paystream", instance="w1:6066", namespace="payments", tenant="acme"'
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # acme's first park at 10m (then none); globex parked long before,
                    # twice more at 20m.
                    {"series": parked + ', tenant="acme"}', "values": "_x9 1x30"},
                    {"series": parked + ', tenant="globex"}', "values": "3x19 5x20"},
                    # initech parked long ago, then its worker went unscraped for 10m: no
                    # lifetime total counted as new when scraped again (review finding).
                    {"series": parked + ', tenant="initech"}', "values": "5000x19 _x10 5000x10"},
                    {"series": repaired + ', tenant="acme"}', "values": "_x9 1x30"},
                    *(
                        {"series": f"{metric}{{{target}, {label}}}", "values": "_x9 1x30"}
                        for metric, (label, _) in firsts.items()
                    ),
                ],
                "promql_expr_test": [
                    {
                        "expr": panels["paystream_parked_total"],
                        "eval_time": eval_time,
                        "exp_samples": samples,
                    }
                    for eval_time, samples in (
                        (
                            "8m",
                            [
                                {"labels": '{tenant="globex"}', "value": 0},
                                {"labels": '{tenant="initech"}', "value": 0},
                            ],
                        ),
                        (
                            "12m",
                            [
                                {"labels": '{tenant="acme"}', "value": 1},
                                {"labels": '{tenant="globex"}', "value": 0},
                                {"labels": '{tenant="initech"}', "value": 0},
                            ],
                        ),
                        (
                            "22m",
                            [
                                {"labels": '{tenant="acme"}', "value": 0},
                                {"labels": '{tenant="globex"}', "value": 2},
                                {"labels": '{tenant="initech"}', "value": 0},
                            ],
                        ),
                        (
                            "32m",
                            [
                                {"labels": '{tenant="acme"}', "value": 0},
                                {"labels": '{tenant="globex"}', "value": 0},
                                {"labels": '{tenant="initech"}', "value": 0},
                            ],
                        ),
                    )
                ]
                + [
                    {
                        "expr": panels["paystream_repaired_entities_total"],
                        "eval_time": "12m",
                        "exp_samples": [
                            {"labels": '{tenant="acme", entity_type="payment"}', "value": 1}
                        ],
                    }
                ]
                + [
                    {
                        "expr": panels[metric],
                        "eval_time": "12m",
                        "exp_samples": [{"labels": labels, "value": 1}],
                    }
                    for metric, (_, labels) in firsts.items()
                ],
            }
        ],
    }
    path = tmp_path / "panels.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool("test", "rules", path.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- the rules and their tests ------------------------------------------------------------


def test_every_alert_has_severity_summary_and_description() -> None:
    rules = alert_rules()
    assert rules
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        assert rule.get("labels", {}).get("severity") in {"page", "ticket"}, rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), rule["alert"]
        assert annotations.get("description", "").strip(), rule["alert"]
    assert yaml.safe_load(ALERTS.read_text())["groups"][0]["name"] == "paystream"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            (firing if expected else quiet)[check["alertname"]] += 1
            for alert in expected:
                # Templated annotations are checked as rendered, not left out.
                assert set(alert.get("exp_annotations", {})) == {"summary", "description"}
    for rule in alert_rules():
        assert firing[rule["alert"]], f"{rule['alert']}: no test where it fires"
        assert quiet[rule["alert"]], f"{rule['alert']}: no test where it stays quiet"


# ---- the dashboard ------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "paystream"
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["tenant"]["definition"] == (
        'label_values(paystream_commands_total{namespace=~"$namespace"}, tenant)'
    )
    assert variables["tenant"]["datasource"]["uid"] == "${datasource}"
    # A Prometheus shared by several fleets: nothing summed across namespaces (review).
    assert variables["namespace"]["definition"] == 'label_values(up{job="paystream"}, namespace)'
    assert variables["namespace"]["allValue"] == ".*"

    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), sorted(ids)
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos), panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), panel["title"]
            for selector in re.findall(
                r"\b(?:paystream_\w+|up)\{[^}]*\}|\bpaystream_\w+\b(?!\{)", target["expr"]
            ):
                assert 'namespace=~"$namespace"' in selector, (panel["title"], selector)
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


# ---- what a real worker exposes -----------------------------------------------------------


@dataclass
class Exposition:
    """A worker's /metrics: every name it can have samples under, and their labels."""

    names: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    values: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    sampled: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, text: str) -> Exposition:
        out = cls()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                # A labelled metric is declared (HELP, TYPE) before its first sample.
                _, _, name, kind = line.split(" ", 3)
                suffixes = {"histogram": ("_bucket", "_count", "_sum")}.get(kind, ("",))
                out.names |= {name + suffix for suffix in suffixes}
            elif line and not line.startswith("#"):
                match = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s", line)
                assert match, line
                name = match[1]
                out.names.add(name)
                out.sampled.add(name)
                for label, value in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""):
                    out.labels[name].add(label)
                    out.values[name, label].add(value)
        return out


@dataclass
class Declared:
    """The label names (and known values) of paystream's metrics, from the code."""

    labels: dict[str, set[str]]
    values: dict[tuple[str, str], set[str]]


@functools.cache
def declared() -> Declared:
    from prometheus_client.metrics import MetricWrapperBase

    from paystream import gc_pacing, metrics
    from paystream.agents import insights, pipeline
    from paystream.app import settings
    from paystream.dlq import parked_topics
    from paystream.gateways.errors import ErrorCode
    from paystream.tenancy.policy import CALL_CANCELED, CALL_ERROR

    CALL_OTHER = {CALL_ERROR, CALL_CANCELED}
    from paystream.ledger import sink

    labels: dict[str, set[str]] = {}
    for module in (metrics, sink, insights, gc_pacing):
        for metric in vars(module).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            # (prometheus_client keeps these private; the exposition names follow from them.)
            name, kind = metric._name, str(metric._type)
            names = {
                "counter": [f"{name}_total"],
                "histogram": [f"{name}_bucket", f"{name}_count", f"{name}_sum"],
            }.get(kind, [name])
            for exposed in names:
                labels[exposed] = set(metric._labelnames)
                if exposed.endswith("_bucket"):
                    labels[exposed].add("le")
    failure_kinds = {
        value for key, value in vars(sink.FailureKind).items() if not key.startswith("_")
    }
    values = {
        ("paystream_gateway_call_seconds_count", "result"): {"ok", *ErrorCode, *CALL_OTHER},
        ("paystream_gateway_call_seconds_bucket", "result"): {"ok", *ErrorCode, *CALL_OTHER},
        ("paystream_ledger_write_failures_total", "kind"): failure_kinds,
        # The reasons the command agent dead-letters with, and why the insights skip.
        ("paystream_dead_letters_total", "reason"): set(
            re.findall(r'_dead_letter\(\s*rec,\s*"(\w+)"', inspect.getsource(pipeline))
        ),
        ("paystream_insights_skipped_total", "why"): set(
            re.findall(r'SKIPPED\.labels\("(\w+)"\)', inspect.getsource(insights))
        ),
        # The jobs a scrape gives: compose's (the chart's ServiceMonitors give the same;
        # tests/deploy/test_helm.py).
        ("up", "job"): scrape_jobs(),
        ("process_start_time_seconds", "job"): scrape_jobs(),
        # (typed: mypy holds the code to these)
        ("paystream_webhook_dispute_reads_failed_total", "why"): set(
            typing.get_args(metrics.DisputeUnreadWhy)
        ),
        ("paystream_disputes_unrecorded_total", "why"): set(
            typing.get_args(metrics.DisputeUnrecordedWhy)
        ),
        ("paystream_parked_waiting", "topic"): set(parked_topics(settings)),
        ("paystream_parked_oldest_seconds", "topic"): set(parked_topics(settings)),
    }
    assert all(values.values()), values  # the source patterns above still find them
    return Declared(labels, {key: {str(v) for v in vs} for key, vs in values.items()})


def scrape_jobs() -> set[str]:
    config = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    return {job["job_name"] for job in config["scrape_configs"]}


def scrape(worker: Any) -> str:
    with worker.open("/metrics", timeout=5) as resp:
        return str(resp.read().decode())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def exposition(deployment_factory: Any) -> AsyncIterator[Exposition]:
    """A real worker's /metrics once it owns partitions, has run a few commands (one
    answered by the provider, one declined, one rejected) and dead-lettered garbage."""
    from paystream.tenancy.models import Tenant

    dep: Deployment = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="acme"))
    with dep.worker() as worker:
        await asyncio.to_thread(worker.wait_ready, ["acme"], partitions=dep.settings.partitions)
        await dep.produce(dep.settings.commands_topic, (b"acme", b"\x00 not an event", None))
        async with dep.client() as client:
            await asyncio.gather(
                *(
                    client.command(
                        "payment.create",
                        tenant,
                        {"amount": 1000, "currency": "USD", "payment_method_token": token},
                    )
                    for tenant, token in (
                        ("acme", "pm_card_visa"),
                        ("acme", "pm_card_chargeDeclined"),
                        ("nobody", "pm_card_visa"),
                    )
                )
            )
        # The agent commits its offsets every second: wait for the commit time to show.
        deadline = time.monotonic() + 15
        while True:
            parsed = Exposition.parse(await asyncio.to_thread(scrape, worker))
            if "paystream_agent_committed_timestamp_seconds" in parsed.sampled:
                break
            assert time.monotonic() < deadline, "no commit time on /metrics within 15 s"
            await asyncio.sleep(0.2)  # polling interval
        # The parked backlog is measured a few seconds after the worker starts.
        deadline = time.monotonic() + 20
        while "paystream_parked_waiting" not in parsed.sampled:
            assert time.monotonic() < deadline, "no parked backlog on /metrics within 20 s"
            await asyncio.sleep(0.5)  # polling interval
            parsed = Exposition.parse(await asyncio.to_thread(scrape, worker))
        yield parsed


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_every_metric_named_is_exposed_by_a_worker(exposition: Exposition) -> None:
    missing = {
        where: sorted(metric_names(expr) - exposition.names - SYNTHETIC)
        for where, expr in exprs().items()
    }
    assert not {k: v for k, v in missing.items() if v}, "not on a worker's /metrics"
    # The progress collectors, the breakers and the labelled counters alerts lean on
    # really produce samples, with the label values the alerts use.
    for name in (
        "paystream_consumer_lag_records",
        "paystream_agent_committed_timestamp_seconds",
        "paystream_consumer_fetch_age_seconds",
        "paystream_circuit_open",
        "paystream_dead_letters_total",
        "paystream_parked_oldest_seconds",
        "paystream_command_latency_seconds_bucket",
        "process_start_time_seconds",
    ):
        assert name in exposition.sampled, name
    assert "commands" in exposition.values["paystream_consumer_lag_records", "agent"]
    assert "command.rejected" in exposition.values["paystream_commands_total", "outcome"]
    reasons = exposition.values["paystream_command_rejections_total", "reason"]
    assert "unknown_tenant" in reasons and reasons <= {r.value for r in RejectReason}
    assert "ok" in exposition.values["paystream_gateway_call_seconds_count", "result"]


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_every_label_named_exists_with_the_values_used(exposition: Exposition) -> None:
    code = declared()

    def labels_of(name: str) -> set[str]:
        return exposition.labels.get(name, set()) | code.labels.get(name, set())

    def known_values(name: str, label: str) -> set[str] | None:
        if (name, label) in code.values:
            return code.values[name, label]
        if label == "outcome":  # outcome types: the worker above answered a rejection
            return exposition.values[name, label]
        return None

    problems: list[str] = []
    for where, expr in exprs().items():
        names = metric_names(expr)
        usable = set(TARGET_LABELS).union(*(labels_of(n) for n in names))
        problems += [
            f"{where}: grouping label {label!r}" for label in sorted(grouping_labels(expr) - usable)
        ]
        for m in matchers(expr):
            assert m.metric, f"{where}: a selector without a metric name"
            if m.label not in labels_of(m.metric) | TARGET_LABELS:
                problems.append(f"{where}: {m.metric} has no label {m.label!r}")
                continue
            known = known_values(m.metric, m.label)
            if known is None or "$" in m.value:
                continue
            used = set(m.value.split("|")) if m.op in ("=~", "!~") else {m.value}
            problems += [
                f"{where}: {m.metric}{{{m.label}}} is never {value!r}"
                for value in sorted(used - known)
            ]
    assert not problems, "\n".join(problems)


def test_the_name_check_catches_a_typo() -> None:
    # The check above, on a made-up exposition: a misspelt name or label is reported.
    worker = Exposition.parse(
        "# TYPE paystream_parked_total counter\n"
        "# TYPE paystream_batch_seconds histogram\n"
        'paystream_batch_seconds_bucket{stage="process",le="1"} 1.0\n'
    )
    assert metric_names("increase(paystream_parked_total[5m])") <= worker.names
    assert "paystream_batch_seconds_count" in worker.names
    assert metric_names("increase(paystream_parkd_total[5m])") - worker.names
    assert worker.labels["paystream_batch_seconds_bucket"] == {"stage", "le"}
