"""The Grafana dashboard (configs/grafana/magistral-router.json) against the metrics our code exports.

No Ray, no network: the valid series names and labels come from router.telemetry.metrics, so renaming
a metric or a tag there (or a typo in the dashboard) fails here rather than as an empty panel.
"""

import json
import re
from pathlib import Path

import pytest

from common.telemetry.replica_metrics import REPLICA_GAUGES
from router.telemetry.metrics import METRICS

DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana" / "magistral-router.json"

RAY_LABELS = {"application", "deployment", "replica"}  # added by Ray / Serve to every series we export
METRIC_NAME = re.compile(r"\bray_magistral_[A-Za-z0-9_]*")
SELECTOR = re.compile(r"\b(ray_magistral_[A-Za-z0-9_]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
# The filters each selector must carry when its metric has the label.
FILTERS = {"application": "$application", "tenant": "$tenant", "pool": "$pool"}


def exported_series() -> dict[str, set[str]]:
    """Every series name our code makes appear on Ray's metrics endpoint -> the labels it carries."""
    series = {}
    for kind, name, tags, _ in METRICS.values():
        labels = set(tags) | RAY_LABELS
        if kind == "counter":
            series[f"ray_{name}_total"] = labels
        elif kind == "histogram":
            series[f"ray_{name}_bucket"] = labels | {"le"}
            series[f"ray_{name}_sum"] = labels
            series[f"ray_{name}_count"] = labels
        elif kind == "gauge":
            series[f"ray_{name}"] = labels
        else:
            raise AssertionError(f"unknown metric kind {kind!r} for {name}")
    for name, _ in REPLICA_GAUGES.values():
        series[f"ray_{name}"] = {"pool", "accelerator"} | RAY_LABELS
    return series


SERIES = exported_series()


def expr_problems(expr: str) -> list[str]:
    """What is wrong with one PromQL expression: unknown metric names, unknown labels, missing filters."""
    problems = []
    names = set(METRIC_NAME.findall(expr))
    if not names:
        problems.append("references no ray_magistral_* metric")
    for name in sorted(names - SERIES.keys()):
        problems.append(f"unknown metric {name}")
    known = names & SERIES.keys()
    for name, body in SELECTOR.findall(expr):
        if name not in SERIES:
            continue
        matchers = {label: (op, value) for label, op, value in MATCHER.findall(body)}
        for label in sorted(matchers.keys() - SERIES[name]):
            problems.append(f"{name} has no label {label!r}")
        for label, variable in FILTERS.items():
            if label in SERIES[name] and matchers.get(label) != ("=~", variable):
                problems.append(f'{name} lacks {label}=~"{variable}"')
    if known:  # a grouping label must exist on every metric of the expression (ratios use one metric)
        shared = set.intersection(*(SERIES[n] for n in known))
        for clause in GROUPING.findall(expr):
            for label in (x.strip() for x in clause.split(",")):
                if label and label not in shared:
                    problems.append(f"grouping label {label!r} not on {sorted(known)}")
    return problems


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))  # a collapsed row keeps its panels inside
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())  # fails the tests on invalid JSON


@pytest.fixture(scope="module")
def panels(dashboard) -> list[dict]:
    return all_panels(dashboard["panels"])


@pytest.fixture(scope="module")
def query_panels(panels) -> list[dict]:
    return [p for p in panels if p["type"] != "row"]


def test_dashboard_header_and_variables(dashboard):
    assert dashboard["schemaVersion"] == 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "label_values(ray_magistral_requests_total, application)" in variables["application"]["definition"]
    for name in ("tenant", "pool"):
        assert variables[name]["multi"] and variables[name]["includeAll"], name
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}", v["name"]
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            names = set(METRIC_NAME.findall(query))
            assert names and names <= SERIES.keys(), (v["name"], query)
            label = re.search(r",\s*([A-Za-z_]\w*)\s*\)\s*$", query).group(1)
            assert all(label in SERIES[n] for n in names), (v["name"], label)


def test_panel_ids_are_unique(panels):
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_grid_positions_fit_and_do_not_overlap(panels):
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a!r} overlaps {b!r}"


def test_every_panel_has_a_description_and_uses_the_datasource_variable(query_panels):
    assert query_panels
    for p in query_panels:
        assert p.get("description", "").strip(), f"{p['title']} has no description"
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], f"{p['title']} has no query"
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", (p["title"], t["refId"])


def test_every_query_uses_exported_metrics_labels_and_filters(query_panels):
    problems = {}
    for p in query_panels:
        for t in p["targets"]:
            found = expr_problems(t["expr"])
            if found:
                problems[f"{p['title']} [{t['refId']}]"] = found
    assert not problems, json.dumps(problems, indent=2)


def test_the_dashboard_covers_every_exported_metric(query_panels):
    used = {n for p in query_panels for t in p["targets"] for n in METRIC_NAME.findall(t["expr"])}
    families = {n.removesuffix("_total").removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                for n in used}
    wanted = {f"ray_{name}" for _, name, _, _ in METRICS.values()} | {f"ray_{n}" for n, _ in REPLICA_GAUGES.values()}
    assert wanted <= families, sorted(wanted - families)


@pytest.mark.parametrize("expr, problem", [
    ('sum(rate(ray_magistral_request_total{application=~"$application", tenant=~"$tenant", pool=~"$pool"}[5m]))',
     "unknown metric ray_magistral_request_total"),
    ('sum(ray_magistral_replica_kv_cache_usage{application=~"$application", pool=~"$pool"})',
     None),
    ('sum by (tenant) (ray_magistral_replica_kv_cache_usage{application=~"$application", pool=~"$pool"})',
     "grouping label 'tenant'"),
    ('sum(rate(ray_magistral_routing_decisions_total{application=~"$application", pool=~"$pool", tenant="a"}[5m]))',
     "has no label 'tenant'"),
    ('sum(rate(ray_magistral_tokens_total{application=~"$application", pool=~"$pool"}[5m]))',
     'lacks tenant=~"$tenant"'),
    (('histogram_quantile(0.5, sum by (le) (rate(ray_magistral_request_latency_seconds_count'
      '{application=~"$application", pool=~"$pool"}[5m])))'), "grouping label 'le'"),
])
def test_the_checker_itself(expr, problem):
    found = expr_problems(expr)
    if problem is None:
        assert found == []
    else:
        assert any(problem in f for f in found), found
