"""Early shedding: refuse at once what cannot be served in time, instead of after minutes of
silence (SCORPIO, QLM: refusing early what would miss its deadline keeps the rest on time).

At arrival the caller knows the request's best predicted time to first token (the placer's
predictions) and the queue knows the work that would go before it (fair_queue.work_ahead); the
fleet's recent dispatch rate turns that work into an expected wait. Then:

- admit: a replica meets its objectives now and nothing is queued ahead of it;
- queue: a replica meets its objectives now (the queue's next retry dispatches it if what is ahead
  of it fits nowhere), or its expected wait is within its bounded wait, or there is no recent
  dispatch to estimate the wait from;
- shed: otherwise, with 429 when its tenant holds more than an equal share of its tier's queue
  (back off: you are the backlog) or 503 when the fleet is overloaded (not the tenant's doing),
  and Retry-After in whole seconds: how much longer than its bounded wait the queue ahead of it
  is expected to take, at least 1 s, at most `max_retry_after_s`.

The bounded wait: the time the request could still wait and meet its first-token objective on a
free replica of the fastest class that holds it (objective minus that idle TTFT), plus its tier's
extra patience (`batch` may wait longer), capped per tier. A queued request still held when its
bounded wait runs out is shed too, with the same status rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from router.fairness.tiers import Tier

TOO_MANY_REQUESTS = 429  # the tenant is over its fair share of the queue
OVERLOADED = 503  # the fleet is overloaded (the Anthropic route says 529 overloaded_error)


class Action(str, Enum):
    ADMIT = "admit"
    QUEUE = "queue"
    SHED = "shed"


@dataclass(frozen=True)
class WaitBounds:
    """Per tier: patience beyond the first-token objective, and the longest wait ever allowed."""

    extra_s: Mapping[Tier, float] = field(
        default_factory=lambda: {Tier.INTERACTIVE: 0.0, Tier.STANDARD: 0.0, Tier.BATCH: 60.0})
    max_s: Mapping[Tier, float] = field(
        default_factory=lambda: {Tier.INTERACTIVE: 10.0, Tier.STANDARD: 30.0, Tier.BATCH: 120.0})
    max_retry_after_s: int = 60

    def allowed_wait(self, tier: Tier, ttft_limit_s: float, idle_ttft_s: float) -> float:
        """How long a request of `tier` may wait in the queue: the slack its objective leaves on
        a free replica of the best class, plus the tier's extra patience, capped."""
        slack = max(0.0, ttft_limit_s - idle_ttft_s)
        return min(slack + self.extra_s.get(tier, 0.0), self.max_s.get(tier, math.inf))


@dataclass(frozen=True)
class Decision:
    action: Action
    expected_wait_s: float = 0.0
    allowed_wait_s: float = 0.0
    status: int | None = None  # shed: 429 or 503
    retry_after_s: int | None = None  # shed: whole seconds

    @property
    def shed(self) -> bool:
        return self.action is Action.SHED


def expected_wait(work_ahead_gpu_s: float, rate_gpu_s_per_s: float) -> float:
    """Seconds until the work ahead is dispatched at the recent rate (inf: work ahead, no rate)."""
    if work_ahead_gpu_s <= 0:
        return 0.0
    return work_ahead_gpu_s / rate_gpu_s_per_s if rate_gpu_s_per_s > 0 else math.inf


def over_fair_share(own_queued_gpu_s: float, tier_queued_gpu_s: float, backlogged_tenants: int) -> bool:
    """The tenant holds more than an equal share of its tier's queued work (itself counted among
    the backlogged). A lone tenant filling the queue is not over its share: the fleet is full."""
    n = max(1, backlogged_tenants)
    return own_queued_gpu_s > tier_queued_gpu_s / n + 1e-12


def retry_after(expected_wait_s: float, allowed_wait_s: float, max_s: int) -> int:
    """Whole seconds until the queue ahead should have shrunk to what the request may wait."""
    excess = expected_wait_s - allowed_wait_s
    if not math.isfinite(excess):
        return max_s
    return int(min(max_s, max(1, math.ceil(excess))))


def shed_status(over_share: bool) -> int:
    return TOO_MANY_REQUESTS if over_share else OVERLOADED


def decide(*, meets_now: bool, work_ahead_gpu_s: float, rate_gpu_s_per_s: float, allowed_wait_s: float,
           over_share: bool, max_retry_after_s: int = 60) -> Decision:
    """Admit, queue or shed a request on arrival (see the module's docstring)."""
    wait = expected_wait(work_ahead_gpu_s, rate_gpu_s_per_s)
    if meets_now and work_ahead_gpu_s <= 0:
        return Decision(Action.ADMIT, wait, allowed_wait_s)
    # No dispatch seen yet (a new ingress replica, or one the proxy has sent nothing): the wait is
    # unknown, not endless; it is held, and its bounded wait still sheds it in time.
    if meets_now or wait <= allowed_wait_s or rate_gpu_s_per_s <= 0:
        return Decision(Action.QUEUE, wait, allowed_wait_s)
    return Decision(Action.SHED, wait, allowed_wait_s, shed_status(over_share),
                    retry_after(wait, allowed_wait_s, max_retry_after_s))


def shed_queued(*, work_ahead_gpu_s: float, rate_gpu_s_per_s: float, over_share: bool,
                max_retry_after_s: int = 60) -> Decision:
    """A queued request whose bounded wait ran out: shed, Retry-After from what is still ahead."""
    wait = expected_wait(work_ahead_gpu_s, rate_gpu_s_per_s)
    return Decision(Action.SHED, wait, 0.0, shed_status(over_share), retry_after(wait, 0.0, max_retry_after_s))
