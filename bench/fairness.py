"""The noisy-neighbour benchmark, in the fleet simulator (issue 17): do tenants share a saturated
fleet fairly?

    PYTHONPATH=. .venv/bin/python -m bench.fairness [--quick] [--workers N]

One noisy tenant sends at 10x each quiet tenant's rate, long prompts (half of them retrieval-sized,
a tenth documents) and reasoning-length outputs, all the time; nine quiet tenants send the default
mix (mostly chats) in on/off phases (all on for a minute, then all off for a minute). The fleet is
the reference `mixed_fleet(2, 6)`; the offered load is 1.3x its capacity for this traffic (the
rate at which today's router serves 90 % of it within the objectives, found by bisection on seed
1; --quick uses the figure a full run found). Two policies: `fifo` is today's router (the
`predicted` placement, requests pushed into replicas' queues first come first served) and `fair`
is the same placement behind the fair admission queue (bench/sim/fair_admission.py,
router/fairness).

Printed per policy, pooled over seeds:
- each quiet tenant's share of requests meeting the objectives, against the same tenant alone on
  the fleet (same policy, same requests): target >= 95 % of it;
- work conservation: while the quiet tenants are off (from 10 s after they stop sending), the
  fleet's GPU-seconds served per second against the noisy tenant alone (within 5 %); and the
  noisy tenant's own output tokens per second against alone (lower by the quiet tenants' answers
  still running: a non-preemptive fleet finishes what it started);
- the largest difference of service (GPU-seconds of requests that got their first token) between
  two tenants over any interval in which both were backlogged (had a request waiting for its first
  token), against VTC's bound: twice the largest cost of one request;
- Jain's index over the ten tenants' share meeting the objectives relative to alone (how evenly
  the shortfall is spread: FIFO spreads it evenly too, only much larger).
Last line: `fairness quiet_vs_alone_min=... work_conserving_ratio=... service_gap_over_vtc_bound=...
fifo_quiet_vs_alone_min=...` (the fair policy's figures, then FIFO's quiet figure).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from bench.report import write_json
from bench.sim.fair_admission import make_fair_policy
from bench.sim.fleets import SLO, mixed_fleet
from bench.sim.simulator import simulate
from bench.workload import DEFAULT_MIX, Job, WorkloadMix, generate
from router.fairness.cost import gpu_seconds

REFERENCE = (2, 6)  # H100, L40S pairs
NOISY = "noisy"
QUIET = tuple(f"quiet-{i}" for i in range(1, 10))
NOISY_FACTOR = 10.0  # the noisy tenant's rate over one quiet tenant's (while on)
OVERLOAD = 1.3  # offered load over capacity
# Long prompts (half retrieval-sized, 2k-10k tokens, a tenth documents, 10k-30k) and
# reasoning-length outputs (median 2.5k tokens, p99 ~11k).
NOISY_MIX = WorkloadMix(chat_share=0.40, rag_share=0.50, output_median=2_500.0, output_sigma=0.65,
                        output_range=(16, 20_000))
QUIET_MIX = DEFAULT_MIX  # chats mostly, answers ~900 tokens
POLICIES = ("fair", "fifo")
# Capacity of this traffic on the reference fleet (quiet tenants' rate while on, req/s), as the
# full run measured it on seed 1 (today's router at >= 90 % within the objectives); --quick uses it.
STATED_QUIET_RATE_AT_CAPACITY = 0.125


@dataclass(frozen=True)
class Scenario:
    quiet_rate: float  # req/s of each quiet tenant while on; the noisy tenant sends NOISY_FACTOR x that
    duration_s: float = 480.0
    seed: int = 1
    period_s: float = 120.0  # the quiet tenants' on/off cycle: on for the first half
    on_fraction: float = 0.5
    warmup_fraction: float = 0.25
    quiet: tuple[str, ...] = QUIET
    h100: int = REFERENCE[0]
    l40s: int = REFERENCE[1]

    @property
    def warmup_s(self) -> float:
        return self.warmup_fraction * self.duration_s

    @property
    def mean_rps(self) -> float:
        return self.quiet_rate * (NOISY_FACTOR + len(self.quiet) * self.on_fraction)

    def quiet_on(self, t: float) -> bool:
        return (t % self.period_s) < self.on_fraction * self.period_s

    def off_windows(self, settle_s: float = 10.0) -> list[tuple[float, float]]:
        """The judged stretches with the quiet tenants off, `settle_s` after each switch-off (their
        last requests finish their first tokens)."""
        windows, start = [], 0.0
        while start < self.duration_s:
            off, end = start + self.on_fraction * self.period_s + settle_s, min(start + self.period_s, self.duration_s)
            if off < end and end > self.warmup_s:
                windows.append((max(off, self.warmup_s), end))
            start += self.period_s
        return windows


def tenant_jobs(tenant: str, rate: float, scenario: Scenario, seed: int, mix: WorkloadMix,
                phased: bool) -> list[Job]:
    """One tenant's requests: Poisson at `rate`, kept only while it is on if `phased`."""
    jobs = generate(rate, scenario.duration_s, seed, mix)
    return [dataclasses.replace(j, job_id=f"{tenant}/{j.job_id}", tenant=tenant) for j in jobs
            if not phased or scenario.quiet_on(j.arrival_s)]


