"""The fair admission queue (router/fairness/admission_queue.py) in front of the simulator's
`predicted` policy.

`FairPredicted` places requests exactly as `Predicted` does (router.routing.placer); the queue's
decisions are router.fairness.admission_queue's, the same the ingress is to use: dispatch when the
chosen replica meets the objectives with headroom, else hold (fair order: tier, least-served
tenant, earliest deadline) or shed. Held requests are retried whenever a replica's step ended with
a finished request or a first token (room freed, or its queued prefill shrank). This module only
adapts: jobs and replicas to `Waiting` and placements, the event loop's dispatch and shed, and
the benchmark's records.

The simulator's event loop (bench/sim/simulator.py) sees the `admission` attribute and hands it
every arrival and step end; `dispatch` and `shed` are the loop's own.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.sim.fleets import H100_USD_PER_GPU_HOUR, L40S_USD_PER_GPU_HOUR, SLO
from bench.sim.policies import Fleet, Predicted, Replica
from bench.workload import Job
from router.fairness.admission_queue import AdmissionQueue, Waiting
from router.fairness.cost import gpu_seconds, idle_ttft_s
from router.fairness.headroom import Headroom
from router.fairness.shedding import Action, Decision, WaitBounds
from router.fairness.tiers import Tier, parse_tier
from router.routing.placer import Placement

Dispatch = Callable[[Job, Replica], None]
Shed = Callable[[Job], None]


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


class _FleetPlacing:
    """router.fairness.admission_queue.Placing over the simulated fleet: the policy's choice."""

    def __init__(self, policy: "FairPredicted", fleet: Fleet) -> None:
        self.policy, self.fleet = policy, fleet
        self.replica: dict[str, Replica] = {}  # job id -> the replica its placement chose

    def place(self, job: Job) -> Placement | None:
        replica = self.policy.choose(job, self.fleet)
        if replica is None:
            return None
        self.replica[job.job_id] = replica
        return self.policy.placement_of(job)

    def unplace(self, job: Job) -> None:
        self.replica.pop(job.job_id, None)
        self.policy.unplace(job)


