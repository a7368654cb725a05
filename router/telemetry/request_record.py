"""What the ingress learns about one HTTP request as it runs, and the metric points it makes.

Pure: the ASGI middleware fills a RequestRecord, the routes add what they decide, and when the
response is over `metric_points` turns it into counter and histogram updates (router/telemetry/
metrics.py sends them to Ray's metrics system).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

UNAUTHENTICATED = "-"  # tenant label before (or without) a valid key
NO_POOL = "none"  # pool label of a request refused before a pool was chosen
CLIENT_CLOSED = 499  # status label of a request whose client went away (nginx's convention)

COMPLETED, CANCELLED, FAILED, REFUSED = "completed", "cancelled", "failed", "refused"


@dataclass
class RequestRecord:
    route: str
    started_s: float  # monotonic
    tenant: str = UNAUTHENTICATED
    pool: str = NO_POOL
    routing_reason: str | None = None  # PoolChoice.kind, once a pool is chosen
    stream: bool = False
    http_status: int | None = None  # sent with the response headers
    outcome: str | None = None  # COMPLETED | CANCELLED | FAILED | REFUSED
    end_status: int | None = None  # an in-band error's status, after 200 went out
    refusal: str | None = None  # the error code of a refusal (rate_limit_exceeded, ...)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal | None = None
    first_token_s: float | None = None  # monotonic, when the first delta left for the client
    ended_s: float | None = None
    output_text: list[str] = field(default_factory=list)  # only with trace_content
    tier: str = "standard"  # the priority tier it ran at
    queue_decision: str | None = None  # the fair queue's (fairness.enabled): admit | queue | shed | bypass
    queue_wait_s: float = 0.0
    shed_status: int | None = None  # 429 | 503 when shed

    @property
    def status(self) -> int:
        """How the request ended, as an HTTP status: 499 when the client went away first."""
        if self.outcome == CANCELLED:
            return CLIENT_CLOSED
        if self.end_status is not None:
            return self.end_status
        return self.http_status or 500

    def mark_first_token(self, now_s: float) -> None:
        if self.first_token_s is None:
            self.first_token_s = now_s

    def usage(self, prompt: int, completion: int, reasoning: int, cost: Decimal | None) -> None:
        self.prompt_tokens, self.completion_tokens, self.reasoning_tokens = prompt, completion, reasoning
        self.cost_usd = cost


@dataclass(frozen=True)
class Point:
    metric: str  # a key of router.telemetry.metrics.METRICS
    value: float
    tags: dict[str, str]


def metric_points(r: RequestRecord) -> list[Point]:
    """Counter increments and histogram observations for one finished request."""
    who = {"tenant": r.tenant, "pool": r.pool}
    status = str(r.status)
    points = [Point("requests", 1, {**who, "route": r.route, "status": status})]
    for kind, n in (("input", r.prompt_tokens), ("output", r.completion_tokens), ("reasoning", r.reasoning_tokens)):
        if n:
            points.append(Point("tokens", n, {**who, "type": kind}))
    if r.cost_usd:
        points.append(Point("cost", float(r.cost_usd), who))
    if r.refusal is not None:
        points.append(Point("refusals", 1, {**who, "reason": r.refusal}))
    if r.routing_reason is not None:
        points.append(Point("routing", 1, {"pool": r.pool, "reason": r.routing_reason}))
    if r.ended_s is not None and r.pool != NO_POOL:
        points.append(Point("latency", r.ended_s - r.started_s,
                            {"pool": r.pool, "route": r.route, "stream": str(r.stream).lower(), "status": status}))
    if r.first_token_s is not None:
        points.append(Point("ttft", r.first_token_s - r.started_s, {"pool": r.pool, "route": r.route}))
    if r.queue_decision in ("admit", "queue"):
        points.append(Point("queue_wait", r.queue_wait_s, {"tenant": r.tenant, "tier": r.tier}))
    elif r.queue_decision == "shed":
        points.append(Point("shed", 1, {"tenant": r.tenant, "tier": r.tier, "status": str(r.shed_status)}))
    return points


def queue_length_points(lengths) -> list[Point]:
    """The fair queue's held requests per tier (a gauge; Mapping[Tier, int])."""
    return [Point("queue_length", n, {"tier": tier.label}) for tier, n in lengths.items()]
