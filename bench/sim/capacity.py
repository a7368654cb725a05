"""Capacity: the highest offered rate at which a policy still serves >= 90 % of requests within
the objectives, per fleet, policy and seed (bisection over rates; a run stops early once its
misses exceed what 90 % allows). Rejections and unfinished requests count as misses."""

from __future__ import annotations

from dataclasses import dataclass

from bench.sim.fleets import SLO, mixed_fleet
from bench.sim.simulator import simulate
from bench.workload import DEFAULT_MIX, ConversationMix, WorkloadMix, generate

TARGET = 0.9


@dataclass(frozen=True)
class CapacityRun:
    """One bisection, small enough to send to a worker process."""

    h100: int
    l40s: int
    policy: str
    seed: int
    duration_s: float = 240.0
    mix: WorkloadMix | ConversationMix = DEFAULT_MIX
    low: float = 0.25  # req/s assumed served (checked)
    high: float = 16.0  # req/s assumed not served
    resolution: float = 0.1  # req/s
    slo: SLO = SLO()
    warmup_fraction: float = 0.25  # of duration_s: served, not judged (conversations need minutes)

    def passes(self, rate: float) -> bool:
        jobs = generate(rate, self.duration_s, self.seed, self.mix)
        judged = sum(self.warmup_fraction * self.duration_s <= j.arrival_s < self.duration_s for j in jobs)
        r = simulate(mixed_fleet(self.h100, self.l40s), jobs, self.policy, self.slo, duration_s=self.duration_s,
                     warmup_fraction=self.warmup_fraction, seed=self.seed,
                     give_up_after_misses=int((1 - TARGET) * judged))
        return not r.aborted and r.goodput_fraction >= TARGET

    def __call__(self) -> float:
        """The capacity in req/s (0.0 when even `low` is not served)."""
        if not self.passes(self.low):
            return 0.0
        low, high = self.low, self.high
        while high - low > self.resolution:
            mid = round((low + high) / 2, 3)
            low, high = (mid, high) if self.passes(mid) else (low, mid)
        return low
