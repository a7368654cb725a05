"""The fair admission queue's decisions, for any caller: the simulator (bench/sim/fair_admission.py)
today, the ingress next. Pure: no Ray, no asyncio, no clock (callers pass `now`), no idea of what
a request is beyond what `Waiting` says of it.

A request arrives with the placement the router predicted for it (router/routing/placer.py). It is
dispatched now only if the chosen replica is predicted to meet its objectives with headroom (the
`Gate`; the stricter reserve gate for a tenant holding more than its share of the work in flight
while others are active, router/fairness/headroom.py) and nothing is queued ahead of it;
otherwise it is held in the FairQueue (tier, least-served tenant, earliest deadline), or refused at
once when its expected wait exceeds its bounded wait (router/fairness/shedding.py). `retry` tries
the held requests in fair order, skipping those that still fit nowhere (work-conserving);
`expire` sheds those whose bounded wait ran out. Each dispatch charges its tenant the predicted
GPU-seconds on the class it goes to; `finished` corrects that to the actual cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from common.engine_model import GPUProfile, profile_named
from router.fairness.cost import gpu_seconds
from router.fairness.dispatch_rate import DispatchRate
from router.fairness.fair_queue import FairQueue, Held
from router.fairness.headroom import Gate, Headroom, InFlight, gate_for
from router.fairness.shedding import Action, Decision, WaitBounds, decide, over_fair_share, shed_queued
from router.fairness.tiers import Tier
from router.routing.placer import Placement
from router.routing.predict import Prediction

# "About as good as idle": within this much of the class's idle miss ratio.
IDLE_MARGIN = 0.05
# Held requests tried per retry that still fit nowhere before the retry stops (each try is one
# placement over the fleet; the rest wait for the next retry).
MAX_FAILED_TRIES = 4


@dataclass(frozen=True)
class Waiting:
    """A request as the queue sees it."""

    key: str
    tenant: str
    tier: Tier
    prompt_tokens: int
    arrival_s: float
    ttft_limit_s: float
    best_idle_ttft_s: float  # on a free replica of the fastest class that holds it
    fallback_profile: GPUProfile  # its class for the cost estimate when it was not placed
    payload: Any = None  # the caller's request object
    max_tokens: int | None = None  # its output cap, if it set one: the cost is never priced past it


class Placing(Protocol):
    def place(self, payload: Any) -> Placement | None:
        """The placement over the fleet as it is now (None: no replica with room holds it)."""

    def unplace(self, payload: Any) -> None:
        """A placement `place` made was not dispatched."""


@dataclass
class _Charge:
    tenant: str
    tier: Tier
    predicted_gpu_s: float


class AdmissionQueue:
    def __init__(self, bounds: WaitBounds = WaitBounds(), headroom: Headroom = Headroom(),
                 rate_window_s: float = 30.0, likely_output: Callable[[], int] = lambda: 900) -> None:
        self.bounds, self.headroom = bounds, headroom
        self.in_flight = InFlight(headroom.active_s)
        self.queue = FairQueue()
        self.rate = DispatchRate(rate_window_s)
        self.charges: dict[str, _Charge] = {}  # dispatched, not finished
        self.decisions: dict[str, int] = {a.value: 0 for a in Action}
        self._likely_output = likely_output

    def arrive(self, w: Waiting, placement: Placement | None, now: float) -> Decision:
        """Admit (dispatch it now, where `placement` says), queue or shed `w`."""
        self.in_flight.seen(w.tenant, now)
        dispatchable = placement is not None and self._good_enough(placement.chosen, w.tenant, now)
        cost = self._cost(w, placement)
        deadline = w.arrival_s + w.ttft_limit_s
        allowed = self.bounds.allowed_wait(w.tier, w.ttft_limit_s, w.best_idle_ttft_s)
        decision = decide(meets_now=dispatchable, work_ahead_gpu_s=self.queue.work_ahead(w.tenant, w.tier, deadline),
                          rate_gpu_s_per_s=self.rate.rate(now), allowed_wait_s=allowed,
                          over_share=self._over_share(w.tenant, w.tier),
                          max_retry_after_s=self.bounds.max_retry_after_s)
        self.decisions[decision.action.value] += 1
        if decision.action is Action.ADMIT:
            self.queue.dispatched_directly(w.tenant, w.tier, cost)
            self._dispatched(w.key, w.tenant, w.tier, cost, now)
        elif decision.action is Action.QUEUE:
            self.queue.push(Held(w.key, w.tenant, w.tier, cost, deadline, now + allowed, w.arrival_s, w))
        return decision

    def retry(self, now: float, placing: Placing, has_room: Callable[[], bool],
              dispatch: Callable[[Waiting, Placement], None]) -> int:
        """Dispatch held requests in fair order, each at once (the next placement sees it); how many."""
        sent = 0
        skipped: list[str] = []
        while len(self.queue) and has_room() and len(skipped) < MAX_FAILED_TRIES:
            held = self.queue.next(skipped)
            if held is None:
                break
            w: Waiting = held.payload
            placement = placing.place(w.payload)
            if placement is None or not self._good_enough(placement.chosen, w.tenant, now):
                if placement is not None:
                    placing.unplace(w.payload)
                skipped.append(held.key)
                continue
            cost = self._cost(w, placement)
            self.queue.take(held.key, cost)
            self._dispatched(w.key, w.tenant, w.tier, cost, now)
            dispatch(w, placement)
            sent += 1
        return sent

    def expire(self, now: float) -> list[tuple[Waiting, Decision]]:
        """Held requests whose bounded wait ran out: shed, each with its 429/503 and Retry-After."""
        out = []
        for held in self.queue.expired(now):
            decision = shed_queued(work_ahead_gpu_s=self.queue.work_ahead(held.tenant, held.tier, held.deadline),
                                   rate_gpu_s_per_s=self.rate.rate(now),
                                   over_share=self._over_share(held.tenant, held.tier),
                                   max_retry_after_s=self.bounds.max_retry_after_s)
            out.append((held.payload, decision))
        return out

    def remove(self, key: str) -> bool:
        """A held request's client left: out of the queue, charged nothing."""
        return self.queue.remove(key) is not None

    def finished(self, key: str, actual_gpu_s: float) -> None:
        charge = self.charges.pop(key, None)
        if charge is not None:
            self.in_flight.finished(charge.tenant, charge.predicted_gpu_s)
            self.queue.finished(charge.tenant, charge.tier, charge.predicted_gpu_s, actual_gpu_s)

    # ---- inside -------------------------------------------------------------------------------
    def _good_enough(self, p: Prediction, tenant: str, now: float) -> bool:
        """Dispatch there now: it meets the objectives with the gate's headroom. A request no
        class could serve within its objectives even idle is not held for ever: it goes once a
        replica with room is about as good as an idle one."""
        if p.class_fit > 1.0:
            return not p.waits_for_room and p.miss <= p.class_fit + IDLE_MARGIN
        gate: Gate = gate_for(self.headroom, self.in_flight.over_share(tenant, now))
        return gate.passes(p)

    def _dispatched(self, key: str, tenant: str, tier: Tier, cost: float, now: float) -> None:
        self.charges[key] = _Charge(tenant, tier, cost)
        self.in_flight.dispatched(tenant, cost)
        self.rate.record(cost, now)

    def _over_share(self, tenant: str, tier: Tier) -> bool:
        """Whether `tenant` already holds more than an equal share of its tier's queue."""
        backlogged = self.queue.backlogged(tier)
        n = len(backlogged) + (tenant not in backlogged)
        return over_fair_share(self.queue.queued_work(tier, tenant), self.queue.queued_work(tier), n)

    def _cost(self, w: Waiting, placement: Placement | None) -> float:
        """Predicted GPU-seconds: its prompt and the likely output, on the class it goes to."""
        profile = (profile_named(placement.chosen.profile) if placement is not None else None) or w.fallback_profile
        likely = self._likely_output()
        return gpu_seconds(profile, w.prompt_tokens, likely if w.max_tokens is None else min(likely, w.max_tokens))
