"""Many simulations: in parallel processes (each simulation is single-threaded and independent).

Policy comparisons on one fleet, sweeps over fleets, and the search for the cheapest fleet that
meets a goodput target.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache

from bench.sim.fleets import SLO, PoolSpec, fleet_usd_per_hour, mixed_fleet
from bench.sim.policies import POLICIES
from bench.sim.simulator import Result, simulate
from bench.workload import Job, generate


@lru_cache(maxsize=8)
def cached_jobs(rate_rps: float, duration_s: float, seed: int) -> tuple[Job, ...]:
    """bench.workload.generate, once per process: a worker regenerates a Run's jobs, not unpickles them."""
    return tuple(generate(rate_rps, duration_s, seed))


@dataclass(frozen=True)
class Run:
    """One simulation, small enough to send to a worker process (jobs are regenerated there)."""

    h100: int
    l40s: int
    rate_rps: float
    policy: str
    duration_s: float
    seed: int = 0
    slo: SLO = SLO()
    give_up_fraction: float | None = None  # abort once this share of judged requests missed

    def __call__(self) -> Result:
        jobs = cached_jobs(self.rate_rps, self.duration_s, self.seed)
        give_up = None
        if self.give_up_fraction is not None:
            give_up = int(self.give_up_fraction * sum(0.25 * self.duration_s <= j.arrival_s for j in jobs))
        return simulate(mixed_fleet(self.h100, self.l40s), jobs, self.policy, self.slo,
                        duration_s=self.duration_s, seed=self.seed, give_up_after_misses=give_up)


def _call(run: Callable[[], Result]) -> Result:
    return run()


def run_all(runs: Sequence[Callable[[], Result]], workers: int | None = None,
            progress: Callable[[str], None] | None = print) -> list[Result]:
    """Results in the order of `runs`; `workers` processes (default: one per core, 1 = in process)."""
    workers = min(workers or os.cpu_count() or 1, len(runs)) or 1
    results: list[Result | None] = [None] * len(runs)
    started = time.perf_counter()

    def report(i: int, r: Result) -> None:
        results[i] = r
        if progress:
            done = sum(x is not None for x in results)
            progress(f"  [{done}/{len(runs)} {time.perf_counter() - started:5.0f}s] {r.fleet:<20} "
                     f"{r.offered_rps:5.2f} rps {r.policy:<12} goodput {r.goodput_fraction:5.1%}"
                     f"{' (aborted)' if r.aborted else ''}  sim {r.wall_s:4.1f}s")

    if workers == 1:
        for i, run in enumerate(runs):
            report(i, run())
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_call, run): i for i, run in enumerate(runs)}
            for future in as_completed(futures):
                report(futures[future], future.result())
    return results  # type: ignore[return-value]


def compare_policies(fleet: Sequence[PoolSpec], jobs: Sequence[Job], slo: SLO = SLO(),
                     policies: Iterable[str] = POLICIES, workers: int | None = 1, **options) -> dict[str, Result]:
    """Every policy on the same fleet and the same jobs."""
    names = list(policies)
    runs = [lambda name=name: simulate(fleet, jobs, name, slo, **options) for name in names]
    if workers != 1:  # closures do not pickle: send the fleet, jobs and options instead
        runs = [_Simulation(tuple(fleet), tuple(jobs), name, slo, options) for name in names]
    return dict(zip(names, run_all(runs, workers, progress=None)))


@dataclass(frozen=True)
class _Simulation:
    fleet: tuple[PoolSpec, ...]
    jobs: tuple[Job, ...]
    policy: str
    slo: SLO
    options: dict

    def __call__(self) -> Result:
        return simulate(self.fleet, self.jobs, self.policy, self.slo, **self.options)


def fleets_by_size(sizes: Iterable[int], h100_share: float) -> list[tuple[int, int]]:
    """(h100, l40s) for each total replica count, at least one of each when the size allows."""
    out = []
    for size in sizes:
        h100 = min(max(round(size * h100_share), 1 if h100_share > 0 else 0), size - (1 if h100_share < 1 else 0))
        out.append((h100, size - h100))
    return out


def fleets_by_share(total: int, h100_counts: Iterable[int]) -> list[tuple[int, int]]:
    return [(h, total - h) for h in h100_counts]


def sweep(load_rps: float, fleets: Iterable[tuple[int, int]], policies: Iterable[str] = POLICIES,
          slo: SLO = SLO(), duration_s: float = 240.0, seed: int = 0, workers: int | None = None) -> list[Result]:
    """Every (h100, l40s) fleet under every policy at one load: results in fleet-major order."""
    runs = [Run(h, l, load_rps, name, duration_s, seed, slo) for h, l in fleets for name in policies]
    return run_all(runs, workers)


def cheapest_fleet(load_rps: float, slo: SLO = SLO(), target_fraction: float = 0.95, policy: str = "router",
                   max_h100: int = 6, max_l40s: int = 12, duration_s: float = 240.0, seed: int = 0,
                   workers: int | None = None, progress: Callable[[str], None] | None = print) -> dict:
    """Lowest $/h (h100, l40s) fleet whose goodput fraction reaches `target_fraction` at `load_rps`.

    Simulates the grid cheapest first (a batch per round, one fleet per worker) and stops at the
    first fleet that passes, so no monotonicity is assumed: for pool-aware policies one more
    L40S replica can hurt. Failing fleets stop early, once their misses exceed what the target
    allows. A fleet must also serve every request: one that rejects long prompts fails.
    """
    grid = sorted(((h, l) for h in range(max_h100 + 1) for l in range(max_l40s + 1) if h + l > 0),
                  key=lambda hl: (fleet_usd_per_hour(mixed_fleet(*hl)), hl))
    tried: list[dict] = []
    batch_size = workers or os.cpu_count() or 1
    for start in range(0, len(grid), batch_size):
        batch = grid[start:start + batch_size]
        results = run_all([Run(h, l, load_rps, policy, duration_s, seed, slo, 1.0 - target_fraction)
                           for h, l in batch], workers, progress)
        for (h, l), r in zip(batch, results):
            passed = not r.aborted and r.rejected == 0 and r.goodput_fraction >= target_fraction
            tried.append({"h100": h, "l40s": l, "usd_per_hour": r.usd_per_hour,
                          "goodput_fraction": r.goodput_fraction, "passed": passed, "aborted": r.aborted})
            if passed:
                return {"policy": policy, "load_rps": load_rps, "target_fraction": target_fraction,
                        "h100": h, "l40s": l, "usd_per_hour": r.usd_per_hour, "result": r.row(), "tried": tried}
    return {"policy": policy, "load_rps": load_rps, "target_fraction": target_fraction, "h100": None,
            "l40s": None, "usd_per_hour": None, "result": None, "tried": tried}