class FairAdmission:
    def __init__(self, policy: Predicted, slo: SLO, bounds: WaitBounds, rate_window_s: float = 30.0,
                 headroom: Headroom = Headroom()) -> None:
        self.policy = policy
        self.slo = slo
        self.core = AdmissionQueue(bounds, headroom, rate_window_s, likely_output=policy.likely_output)
        self.shed_log: list[ShedRecord] = []
        self.dispatched_at: dict[str, float] = {}  # every dispatch, for the benchmark's figures

    # The queue's state, for the benchmark and tests.
    @property
    def bounds(self) -> WaitBounds:
        return self.core.bounds

    @property
    def queue(self):
        return self.core.queue

    @property
    def charges(self):
        return self.core.charges

    @property
    def decisions(self) -> dict[str, int]:
        return self.core.decisions

    # ---- the simulator's hooks ----------------------------------------------------------------
    def arrived(self, job: Job, fleet: Fleet, dispatch: Dispatch, shed: Shed) -> None:
        now = fleet.now
        self._expire(fleet, shed)
        placing = _FleetPlacing(self.policy, fleet)
        placement = placing.place(job)
        decision = self.core.arrive(self._waiting(job, fleet), placement, now)
        if decision.action is Action.ADMIT:
            self._dispatch(job, placing.replica[job.job_id], now, dispatch)
            return
        if placement is not None:  # placed but not admitted: the placer must not keep it
            placing.unplace(job)
        if decision.action is Action.SHED:
            self._log_shed(job, parse_tier(job.tier), now, decision, queued=False)
            shed(job)
            return
        self._retry(fleet, dispatch)

    def step_ended(self, fleet: Fleet, changed: bool, dispatch: Dispatch, shed: Shed) -> None:
        """After every step: shed what waited too long; if the step freed room or finished a
        prefill, try the held requests."""
        self._expire(fleet, shed)
        if changed:
            self._retry(fleet, dispatch)

    def finished(self, job: Job, replica: Replica) -> None:
        self.core.finished(job.job_id, gpu_seconds(replica.engine.profile, job.prompt_tokens, job.output_tokens))

    # ---- inside -------------------------------------------------------------------------------
    def _waiting(self, job: Job, fleet: Fleet) -> Waiting:
        return Waiting(job.job_id, job.tenant, parse_tier(job.tier), job.prompt_tokens, job.arrival_s,
                       self.slo.ttft_limit_s(job.prompt_tokens), self._best_idle_ttft(fleet, job),
                       next(r for r in fleet.replicas).engine.profile, job)

    def _retry(self, fleet: Fleet, dispatch: Dispatch) -> None:
        placing = _FleetPlacing(self.policy, fleet)
        self.core.retry(fleet.now, placing, lambda: bool(fleet.with_room()),
                        lambda w, _: self._dispatch(w.payload, placing.replica[w.key], fleet.now, dispatch))

    def _dispatch(self, job: Job, replica: Replica, now: float, dispatch: Dispatch) -> None:
        self.dispatched_at[job.job_id] = now
        dispatch(job, replica)

    def _expire(self, fleet: Fleet, shed: Shed) -> None:
        for w, decision in self.core.expire(fleet.now):
            self._log_shed(w.payload, w.tier, fleet.now, decision, queued=True)
            shed(w.payload)

    @staticmethod
    def _best_idle_ttft(fleet: Fleet, job: Job) -> float:
        return min(idle_ttft_s(replicas[0].engine.profile, job.prompt_tokens)
                   for replicas in fleet.by_pool.values() if replicas
                   if replicas[0].engine.profile.kv_capacity_tokens > job.prompt_tokens)

    def _log_shed(self, job: Job, tier: Tier, now: float, decision: Decision, queued: bool) -> None:
        self.shed_log.append(ShedRecord(job.job_id, job.tenant, tier, now, decision.status,
                                        decision.retry_after_s, queued, decision.expected_wait_s))


class SplitAdmission:
    """Several ingress replicas' fair queues over one fleet, as `router_replicas: N` runs them:
    each arrival goes to one queue (Serve's proxy spreads requests over ingress replicas; here by
    a hash of the request id), and each queue orders, dispatches and sheds only what it holds.
    They share the placement's view of the fleet (the replicas' published state)."""

    def __init__(self, parts: list[FairAdmission]) -> None:
        self.parts = parts

    def _part(self, job: Job) -> FairAdmission:
        return self.parts[zlib.crc32(job.job_id.encode()) % len(self.parts)]

    def arrived(self, job: Job, fleet: Fleet, dispatch: Dispatch, shed: Shed) -> None:
        self._part(job).arrived(job, fleet, dispatch, shed)

    def step_ended(self, fleet: Fleet, changed: bool, dispatch: Dispatch, shed: Shed) -> None:
        for part in self.parts:
            part.step_ended(fleet, changed, dispatch, shed)

    def finished(self, job: Job, replica: Replica) -> None:
        self._part(job).finished(job, replica)

    @property
    def shed_log(self) -> list[ShedRecord]:
        return sorted((r for part in self.parts for r in part.shed_log), key=lambda r: r.at)

    @property
    def dispatched_at(self) -> dict[str, float]:
        return {k: v for part in self.parts for k, v in part.dispatched_at.items()}


class FairPredicted(Predicted):
    """`predicted` placement behind the fair admission queue (one per ingress replica)."""

    name = "fair_predicted"

    def __init__(self, slo: SLO = SLO(), usd_per_hour: Mapping[str, float] | None = None,
                 bounds: WaitBounds = WaitBounds(), rate_window_s: float = 30.0, ingresses: int = 1,
                 **admission) -> None:
        super().__init__(slo, usd_per_hour)
        parts = [FairAdmission(self, slo, bounds, rate_window_s, **admission) for _ in range(ingresses)]
        self.admission = parts[0] if ingresses == 1 else SplitAdmission(parts)

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