def scenario_jobs(scenario: Scenario, tenants: Sequence[str] | None = None) -> list[Job]:
    """Every tenant's requests (or only `tenants`'), in arrival order."""
    seed = scenario.seed * 1000
    jobs = tenant_jobs(NOISY, NOISY_FACTOR * scenario.quiet_rate, scenario, seed, NOISY_MIX, phased=False)
    for k, tenant in enumerate(scenario.quiet, 1):
        jobs += tenant_jobs(tenant, scenario.quiet_rate, scenario, seed + k, QUIET_MIX, phased=True)
    if tenants is not None:
        jobs = [j for j in jobs if j.tenant in tenants]
    return sorted(jobs, key=lambda j: (j.arrival_s, j.job_id))


def make(policy: str, ingresses: int = 1):
    return make_fair_policy(ingresses=ingresses) if policy == "fair" else "predicted"


# ---- one run and what it measured -------------------------------------------------------------
def run(scenario: Scenario, policy: str, tenants: Sequence[str] | None = None, ingresses: int = 1) -> dict:
    """Simulate the scenario (or only `tenants`' requests: a tenant alone) under `policy` (the
    fair one with a queue in each of `ingresses` ingress replicas); the figures the report needs,
    per tenant."""
    jobs = scenario_jobs(scenario, tenants)
    records: list[dict] = []
    p = make(policy, ingresses)
    slo = SLO()
    result = simulate(mixed_fleet(scenario.h100, scenario.l40s), jobs, p, slo, duration_s=scenario.duration_s,
                      warmup_fraction=scenario.warmup_fraction, seed=scenario.seed, records=records)
    good = good_mask(jobs, records, slo)
    judged = np.array([scenario.warmup_s <= j.arrival_s < scenario.duration_s for j in jobs])
    per_tenant = {}
    for tenant in sorted({j.tenant for j in jobs}):
        mine = np.array([j.tenant == tenant for j in jobs])
        per_tenant[tenant] = {"measured": int((mine & judged).sum()), "good": int((mine & judged & good).sum())}
    shed_log = getattr(getattr(p, "admission", None), "shed_log", [])
    for record in shed_log:
        if record.tenant in per_tenant:
            stats = per_tenant[record.tenant]
            stats[f"shed_{record.status}"] = stats.get(f"shed_{record.status}", 0) + 1
    costs = served_costs(jobs, records)
    return {"policy": policy, "seed": scenario.seed, "tenants": per_tenant,
            "off": off_phase_rates(jobs, records, costs, scenario.off_windows()),
            "service_gap_gpu_s": service_gap(jobs, records, costs, (scenario.warmup_s, scenario.duration_s),
                                             {r.job_id: r.at for r in shed_log}),
            "max_request_gpu_s": float(costs[np.isfinite(costs)].max()) if np.isfinite(costs).any() else 0.0,
            "retry_after_s": [r.retry_after_s for r in shed_log],
            "goodput_fraction": result.goodput_fraction, "shed": result.shed, "unfinished": result.unfinished,
            "wall_s": round(result.wall_s, 1)}


