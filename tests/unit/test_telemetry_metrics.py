"""Metric points of one finished request, and their agreement with the declared Ray metrics (no Ray)."""

import sys
import types
from decimal import Decimal
from itertools import pairwise

import pytest

from common.telemetry.replica_metrics import ReplicaMetrics
from router.telemetry import metrics as M
from router.telemetry.request_record import (
    CANCELLED,
    CLIENT_CLOSED,
    NO_POOL,
    UNAUTHENTICATED,
    Point,
    RequestRecord,
    metric_points,
    queue_length_points,
)
from router.fairness.tiers import Tier

ROUTE = "/v1/chat/completions"


def record(**kw) -> RequestRecord:
    kw.setdefault("http_status", 200)
    return RequestRecord(route=ROUTE, started_s=100.0, **kw)


def by_metric(r: RequestRecord) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in metric_points(r):
        out.setdefault(p.metric, []).append(p)
    return out


def full_record() -> RequestRecord:
    """A streamed request that went through every step: it makes every metric."""
    r = record(tenant="acme", pool="short", routing_reason="preferred", stream=True, refusal=None)
    r.usage(12, 30, 7, Decimal("0.0042"))
    r.mark_first_token(100.25)
    r.ended_s = 101.5
    return r


# ---- status label ------------------------------------------------------------------------

def test_cancelled_request_is_499_whatever_was_sent():
    r = record(outcome=CANCELLED, end_status=502)
    assert r.status == CLIENT_CLOSED == 499
    assert by_metric(r)["requests"][0].tags["status"] == "499"


def test_in_band_error_status_wins_over_the_200_sent():
    r = record(end_status=502)
    assert by_metric(r)["requests"][0].tags["status"] == "502"


def test_no_response_started_counts_as_500():
    assert by_metric(record(http_status=None))["requests"][0].tags["status"] == "500"


def test_requests_point_for_a_refusal_before_auth():
    points = metric_points(record(http_status=401, refusal="invalid_api_key"))
    assert [(p.metric, p.value, p.tags) for p in points] == [
        ("requests", 1, {"tenant": UNAUTHENTICATED, "pool": NO_POOL, "route": ROUTE, "status": "401"}),
        ("refusals", 1, {"tenant": UNAUTHENTICATED, "pool": NO_POOL, "reason": "invalid_api_key"}),
    ]


# ---- tokens and cost ---------------------------------------------------------------------

def test_token_points_only_for_nonzero_counts():
    r = record(tenant="acme", pool="short")
    r.usage(10, 0, 0, None)
    tokens = by_metric(r)["tokens"]
    assert [(p.value, p.tags["type"]) for p in tokens] == [(10, "input")]
    assert "cost" not in by_metric(r)


def test_token_points_by_type():
    r = full_record()
    assert [(p.tags["type"], p.value) for p in by_metric(r)["tokens"]] == [("input", 12), ("output", 30),
                                                                           ("reasoning", 7)]


@pytest.mark.parametrize("cost", [None, Decimal(0), Decimal("0.000000")])
def test_no_cost_point_without_a_cost(cost):
    r = record(pool="short")
    r.usage(10, 5, 0, cost)
    assert "cost" not in by_metric(r)


def test_cost_point_is_a_float_of_the_decimal():
    (point,) = by_metric(full_record())["cost"]
    assert point.value == pytest.approx(0.0042) and isinstance(point.value, float)
    assert point.tags == {"tenant": "acme", "pool": "short"}


# ---- refusal, routing, latency, ttft -----------------------------------------------------

def test_refusal_point():
    (point,) = by_metric(record(tenant="acme", http_status=429, refusal="rate_limit_exceeded"))["refusals"]
    assert point.tags == {"tenant": "acme", "pool": NO_POOL, "reason": "rate_limit_exceeded"}


def test_routing_point_only_when_a_pool_was_chosen():
    assert "routing" not in by_metric(record())
    (point,) = by_metric(record(pool="long", routing_reason="spilled"))["routing"]
    assert point.tags == {"pool": "long", "reason": "spilled"}


def test_latency_needs_a_pool_and_an_end():
    assert "latency" not in by_metric(record(ended_s=101.0))  # refused before a pool was chosen
    assert "latency" not in by_metric(record(pool="short"))  # not ended
    (point,) = by_metric(record(pool="short", ended_s=102.5, stream=False, end_status=503))["latency"]
    assert point.value == pytest.approx(2.5)
    assert point.tags == {"pool": "short", "route": ROUTE, "stream": "false", "status": "503"}
    assert by_metric(full_record())["latency"][0].tags["stream"] == "true"


def test_ttft_only_after_a_first_token_and_from_the_first_one():
    assert "ttft" not in by_metric(record(pool="short", ended_s=101.0))
    r = record(pool="short")
    r.mark_first_token(100.5)
    r.mark_first_token(100.9)  # later deltas do not move it
    (point,) = by_metric(r)["ttft"]
    assert point.value == pytest.approx(0.5)
    assert point.tags == {"pool": "short", "route": ROUTE}


def test_queue_points_only_with_the_fair_queue():
    assert not {"queue_wait", "shed"} & set(by_metric(record(tenant="acme")))  # fairness off
    assert not {"queue_wait", "shed"} & set(by_metric(record(tenant="acme", queue_decision="bypass")))
    (wait,) = by_metric(record(tenant="acme", tier="batch", queue_decision="queue", queue_wait_s=1.5))["queue_wait"]
    assert (wait.value, wait.tags) == (1.5, {"tenant": "acme", "tier": "batch"})
    (admitted,) = by_metric(record(tenant="acme", queue_decision="admit"))["queue_wait"]
    assert admitted.value == 0.0
    shed = by_metric(record(tenant="acme", http_status=503, queue_decision="shed", queue_wait_s=0.2,
                            shed_status=503))
    assert "queue_wait" not in shed
    assert [(p.value, p.tags) for p in shed["shed"]] == [(1, {"tenant": "acme", "tier": "standard", "status": "503"})]


