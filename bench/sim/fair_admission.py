"""The fair admission queue (router/fairness) in front of the simulator's `predicted` policy.

`FairPredicted` places requests exactly as `Predicted` does (router.routing.placer), but a request
goes to the chosen replica only when it is predicted to meet the objectives with headroom and has
a free slot (router.fairness.headroom's gate; the stricter reserve gate for a tenant holding more
than its share of the work in flight while others are active); otherwise it is held in a
router.fairness.fair_queue.FairQueue, or refused at once when its expected wait exceeds its
bounded wait (router.fairness.shedding). Held requests are retried in fair order (tier,
least-served tenant, earliest deadline) whenever a replica's step ended with a finished request
or a first token (room freed, or its queued prefill shrank), skipping those that still fit
nowhere: work-conserving. Each dispatch charges its tenant the predicted GPU-seconds on the class
it went to; each finish corrects that to the actual cost.

The simulator's event loop (bench/sim/simulator.py) sees the `admission` attribute and hands it
every arrival and step end; `dispatch` and `shed` are the loop's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.sim.fleets import H100_USD_PER_GPU_HOUR, L40S_USD_PER_GPU_HOUR, SLO
from bench.sim.policies import Fleet, Predicted, Replica
from bench.workload import Job
from common.engine_model import GPUProfile
from router.fairness.cost import gpu_seconds, idle_ttft_s
from router.fairness.dispatch_rate import DispatchRate
from router.fairness.fair_queue import FairQueue, Held
from router.fairness.headroom import Gate, Headroom, InFlight, gate_for
from router.fairness.shedding import Action, Decision, WaitBounds, decide, over_fair_share, shed_queued
from router.fairness.tiers import Tier, parse_tier
from router.routing.placer import Placement
from router.routing.predict import Prediction

Dispatch = Callable[[Job, Replica], None]
Shed = Callable[[Job], None]

# "About as good as idle": within this much of the class's idle miss ratio.
IDLE_MARGIN = 0.05
# Held requests tried per retry that still fit nowhere before the retry stops (each try is one
# placement over the fleet; the rest wait for the next step end).
MAX_FAILED_TRIES = 4


@dataclass(frozen=True)
class ShedRecord:
    job_id: str
    tenant: str
    tier: Tier
    at: float
    status: int
    retry_after_s: int
    queued: bool  # refused after waiting (its bounded wait ran out), not at arrival
    expected_wait_s: float


@dataclass
class _Charge:
    tenant: str
    tier: Tier
    predicted_gpu_s: float


class FairAdmission:
    def __init__(self, policy: Predicted, slo: SLO, bounds: WaitBounds, rate_window_s: float = 30.0,
                 headroom: Headroom = Headroom()) -> None:
        self.policy = policy
        self.headroom = headroom
        self.in_flight = InFlight(headroom.active_s)
        self.slo = slo
        self.bounds = bounds
        self.queue = FairQueue()
        self.rate = DispatchRate(rate_window_s)
        self.charges: dict[str, _Charge] = {}  # dispatched, not finished
        self.shed_log: list[ShedRecord] = []
        self.decisions: dict[str, int] = {a.value: 0 for a in Action}
        self.dispatched_at: dict[str, float] = {}  # every dispatch, for the benchmark's figures

    # ---- the simulator's hooks ----------------------------------------------------------------
    def arrived(self, job: Job, fleet: Fleet, dispatch: Dispatch, shed: Shed) -> None:
        now = fleet.now
        self._expire(fleet, shed)
        self.in_flight.seen(job.tenant, now)
        tier, limit = parse_tier(job.tier), self.slo.ttft_limit_s(job.prompt_tokens)
        replica, placement = self._try(job, fleet)
        profile = self._profile(fleet, placement)
        cost = self._cost(profile, job)
        deadline = job.arrival_s + limit
        ahead = self.queue.work_ahead(job.tenant, tier, deadline)
        allowed = self.bounds.allowed_wait(tier, limit, self._best_idle_ttft(fleet, job))
        decision = decide(meets_now=replica is not None, work_ahead_gpu_s=ahead,
                          rate_gpu_s_per_s=self.rate.rate(now), allowed_wait_s=allowed,
                          over_share=self._over_share(job.tenant, tier),
                          max_retry_after_s=self.bounds.max_retry_after_s)
        self.decisions[decision.action.value] += 1
        if decision.action is Action.ADMIT:
            self.queue.dispatched_directly(job.tenant, tier, cost)
            self._dispatched(job, tier, replica, cost, now, dispatch)
            return
        if replica is not None:  # placed but not admitted: the placer must not keep it
            self.policy.unplace(job)
        if decision.action is Action.SHED:
            self._log_shed(job, tier, now, decision, queued=False)
            shed(job)
            return
        self.queue.push(Held(job.job_id, job.tenant, tier, cost, deadline, now + allowed, job.arrival_s, job))
        self._retry(fleet, dispatch)

    def step_ended(self, fleet: Fleet, changed: bool, dispatch: Dispatch, shed: Shed) -> None:
        """After every step: shed what waited too long; if the step freed room or finished a
        prefill, try the held requests."""
        self._expire(fleet, shed)
        if changed:
            self._retry(fleet, dispatch)

    def finished(self, job: Job, replica: Replica) -> None:
        charge = self.charges.pop(job.job_id, None)
        if charge is not None:
            self.in_flight.finished(charge.tenant, charge.predicted_gpu_s)
            actual = gpu_seconds(replica.engine.profile, job.prompt_tokens, job.output_tokens)
            self.queue.finished(charge.tenant, charge.tier, charge.predicted_gpu_s, actual)

    # ---- inside -------------------------------------------------------------------------------
    def _try(self, job: Job, fleet: Fleet) -> tuple[Replica | None, Placement | None]:
        """The replica the placer picks if it is predicted to meet the request's objectives now
        (None: hold it), and the placement (None: no replica with a free slot holds it)."""
        replica = self.policy.choose(job, fleet)
        placement = self.policy.placement_of(job)
        if replica is None or placement is None:
            return None, placement
        gate = gate_for(self.headroom, self.in_flight.over_share(job.tenant, fleet.now))
        if not self._good_enough(placement.chosen, gate):
            self.policy.unplace(job)
            return None, placement
        return replica, placement

    def _good_enough(self, p: Prediction, gate: Gate) -> bool:
        """Dispatch there now: it meets the objectives with the gate's headroom. A request no
        class could serve within its objectives even idle is not held for ever: it goes once a
        replica with room is about as good as an idle one."""
        if p.class_fit > 1.0:
            return not p.waits_for_room and p.miss <= p.class_fit + IDLE_MARGIN
        return gate.passes(p)

    def _retry(self, fleet: Fleet, dispatch: Dispatch) -> None:
        skipped: list[str] = []
        while len(self.queue) and fleet.with_room() and len(skipped) < MAX_FAILED_TRIES:
            held = self.queue.next(skipped)
            if held is None:
                return
            job = held.payload
            replica, placement = self._try(job, fleet)
            if replica is None:
                skipped.append(held.key)
                continue
            cost = self._cost(replica.engine.profile, job)
            self.queue.take(held.key, cost)
            self._dispatched(job, held.tier, replica, cost, fleet.now, dispatch)

    def _dispatched(self, job: Job, tier: Tier, replica: Replica, cost: float, now: float,
                    dispatch: Dispatch) -> None:
        self.charges[job.job_id] = _Charge(job.tenant, tier, cost)
        self.in_flight.dispatched(job.tenant, cost)
        self.dispatched_at[job.job_id] = now
        self.rate.record(cost, now)
        dispatch(job, replica)

    def _expire(self, fleet: Fleet, shed: Shed) -> None:
        now = fleet.now
        for held in self.queue.expired(now):
            over = self._over_share(held.tenant, held.tier)
            decision = shed_queued(work_ahead_gpu_s=self.queue.work_ahead(held.tenant, held.tier, held.deadline),
                                   rate_gpu_s_per_s=self.rate.rate(now), over_share=over,
                                   max_retry_after_s=self.bounds.max_retry_after_s)
            self._log_shed(held.payload, held.tier, now, decision, queued=True)
            shed(held.payload)

    def _over_share(self, tenant: str, tier: Tier) -> bool:
        """Whether `tenant` already holds more than an equal share of its tier's queue."""
        backlogged = self.queue.backlogged(tier)
        n = len(backlogged) + (tenant not in backlogged)
        return over_fair_share(self.queue.queued_work(tier, tenant), self.queue.queued_work(tier), n)

    def _cost(self, profile: GPUProfile, job: Job) -> float:
        """Predicted GPU-seconds: its prompt and the likely output, on the class serving it."""
        return gpu_seconds(profile, job.prompt_tokens, self.policy.likely_output())

    @staticmethod
    def _profile(fleet: Fleet, placement: Placement | None) -> GPUProfile:
        """The class the request would go to (the placer's choice; without one, the first pool's)."""
        if placement is not None:
            return fleet.by_pool[placement.pool][0].engine.profile
        return next(r.engine.profile for r in fleet.replicas)

    @staticmethod
    def _best_idle_ttft(fleet: Fleet, job: Job) -> float:
        return min(idle_ttft_s(replicas[0].engine.profile, job.prompt_tokens)
                   for replicas in fleet.by_pool.values() if replicas
                   if replicas[0].engine.profile.kv_capacity_tokens > job.prompt_tokens)

    def _log_shed(self, job: Job, tier: Tier, now: float, decision: Decision, queued: bool) -> None:
        self.shed_log.append(ShedRecord(job.job_id, job.tenant, tier, now, decision.status,
                                        decision.retry_after_s, queued, decision.expected_wait_s))