def good_mask(jobs: Sequence[Job], records: Sequence[dict], slo: SLO) -> np.ndarray:
    """Per job: finished whole within both objectives."""
    out = []
    for job, r in zip(jobs, records):
        ttft, served = r["first"] - r["arrival"], r["served_output"]
        tpot = (r["finish"] - r["first"]) / (served - 1) if served > 1 else 0.0
        out.append(math.isfinite(r["finish"]) and served == job.output_tokens
                   and ttft <= slo.ttft_limit_s(job.prompt_tokens) and tpot <= slo.tpot_s)
    return np.array(out, dtype=bool)


def served_costs(jobs: Sequence[Job], records: Sequence[dict]) -> np.ndarray:
    """Actual GPU-seconds of each request on the class that served it (inf: never served)."""
    profiles = {p.name: p.profile for p in mixed_fleet(1, 1)}
    return np.array([gpu_seconds(profiles[r["pool"]], j.prompt_tokens, r["served_output"]) if r["pool"] else math.inf
                     for j, r in zip(jobs, records)])


def off_phase_rates(jobs: Sequence[Job], records: Sequence[dict], costs: np.ndarray,
                    windows: Sequence[tuple[float, float]]) -> dict:
    """Inside `windows` (the quiet tenants off), per second: the noisy tenant's output tokens and
    GPU-seconds, and the whole fleet's GPU-seconds (each request's tokens and cost spread evenly
    from its first token to its finish)."""
    noisy_tok = noisy_gpu = fleet_gpu = span = 0.0
    for a, b in windows:
        span += b - a
        for job, r, cost in zip(jobs, records, costs):
            if not math.isfinite(r["first"]):
                continue
            first, finish = r["first"], r["finish"] if math.isfinite(r["finish"]) else b
            if finish <= a or first >= b:
                continue
            share = (min(finish, b) - max(first, a)) / max(finish - first, 1e-9)
            fleet_gpu += cost * share
            if job.tenant == NOISY:
                noisy_gpu += cost * share
                noisy_tok += r["served_output"] * share
    if not span:
        return {"noisy_tok_s": math.nan, "noisy_gpu_s_per_s": math.nan, "fleet_gpu_s_per_s": math.nan}
    return {"noisy_tok_s": noisy_tok / span, "noisy_gpu_s_per_s": noisy_gpu / span,
            "fleet_gpu_s_per_s": fleet_gpu / span}


def _backlog_intervals(arrivals: np.ndarray, firsts: np.ndarray) -> list[tuple[float, float]]:
    """Maximal intervals in which at least one request had arrived and not got its first token."""
    events = sorted([(t, 1) for t in arrivals] + [(t, -1) for t in firsts])
    intervals, pending, start = [], 0, 0.0
    for t, step in events:
        if pending == 0 and step > 0:
            start = t
        pending += step
        if pending == 0 and step < 0 and t > start:
            intervals.append((start, t))
    if pending > 0:
        intervals.append((start, math.inf))
    return intervals