def test_queue_length_points_are_per_tier():
    points = queue_length_points({Tier.INTERACTIVE: 0, Tier.STANDARD: 3, Tier.BATCH: 1})
    assert {p.tags["tier"]: p.value for p in points} == {"interactive": 0, "standard": 3, "batch": 1}
    assert {p.metric for p in points} == {"queue_length"}


# ---- agreement with router/telemetry/metrics.py ------------------------------------------

RECORDS = {
    "full": full_record(),
    "refused_before_auth": record(http_status=401, refusal="invalid_api_key"),
    "cancelled_mid_stream": record(tenant="acme", pool="long", routing_reason="all_saturated", stream=True,
                                   outcome=CANCELLED, first_token_s=100.1, ended_s=100.2),
    "queued": record(tenant="acme", pool="short", tier="interactive", queue_decision="queue", queue_wait_s=0.3),
    "shed": record(tenant="acme", http_status=429, refusal="fair_share_exceeded", queue_decision="shed",
                   shed_status=429),
}


def test_the_records_below_make_every_declared_metric():
    made = {p.metric for r in RECORDS.values() for p in metric_points(r)}
    made |= {p.metric for p in queue_length_points({Tier.STANDARD: 2})}  # the queue's gauge, not per request
    assert made == set(M.METRICS)


@pytest.mark.parametrize("name", list(RECORDS))
def test_points_match_the_declared_metrics(name):
    for point in metric_points(RECORDS[name]):
        assert point.metric in M.METRICS, point
        tag_keys = M.METRICS[point.metric][2]
        assert set(point.tags) == set(tag_keys), point  # Ray refuses missing or unknown tag keys
        assert all(isinstance(v, str) for v in point.tags.values()), point  # Ray tag values are strings
        assert isinstance(point.value, (int, float)) and point.value >= 0, point


def test_declarations_are_complete_and_histograms_have_sorted_buckets():
    assert set(M.DESCRIPTIONS) == set(M.METRICS)
    for key, (kind, name, tag_keys, buckets) in M.METRICS.items():
        assert name.startswith("magistral_")
        assert len(set(tag_keys)) == len(tag_keys)
        if kind in ("counter", "gauge"):
            assert buckets is None, key
        else:
            assert kind == "histogram", key
            assert buckets and all(0 < a < b for a, b in pairwise(buckets)), key


# ---- IngressMetrics / ReplicaMetrics against a stand-in for ray.serve.metrics ------------

class _FakeMetric:
    def __init__(self, name, description="", tag_keys=(), boundaries=None):
        self.name, self.tag_keys, self.boundaries, self.calls = name, tuple(tag_keys), boundaries, []

    def _check(self, tags):
        if set(tags) != set(self.tag_keys):  # as strict as Ray: every key, no others
            raise ValueError(f"{self.name}: tags {sorted(tags)} != {sorted(self.tag_keys)}")

    def inc(self, value=1.0, tags=None):
        self._check(tags)
        self.calls.append(("inc", value, tags))

    def observe(self, value, tags=None):
        self._check(tags)
        self.calls.append(("observe", value, tags))

    def set(self, value, tags=None):
        self._check(tags)
        self.calls.append(("set", value, tags))


@pytest.fixture
def fake_ray_metrics(monkeypatch):
    metrics = types.SimpleNamespace(Counter=_FakeMetric, Histogram=_FakeMetric, Gauge=_FakeMetric)
    serve = types.ModuleType("ray.serve")
    serve.metrics = metrics
    ray = sys.modules.get("ray") or types.ModuleType("ray")
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.serve", serve)
    return metrics


def test_ingress_metrics_increment_counters_and_observe_histograms(fake_ray_metrics):
    ingress = M.IngressMetrics()
    ingress.record(metric_points(full_record()))
    calls = {key: metric.calls for key, metric in ingress._metrics.items()}
    assert [c[0] for c in calls["requests"]] == ["inc"]
    assert [c[0] for c in calls["latency"]] == ["observe"]
    assert calls["ttft"] == [("observe", pytest.approx(0.25), {"pool": "short", "route": ROUTE})]
    assert ingress._metrics["latency"].boundaries == M.LATENCY_BUCKETS_S
    ingress.record(queue_length_points({Tier.BATCH: 4}))
    assert ingress._metrics["queue_length"].calls == [("set", 4, {"tier": "batch"})]


def test_ingress_metrics_never_raise(fake_ray_metrics, caplog):
    ingress = M.IngressMetrics()
    bad = Point("requests", 1, {"tenant": "x"})  # missing tag keys
    ingress.record([bad])  # logged, not raised: a metric must never fail a request
    assert "recording metrics failed" in caplog.text


def test_replica_metrics_set_only_the_stats_given(fake_ray_metrics):
    replica = ReplicaMetrics("short", "L4")
    replica.update({"queued_tokens": 120, "ongoing_requests": 3, "unrelated": 1})
    tags = {"pool": "short", "accelerator": "L4"}
    assert replica._gauges["queued_tokens"].calls == [("set", 120.0, tags)]
    assert replica._gauges["ongoing_requests"].calls == [("set", 3.0, tags)]
    assert replica._gauges["kv_cache_usage"].calls == []
