"""Metrics through Ray's metrics system (ray.serve.metrics): every ingress and replica process
reports to its node's metrics agent, which Prometheus scrapes beside Ray's and vLLM's own metrics.
Serve adds the deployment, replica and application tags; sum over `replica` for a pool's or the
service's total. Names below get Ray's `ray_` prefix on the endpoint (counters also `_total`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from router.telemetry.request_record import Point

logger = logging.getLogger("ray.serve")

# Seconds: a one-token stub answer takes ~10 ms; a long Magistral answer several minutes.
LATENCY_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
QUEUE_WAIT_BUCKETS_S = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
TTFT_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

# key -> (kind, Ray metric name, tag keys, histogram boundaries)
METRICS: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "requests": ("counter", "magistral_requests", ("tenant", "pool", "route", "status"), None),
    "tokens": ("counter", "magistral_tokens", ("tenant", "pool", "type"), None),
    "cost": ("counter", "magistral_cost_usd", ("tenant", "pool"), None),
    "refusals": ("counter", "magistral_refusals", ("tenant", "pool", "reason"), None),
    "routing": ("counter", "magistral_routing_decisions", ("pool", "reason"), None),
    "latency": ("histogram", "magistral_request_latency_seconds", ("pool", "route", "stream", "status"),
                LATENCY_BUCKETS_S),
    "ttft": ("histogram", "magistral_time_to_first_token_seconds", ("pool", "route"), TTFT_BUCKETS_S),
    "queue_wait": ("histogram", "magistral_queue_wait_seconds", ("tenant", "tier"), QUEUE_WAIT_BUCKETS_S),
    "shed": ("counter", "magistral_shed_requests", ("tenant", "tier", "status"), None),
    "queue_length": ("gauge", "magistral_queue_length", ("tier",), None),
}
DESCRIPTIONS = {
    "requests": "Requests answered by the router, by how they ended (HTTP status; 499: client went away).",
    "tokens": "Tokens billed (type: input, output, reasoning; reasoning is part of output).",
    "cost": "US dollars billed.",
    "refusals": "Requests refused with a 4xx, by error code.",
    "routing": "Pool choices by reason: preferred, spilled, all_saturated.",
    "latency": "Seconds from the request to its last byte.",
    "ttft": "Seconds from the request to its first generated token.",
    "queue_wait": "Seconds a request waited in the ingress's fair queue before dispatch (0: admitted at once).",
    "shed": "Requests the fair queue refused (status 429: tenant over its fair share; 503: fleet overloaded).",
    "queue_length": "Requests held in this ingress's fair queue, by priority tier.",
}

class IngressMetrics:
    """The ingress's metrics; create inside the Serve replica (the constructor)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self._metrics = {}
        for key, (kind, name, tags, buckets) in METRICS.items():
            if kind == "counter":
                self._metrics[key] = metrics.Counter(name, description=DESCRIPTIONS[key], tag_keys=tags)
            elif kind == "gauge":
                self._metrics[key] = metrics.Gauge(name, description=DESCRIPTIONS[key], tag_keys=tags)
            else:
                self._metrics[key] = metrics.Histogram(name, description=DESCRIPTIONS[key], boundaries=buckets,
                                                       tag_keys=tags)

    def record(self, points: Iterable[Point]) -> None:
        try:
            for p in points:
                metric = self._metrics[p.metric]
                kind = METRICS[p.metric][0]
                if kind == "counter":
                    metric.inc(p.value, tags=p.tags)
                elif kind == "gauge":
                    metric.set(p.value, tags=p.tags)
                else:
                    metric.observe(p.value, tags=p.tags)
        except Exception:  # noqa: BLE001 - a metric must never fail a request
            logger.exception("recording metrics failed")