def service_gap(jobs: Sequence[Job], records: Sequence[dict], costs: np.ndarray,
                window: tuple[float, float], shed_at: dict[str, float] | None = None) -> float:
    """The largest |service_u(t1, t2) - service_v(t1, t2)| in GPU-seconds over tenants u, v and
    intervals [t1, t2] inside `window` where both were backlogged (VTC's fairness measure), a
    request's service counted when its first token came. A request waits from its arrival to its
    first token, or to when it was shed (`shed_at`), or to the end."""
    shed_at = shed_at or {}
    tenants = sorted({j.tenant for j in jobs})
    arrivals: dict[str, list[float]] = {t: [] for t in tenants}
    ends: dict[str, list[float]] = {t: [] for t in tenants}
    served: dict[str, list[tuple[float, float]]] = {t: [] for t in tenants}  # (first token time, cost)
    lo, hi = window
    for job, r, cost in zip(jobs, records, costs):
        arrivals[job.tenant].append(job.arrival_s)
        if math.isfinite(r["first"]):
            served[job.tenant].append((r["first"], cost))
            ends[job.tenant].append(r["first"])
        else:
            ends[job.tenant].append(shed_at.get(job.job_id, max(hi, job.arrival_s)))
    backlog = {}
    for t in tenants:
        backlog[t] = [(max(a, lo), min(b, hi)) for a, b in
                      _backlog_intervals(np.array(arrivals[t]), np.array(ends[t]))
                      if b > lo and a < hi]
    best = 0.0
    for i, u in enumerate(tenants):
        for v in tenants[i + 1:]:
            for a, b in _intersections(backlog[u], backlog[v]):
                events = sorted([(f, c) for f, c in served[u] if a < f <= b]
                                + [(f, -c) for f, c in served[v] if a < f <= b])
                running, low, high = 0.0, 0.0, 0.0
                for _, delta in events:
                    running += delta
                    low, high = min(low, running), max(high, running)
                best = max(best, high - low)
    return best