class FairPredicted(Predicted):
    """`predicted` placement behind the fair admission queue."""

    name = "fair_predicted"

    def __init__(self, slo: SLO = SLO(), usd_per_hour: Mapping[str, float] | None = None,
                 bounds: WaitBounds = WaitBounds(), rate_window_s: float = 30.0, **admission) -> None:
        super().__init__(slo, usd_per_hour)
        self.admission = FairAdmission(self, slo, bounds, rate_window_s, **admission)

    def placement_of(self, job: Job) -> Placement | None:
        """The placement `choose` made for `job`, not yet routed (None: none was made)."""
        placed = self._placed.get(job.job_id)
        return placed[0] if placed else None

    def unplace(self, job: Job) -> None:
        """Forget a placement that was not dispatched."""
        self._placed.pop(job.job_id, None)

    def likely_output(self) -> int:
        return self._placer.likely.tokens if self._placer is not None else 900

    def on_finish(self, job: Job, replica: Replica) -> None:
        super().on_finish(job, replica)
        self.admission.finished(job, replica)


def make_fair_policy(bounds: WaitBounds = WaitBounds(), **admission) -> FairPredicted:
    """The fair policy with the prices `make_policy("predicted")` uses."""
    return FairPredicted(SLO(), {"long": H100_USD_PER_GPU_HOUR, "short": 2 * L40S_USD_PER_GPU_HOUR}, bounds,
                         **admission)