def _intersections(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out, i, j = [], 0, 0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if a < b:
            out.append((a, b))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


# ---- capacity ---------------------------------------------------------------------------------
def passes(scenario: Scenario, target: float = 0.9) -> bool:
    """Today's router serves >= `target` of the scenario's requests within the objectives."""
    jobs = scenario_jobs(scenario)
    judged = sum(scenario.warmup_s <= j.arrival_s < scenario.duration_s for j in jobs)
    r = simulate(mixed_fleet(scenario.h100, scenario.l40s), jobs, "predicted", SLO(), duration_s=scenario.duration_s,
                 warmup_fraction=scenario.warmup_fraction, seed=scenario.seed,
                 give_up_after_misses=int((1 - target) * judged))
    return not r.aborted and r.goodput_fraction >= target


def capacity(duration_s: float, seed: int = 1, low: float = 0.02, high: float = 0.3,
             resolution: float = 0.005) -> float:
    """The quiet tenants' on-rate at which today's router still serves 90 % of the traffic
    (bisection, as bench/sim/capacity.py; the noisy tenant scales with it)."""
    if not passes(Scenario(low, duration_s, seed)):
        return low
    while high - low > resolution:
        mid = round((low + high) / 2, 4)
        ok = passes(Scenario(mid, duration_s, seed))
        print(f"  capacity probe: quiet {mid:.4f} req/s each ({Scenario(mid).mean_rps:.2f} req/s in all): "
              f"{'served' if ok else 'not served'}", flush=True)
        low, high = (mid, high) if ok else (low, mid)
    return low


# ---- the report -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    scenario: Scenario
    policy: str
    tenants: tuple[str, ...] | None  # None: everyone; else who runs alone
    ingresses: int = 1

    @property
    def label(self) -> str:
        who = "everyone" if self.tenants is None else f"{self.tenants[0]} alone"
        return f"seed {self.scenario.seed} {self.policy:<4} {who}"


def _run(task: Task) -> dict:
    return run(task.scenario, task.policy, task.tenants, task.ingresses)


def jain(values: Sequence[float]) -> float:
    xs = [v for v in values if math.isfinite(v)]
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if xs and any(xs) else math.nan


def _share(stats: dict) -> float:
    return stats["good"] / stats["measured"] if stats["measured"] else math.nan


def summarize(policy: str, mixed: list[dict], alone: dict[str, list[dict]], tenants: Sequence[str]) -> dict:
    """Pooled over seeds: per tenant the share within the objectives, shared vs alone; the
    off-phase throughputs; the largest service gap against the VTC bound; Jain's index."""
    def pooled(runs: list[dict], tenant: str) -> dict:
        return {k: sum(r["tenants"][tenant][k] for r in runs) for k in ("measured", "good")}

    per_tenant = {}
    for tenant in tenants:
        shared, own = _share(pooled(mixed, tenant)), _share(pooled(alone[tenant], tenant))
        sheds = {k: sum(r["tenants"][tenant].get(k, 0) for r in mixed) for k in ("shed_429", "shed_503")}
        per_tenant[tenant] = {"shared": shared, "alone": own, "ratio": shared / own if own else math.nan, **sheds}
    quiet = [per_tenant[t]["ratio"] for t in tenants if t != NOISY]
    off_fleet = sum(r["off"]["fleet_gpu_s_per_s"] for r in mixed)
    off_noisy_tok = sum(r["off"]["noisy_tok_s"] for r in mixed)
    alone_gpu = sum(r["off"]["noisy_gpu_s_per_s"] for r in alone[NOISY])
    alone_tok = sum(r["off"]["noisy_tok_s"] for r in alone[NOISY])
    gaps = [r["service_gap_gpu_s"] / (2 * r["max_request_gpu_s"]) for r in mixed if r["max_request_gpu_s"]]
    retry = sorted(x for r in mixed for x in r["retry_after_s"])
    return {"policy": policy, "per_tenant": per_tenant,
            "quiet_vs_alone_min": min(quiet), "quiet_vs_alone_median": statistics.median(quiet),
            "work_conserving_ratio": off_fleet / alone_gpu if alone_gpu else math.nan,
            "noisy_tokens_vs_alone": off_noisy_tok / alone_tok if alone_tok else math.nan,
            "service_gap_gpu_s": max(r["service_gap_gpu_s"] for r in mixed),
            "vtc_bound_gpu_s": 2 * max(r["max_request_gpu_s"] for r in mixed),
            "service_gap_over_vtc_bound": max(gaps) if gaps else math.nan,
            "jain": jain([per_tenant[t]["ratio"] for t in tenants]),
            "goodput_fraction": statistics.mean(r["goodput_fraction"] for r in mixed),
            "shed": sum(r["shed"] for r in mixed),
            "retry_after_s": {"count": len(retry), "median": retry[len(retry) // 2] if retry else None,
                              "max": retry[-1] if retry else None}}


def print_summary(s: dict, tenants: Sequence[str]) -> None:
    print(f"\n{s['policy']}: share of requests within the objectives, shared vs alone (pooled over seeds)")
    for t in tenants:
        row = s["per_tenant"][t]
        print(f"  {t:<9} {row['shared']:6.1%} vs {row['alone']:6.1%} alone  = {row['ratio']:5.3f}"
              f"   shed 429: {row['shed_429']:4d}  503: {row['shed_503']:4d}")
    print(f"  quiet tenants vs alone: min {s['quiet_vs_alone_min']:.3f}, median {s['quiet_vs_alone_median']:.3f} "
          f"(target >= 0.95)")
    print(f"  quiet tenants off: fleet GPU-s/s {s['work_conserving_ratio']:.3f} of the noisy tenant's alone "
          f"(target >= 0.95); the noisy tenant's own tokens/s {s['noisy_tokens_vs_alone']:.3f} of alone")
    print(f"  largest service gap between two backlogged tenants: {s['service_gap_gpu_s']:.1f} GPU-s; VTC bound "
          f"(2 x the largest request) {s['vtc_bound_gpu_s']:.1f} GPU-s; worst run "
          f"{s['service_gap_over_vtc_bound']:.3f} of its bound")
    print(f"  Jain's index over the tenants' shared/alone ratios: {s['jain']:.3f}; "
          f"goodput {s['goodput_fraction']:.1%}; "
          f"shed {s['shed']}; Retry-After median {s['retry_after_s']['median']} s, max {s['retry_after_s']['max']} s")


def measure(quick: bool = False, workers: int = 2, quiet_rate: float | None = None,
            measure_capacity: bool = False, seeds: tuple[int, ...] | None = None, ingresses: int = 1) -> dict:
    seeds = seeds or ((1,) if quick else (1, 2, 3))
    duration = 360.0 if quick else 480.0
    started = time.perf_counter()
    if measure_capacity:
        print("capacity (today's router, >= 90 % within the objectives, seed 1) ...", flush=True)
        at_capacity = capacity(duration)
    else:
        at_capacity = STATED_QUIET_RATE_AT_CAPACITY
    rate = quiet_rate if quiet_rate is not None else OVERLOAD * at_capacity
    sample = Scenario(rate, duration)
    print(f"capacity: quiet tenants at {at_capacity:.3f} req/s each ({Scenario(at_capacity).mean_rps:.2f} req/s "
          f"offered in all){' (stated; --measure-capacity measures it)' if not measure_capacity else ''}; "
          f"running at {rate:.3f} req/s each, the noisy tenant at {NOISY_FACTOR * rate:.2f} req/s, "
          f"{sample.mean_rps:.2f} req/s on average; {duration:.0f} s per run, seeds {seeds}", flush=True)
    tenants = (NOISY,) + QUIET
    tasks = [Task(Scenario(rate, duration, seed), policy, who, ingresses)
             for who in (None, (NOISY,), *((t,) for t in QUIET)) for seed in seeds for policy in POLICIES]
    print(f"{len(tasks)} simulations on {workers} workers ...", flush=True)
    outcomes: list[dict] = []
    with ProcessPoolExecutor(workers) as pool:
        for done, (task, out) in enumerate(zip(tasks, pool.map(_run, tasks)), 1):
            outcomes.append(out)
            if task.tenants is None or task.tenants == (NOISY,):
                print(f"  [{done}/{len(tasks)} {time.perf_counter() - started:5.0f}s] {task.label}: "
                      f"{out['goodput_fraction']:.1%} within the objectives, {out['shed']} shed", flush=True)
    summaries = {}
    for policy in POLICIES:
        mixed = [o for t, o in zip(tasks, outcomes) if t.policy == policy and t.tenants is None]
        alone = {tenant: [o for t, o in zip(tasks, outcomes) if t.policy == policy and t.tenants == (tenant,)]
                 for tenant in tenants}
        summaries[policy] = summarize(policy, mixed, alone, tenants)
        print_summary(summaries[policy], tenants)
    return {"seeds": seeds, "ingresses": ingresses, "duration_s": duration, "quiet_rate_at_capacity": at_capacity, "quiet_rate": rate,
            "noisy_rate": NOISY_FACTOR * rate, "mean_rps": sample.mean_rps, "summaries": summaries,
            "wall_s": round(time.perf_counter() - started, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 6-minute runs, the stated capacity")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--measure-capacity", action="store_true",
                        help="bisect today's router's capacity for this traffic first (the full run always does; "
                             "--quick otherwise uses the stated figure)")
    parser.add_argument("--quiet-rate", type=float,
                        help="each quiet tenant's on-rate (req/s), instead of 1.3x capacity")
    parser.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")),
                        help="comma-separated seeds (default 1,2,3; --quick 1), e.g. ones the gates were not tuned on")
    parser.add_argument("--ingresses", type=int, default=1,
                        help="fair queues, one per ingress replica, each given a share of the arrivals "
                             "(router_replicas: N); default 1")
    args = parser.parse_args(argv)
    if args.ingresses < 1:
        parser.error("--ingresses must be at least 1")
    result = measure(args.quick, args.workers, args.quiet_rate,
                     (args.measure_capacity or not args.quick) and args.quiet_rate is None, args.seeds,
                     args.ingresses)
    write_json("fairness" if args.ingresses == 1 else f"fairness_ingresses_{args.ingresses}", result)
    fair, fifo = result["summaries"]["fair"], result["summaries"]["fifo"]
    print(f"fairness quiet_vs_alone_min={fair['quiet_vs_alone_min']:.3f} "
          f"work_conserving_ratio={fair['work_conserving_ratio']:.3f} "
          f"service_gap_over_vtc_bound={fair['service_gap_over_vtc_bound']:.3f} "
          f"fifo_quiet_vs_alone_min={fifo['quiet_vs_alone_min']:.3f}")


if __name__ == "__main__":
    main()
