"""Fleet simulator: routing policies over heterogeneous GPU pools, in virtual time.

    .venv/bin/python -m bench.fleet_sim [--quick]

Discrete events (arrivals, replica step ends) on a heap; each replica is one
common.engine_model.EngineModel taking steps back to back while it holds work. Requests that
no replica can take (every candidate at max_ongoing_requests) wait in the router's FIFO and are
retried when a slot frees. Goodput counts requests meeting both TTFT and TPOT objectives.

Writes bench/results/fleet_sim.json and PNG plots next to it. --quick is a smoke run (2-minute
windows, small sweeps): too short for steady state, do not quote its figures.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

from bench.policies import POLICIES, REJECTED, Fleet, Policy, Replica, make_policy
from bench.report import save, write_json
from bench.workload import CONTEXT_CAP, Job, describe, generate
from common.engine_model import H100_TP1, L40S_TP2, EngineModel, GPUProfile
from router.routing.pools import PoolLimits


# GPU prices: ASSUMPTIONS, round on-demand figures (us-east-1, 2025), not quotes.
# H100 80 GB: p5.48xlarge (8x H100 SXM) at ~$55/h after AWS's mid-2025 price cut -> ~$7 per GPU-hour.
H100_USD_PER_GPU_HOUR = 7.0
# L40S 48 GB: g6e.12xlarge (4x L40S) at ~$10.5/h -> ~$2.6 per GPU-hour.
L40S_USD_PER_GPU_HOUR = 2.6


@dataclass(frozen=True)
class PoolSpec:
    name: str
    profile: GPUProfile
    replicas: int
    limits: PoolLimits
    hourly_usd: float  # per replica (all its GPUs)
    max_ongoing_requests: int = 64  # Serve's cap on requests one replica holds


# configs/production.yaml sets spill thresholds per pool (short 400 000, long 1 000 000) for its
# reference fleet of 2 short replicas and 1 long one. A fixed pool-wide number would make a big
# pool spill almost empty, so the simulator scales them per replica from that reference.
SHORT_SPILL_PER_REPLICA = 400_000 // 2
LONG_SPILL_PER_REPLICA = 1_000_000


def short_pool(replicas: int) -> PoolSpec:
    """configs/production.yaml pool "short": 2x L40S TP2, 16k context, prompts up to 8k."""
    limits = PoolLimits("short", max_model_len=16_384, max_prompt_tokens=8_192,
                        spill_at_outstanding_tokens=SHORT_SPILL_PER_REPLICA * max(replicas, 1))
    return PoolSpec("short", L40S_TP2, replicas, limits, 2 * L40S_USD_PER_GPU_HOUR, max_ongoing_requests=96)


def long_pool(replicas: int) -> PoolSpec:
    """configs/production.yaml pool "long": H100 TP1, the full 40 960-token context."""
    limits = PoolLimits("long", max_model_len=CONTEXT_CAP, max_prompt_tokens=CONTEXT_CAP,
                        spill_at_outstanding_tokens=LONG_SPILL_PER_REPLICA * max(replicas, 1))
    return PoolSpec("long", H100_TP1, replicas, limits, H100_USD_PER_GPU_HOUR, max_ongoing_requests=64)


def mixed_fleet(h100: int, l40s: int) -> tuple[PoolSpec, ...]:
    """`h100` long-pool replicas and `l40s` short-pool replicas, cheapest pool first; empty pools left out."""
    return tuple(p for p in (short_pool(l40s), long_pool(h100)) if p.replicas > 0)


def fleet_label(fleet: Sequence[PoolSpec]) -> str:
    return "+".join(f"{p.replicas}x{p.name}" for p in fleet)


def fleet_usd_per_hour(fleet: Sequence[PoolSpec]) -> float:
    return sum(p.replicas * p.hourly_usd for p in fleet)


@dataclass(frozen=True)
class SLO:
    ttft_base_s: float = 1.0  # a chat should start answering within a second...
    ttft_prefill_tokens_per_s: float = 10_000.0  # ...plus a prefill allowance so long documents are judged fairly
    tpot_s: float = 0.080  # 12.5 tokens/s: reading speed, and long <think> traces still finish in minutes

    def ttft_limit_s(self, prompt_tokens: int) -> float:
        return self.ttft_base_s + prompt_tokens / self.ttft_prefill_tokens_per_s


@dataclass(frozen=True)
class Result:
    policy: str
    fleet: str
    usd_per_hour: float
    offered_rps: float
    measured: int  # requests arriving after the warm-up, judged against the SLO
    good: int
    goodput_rps: float
    goodput_fraction: float
    ttft_p50_s: float  # inf: more than that share never got a first token
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    throughput_tok_s: float  # prompt + output tokens served per second in the measured window
    output_tok_s: float
    usd_per_m_tokens: float  # fleet $/h x the measured window / tokens served in it x 1e6
    usd_per_m_output_tokens: float
    unfinished: int  # measured requests not finished when the run stopped (misses)
    rejected: int  # no pool holds them (pool-aware policies only; misses)
    truncated: int  # cut at the pool's context limit before their natural end (misses)
    preemptions: int
    tokens_out: int  # output tokens emitted over the whole run (every request, warm-up and drain too)
    share_by_pool: dict = field(default_factory=dict)  # measured requests served per pool
    replicas: dict = field(default_factory=dict)  # replicas per pool
    steps: int = 0
    virtual_s: float = 0.0
    wall_s: float = 0.0
    aborted: bool = False  # stopped early: misses already exceeded the allowed budget

    def row(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def build_fleet(fleet: Sequence[PoolSpec]) -> Fleet:
    replicas = [Replica(f"{p.name}-{i}", p.name, p.max_ongoing_requests, EngineModel(p.profile))
                for p in fleet for i in range(p.replicas)]
    return Fleet([p.limits for p in fleet], replicas)


def simulate(fleet: Sequence[PoolSpec], jobs: Sequence[Job], policy: Policy | str, slo: SLO = SLO(), *,
             duration_s: float | None = None, warmup_fraction: float = 0.25, drain_s: float | None = None,
             seed: int = 0, give_up_after_misses: int | None = None, records: list[dict] | None = None) -> Result:
    """Run `jobs` (in arrival order) through `fleet` under `policy`, in virtual time.

    duration_s: the arrival window (default: the last arrival); requests arriving in its first
    `warmup_fraction` are served but not judged. After the last arrival the run goes on until
    every judged request finished or `drain_s` passed (default 900 s: the longest output, 12k
    tokens, at the TPOT objective); requests unfinished then are misses.
    give_up_after_misses: stop once that many judged requests missed (pass/fail searches).
    records: if a list is given, one dict per job is appended (replica, arrival, first token,
    finish, output tokens served).
    """
    started = time.perf_counter()
    policy = make_policy(policy, seed) if isinstance(policy, str) else policy
    duration = duration_s if duration_s is not None else (jobs[-1].arrival_s if jobs else 0.0)
    run = _EventLoop(fleet, jobs, policy, slo, duration, warmup_fraction * duration,
                     duration + (drain_s if drain_s is not None else 900.0), give_up_after_misses)
    run.run()
    if records is not None:
        records.extend(run.records())
    return run.result(started)


class _EventLoop:
    """One simulation's state: the fleet, the router's FIFOs, the event heap, per-request times."""

    def __init__(self, fleet: Sequence[PoolSpec], jobs: Sequence[Job], policy: Policy, slo: SLO,
                 duration: float, warmup: float, stop_at: float, give_up_after_misses: int | None):
        self.specs, self.jobs, self.policy, self.slo = tuple(fleet), jobs, policy, slo
        self.duration, self.warmup, self.stop_at = duration, warmup, stop_at
        self.give_up = give_up_after_misses
        self.fleet = build_fleet(fleet)
        # The context a request may fill: its pool's limit, or the full cap for fleet-wide policies.
        self.limit_of = {p.name: p.limits.context_limit(CONTEXT_CAP) if policy.respects_pool_limits else CONTEXT_CAP
                         for p in fleet}
        n = len(jobs)
        self.index = {job.job_id: i for i, job in enumerate(jobs)}
        self.prompt = np.array([j.prompt_tokens for j in jobs], dtype=np.int64)
        self.arrival = np.array([j.arrival_s for j in jobs])
        self.served_output = np.zeros(n, dtype=np.int64)
        self.first = np.full(n, math.inf)
        self.finish = np.full(n, math.inf)
        self.replica_of = np.full(n, None, dtype=object)
        self.judged = (self.arrival >= warmup) & (self.arrival < duration)
        self.ttft_limit = slo.ttft_base_s + self.prompt / slo.ttft_prefill_tokens_per_s
        self.judged_left = int(self.judged.sum())  # judged requests neither finished nor rejected
        self.rejected = self.truncated = self.preemptions = self.steps = self.misses = 0
        self.output_in_window = self.prompt_in_window = self.tokens_out = 0
        self.queues: dict[str, deque[Job]] = {}  # the router's FIFOs, one per policy queue key
        self.events: list[tuple[float, int, int]] = []  # (step end, tie-breaker, replica index)
        self.seq = 0
        self.kicked: list[Replica] = []  # replicas that may need a step started
        self.now = 0.0

    def run(self) -> None:
        jobs, events, n = self.jobs, self.events, len(self.jobs)
        next_arrival = 0
        while True:
            arrival_t = jobs[next_arrival].arrival_s if next_arrival < n else math.inf
            step_t = events[0][0] if events else math.inf
            if arrival_t == math.inf and (step_t == math.inf or self.judged_left == 0):
                return
            if step_t <= arrival_t:
                self.now, _, at = heapq.heappop(events)
                if self.now > self.stop_at:
                    return
                self._step_ended(self.fleet.replicas[at])
            else:
                self.now = arrival_t
                self._arrived(jobs[next_arrival])
                next_arrival += 1
            self._start_steps()
            if self.give_up is not None and self.misses > self.give_up:
                return

    def _arrived(self, job: Job) -> None:
        key = self.policy.queue(job, self.fleet)
        if key == REJECTED:
            judged = int(self.judged[self.index[job.job_id]])
            self.rejected += judged
            self.misses += judged
            self.judged_left -= judged
            return
        queue = self.queues.setdefault(key, deque())
        replica = None if queue else self.policy.choose(job, self.fleet)  # FIFO: no overtaking
        if replica is None:
            queue.append(job)
        else:
            self._dispatch(job, replica)

    def _dispatch(self, job: Job, replica: Replica) -> None:
        i = self.index[job.job_id]
        output = min(job.output_tokens, self.limit_of[replica.pool] - job.prompt_tokens)
        self.served_output[i] = output
        self.replica_of[i] = replica
        self.truncated += int(output < job.output_tokens and self.judged[i])
        replica.engine.add(job.job_id, job.prompt_tokens, output, job.prefix_key, job.prefix_tokens)
        self.fleet.hold(replica)
        self.policy.on_route(job, replica)
        if not replica.busy:
            self.kicked.append(replica)

    def _step_ended(self, replica: Replica) -> None:
        """Apply a finished step: first tokens, finishes (a slot frees: retry the FIFOs), tokens."""
        result, replica.pending, replica.busy = replica.pending, None, False
        self.preemptions += len(result.preempted)
        now, index, judged = self.now, self.index, self.judged
        in_window = self.warmup <= now < self.duration
        freed = False
        for request_id, step in result.requests.items():  # the hot loop: once per request per step
            self.tokens_out += step.tokens
            if in_window:
                self.output_in_window += step.tokens
            if step.first_token:
                i = index[request_id]
                self.first[i] = now
                if in_window:
                    self.prompt_in_window += int(self.prompt[i])
                if judged[i] and now - self.arrival[i] > self.ttft_limit[i]:
                    self.misses += 1
            if step.finished:
                self._finished(index[request_id], replica)
                freed = True
        if not replica.engine.idle:
            self.kicked.append(replica)
        if freed:
            self._retry_waiting()

    def _finished(self, i: int, replica: Replica) -> None:
        if self.finish[i] != math.inf:
            raise RuntimeError(f"{self.jobs[i].job_id} finished twice")
        self.finish[i] = self.now
        self.fleet.release(replica)
        self.policy.on_finish(self.jobs[i], replica)
        if self.judged[i]:
            self.judged_left -= 1
            # A TTFT miss was counted at the first token; count the other misses now.
            if self.first[i] - self.arrival[i] <= self.ttft_limit[i] and not self._complete_on_time(i):
                self.misses += 1

    def _complete_on_time(self, i: int) -> bool:
        served = self.served_output[i]
        return served == self.jobs[i].output_tokens and (
            served <= 1 or (self.finish[i] - self.first[i]) / (served - 1) <= self.slo.tpot_s)

    def _retry_waiting(self) -> None:
        for queue in self.queues.values():
            while queue:
                replica = self.policy.choose(queue[0], self.fleet)
                if replica is None:
                    break
                self._dispatch(queue.popleft(), replica)

    def _start_steps(self) -> None:
        for replica in self.kicked:
            if replica.busy or replica.engine.idle:
                continue
            result = replica.engine.step()
            if result.duration_s <= 0.0:
                raise RuntimeError(f"{replica.replica_id} holds requests but scheduled nothing")
            replica.pending, replica.busy = result, True
            self.seq += 1
            self.steps += 1
            heapq.heappush(self.events, (self.now + result.duration_s, self.seq, replica.index))
        self.kicked.clear()

    def records(self) -> list[dict]:
        return [{"job_id": j.job_id, "replica": r.replica_id if r else None, "pool": r.pool if r else None,
                 "arrival": float(self.arrival[i]), "first": float(self.first[i]), "finish": float(self.finish[i]),
                 "served_output": int(self.served_output[i])}
                for i, (j, r) in enumerate(zip(self.jobs, self.replica_of))]

    def result(self, started: float) -> Result:
        judged = self.judged
        with np.errstate(invalid="ignore"):  # inf - inf for requests that never started
            ttft = self.first - self.arrival
            tpot = np.where(self.served_output > 1,
                            (self.finish - self.first) / np.maximum(self.served_output - 1, 1), 0.0)
        done = np.isfinite(self.finish)
        complete = self.served_output == np.array([j.output_tokens for j in self.jobs], dtype=np.int64)
        good = int((judged & done & complete & (ttft <= self.ttft_limit) & (tpot <= self.slo.tpot_s)).sum())
        measured = int(judged.sum())
        window_s = max(self.duration - self.warmup, 1e-9)
        usd = fleet_usd_per_hour(self.specs)
        window_usd = usd * window_s / 3600
        tokens = self.output_in_window + self.prompt_in_window

        def pct(values: np.ndarray, q: float) -> float:
            return float(np.percentile(values, q, method="higher")) if len(values) else math.nan

        share: dict[str, int] = {}
        for replica in self.replica_of[judged]:
            name = replica.pool if replica else "none"
            share[name] = share.get(name, 0) + 1
        return Result(
            policy=self.policy.name, fleet=fleet_label(self.specs), usd_per_hour=usd,
            offered_rps=round(len(self.jobs) / self.duration, 3) if self.duration else 0.0,
            measured=measured, good=good, goodput_rps=good / window_s, goodput_fraction=good / max(measured, 1),
            ttft_p50_s=pct(ttft[judged], 50), ttft_p99_s=pct(ttft[judged], 99),
            tpot_p50_s=pct(tpot[judged & done], 50), tpot_p99_s=pct(tpot[judged & done], 99),
            throughput_tok_s=tokens / window_s, output_tok_s=self.output_in_window / window_s,
            usd_per_m_tokens=window_usd / tokens * 1e6 if tokens else math.inf,
            usd_per_m_output_tokens=window_usd / self.output_in_window * 1e6 if self.output_in_window else math.inf,
            unfinished=int((judged & ~done).sum()) - self.rejected, rejected=self.rejected, truncated=self.truncated,
            preemptions=self.preemptions, tokens_out=self.tokens_out, share_by_pool=share,
            replicas={p.name: p.replicas for p in self.specs}, steps=self.steps, virtual_s=self.now,
            wall_s=time.perf_counter() - started,
            aborted=self.give_up is not None and self.misses > self.give_up)


# --- Many simulations: in parallel processes (each simulation is single-threaded and independent).

@lru_cache(maxsize=8)
def _jobs(rate_rps: float, duration_s: float, seed: int) -> tuple[Job, ...]:
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
        jobs = _jobs(self.rate_rps, self.duration_s, self.seed)
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


def cheapest_fleet(load_rps: float, slo: SLO = SLO(), target_fraction: float = 0.95, policy: str = "ours",
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


# --- The report: `python -m bench.fleet_sim [--quick]`.

@dataclass(frozen=True)
class Plan:
    """What one report runs. The reference fleet is a few H100s and L40S replicas near capacity."""

    duration_s: float  # arrival window of every run; the first quarter is warm-up
    reference: tuple[int, int]  # (h100, l40s)
    loads: tuple[float, ...]  # offered loads for the reference fleet (req/s), every policy
    load: float  # the load of the size and share sweeps and the cheapest-fleet search
    sweep_policies: tuple[str, ...]
    sizes: tuple[int, ...]  # total replicas of the size sweep
    size_h100_share: float
    share_total: int  # total replicas of the share sweep
    share_h100: tuple[int, ...]
    cheapest_policies: tuple[str, ...]
    cheapest_grid: tuple[int, int]  # max h100, max l40s
    seeds: tuple[int, ...]  # more seeds for ours vs pow2 near ours' capacity
    scale: tuple[int, int, float, float]  # h100, l40s, load, arrival window: simulator speed only


FULL = Plan(duration_s=240.0, reference=(2, 6), loads=(3.0, 3.5, 4.0, 4.5, 5.0), load=4.0,
            sweep_policies=("pow2", "length_only", "ours"), sizes=(4, 8, 12, 16), size_h100_share=0.25,
            share_total=8, share_h100=(0, 2, 4, 6, 8), cheapest_policies=("ours", "pow2"), cheapest_grid=(6, 10),
            seeds=(1, 2), scale=(75, 225, 400.0, 20.0))
QUICK = Plan(duration_s=120.0, reference=(2, 6), loads=(4.5,), load=4.0, sweep_policies=("pow2", "ours"),
             sizes=(4, 8), size_h100_share=0.25, share_total=8, share_h100=(0, 2, 4),
             cheapest_policies=("ours",), cheapest_grid=(2, 6), seeds=(), scale=(25, 75, 120.0, 10.0))


def _table(results: Iterable[Result]) -> str:
    head = (f"{'fleet':<18}{'rps':>6} {'policy':<12}{'goodput':>9}{'good/s':>8}{'TTFT p50':>9}{'p99':>8}"
            f"{'TPOT p50':>9}{'p99':>7}{'tok/s':>8}{'$/Mtok':>8}{'$/Mout':>8}{'preempt':>8}")
    lines = [head]
    for r in results:
        lines.append(f"{r.fleet:<18}{r.offered_rps:>6.2f} {r.policy:<12}{r.goodput_fraction:>9.1%}{r.goodput_rps:>8.2f}"
                     f"{r.ttft_p50_s:>9.2f}{r.ttft_p99_s:>8.1f}{r.tpot_p50_s * 1e3:>8.0f}m{r.tpot_p99_s * 1e3:>6.0f}m"
                     f"{r.throughput_tok_s:>8.0f}{r.usd_per_m_tokens:>8.2f}{r.usd_per_m_output_tokens:>8.2f}"
                     f"{r.preemptions:>8}")
    return "\n".join(lines)


def _ratio(ours: Result, other: Result) -> float:
    return ours.goodput_rps / other.goodput_rps if other.goodput_rps else math.inf


def _plot(size_rows: list[Result], share_rows: list[Result], load_rows: list[Result], plan: Plan) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    color = {name: f"C{i}" for i, name in enumerate(POLICIES)}  # one colour per policy in every plot

    def lines(ax, rows: list[Result], x: Callable[[Result], float], y: Callable[[Result], float]) -> None:
        for policy in dict.fromkeys(r.policy for r in rows):
            points = sorted((x(r), y(r)) for r in rows if r.policy == policy)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=policy, color=color[policy])

    def replicas(r: Result) -> int:
        return sum(r.replicas.values())

    def h100_share(r: Result) -> float:
        return r.replicas.get("long", 0) / replicas(r)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines(ax, size_rows, replicas, lambda r: r.goodput_rps)
    ax.axhline(plan.load, color="grey", linestyle=":", label="offered load")
    ax.set(xlabel=f"replicas ({plan.size_h100_share:.0%} H100, rest 2xL40S)", ylabel="goodput (req/s meeting SLO)",
           title=f"Goodput vs fleet size at {plan.load:g} req/s")
    ax.legend()
    save(fig, "fleet_size")
    written.append("fleet_size.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    lines(left, share_rows, h100_share, lambda r: r.goodput_fraction)
    lines(right, share_rows, h100_share, lambda r: 3600 * r.goodput_rps / r.usd_per_hour)
    left.set(xlabel=f"H100 share of {plan.share_total} replicas", ylabel="goodput fraction",
             title=f"Goodput at {plan.load:g} req/s")
    right.set(xlabel=f"H100 share of {plan.share_total} replicas", ylabel="good requests per $",
              title="Goodput per dollar")
    left.legend()
    save(fig, "h100_share")
    written.append("h100_share.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines(ax, load_rows, lambda r: r.offered_rps, lambda r: r.goodput_rps)
    ax.set(xlabel="offered load (req/s)", ylabel="goodput (req/s meeting SLO)",
           title=f"Goodput vs load, {load_rows[0].fleet}")
    ax.legend()
    save(fig, "load")
    written.append("load.png")
    return written


def _capacity(rows: dict[tuple[float, str], Result], loads: Sequence[float], policy: str, fraction: float) -> float | None:
    """The highest swept load at which `policy` still serves `fraction` of requests within the SLO."""
    return max((rate for rate in loads if rows[rate, policy].goodput_fraction >= fraction), default=None)


def _load_section(plan: Plan, workers: int | None, report: dict) -> list[Result]:
    h, l = plan.reference
    print(f"\n1/5 load sweep on the reference fleet {fleet_label(mixed_fleet(h, l))} "
          f"(${fleet_usd_per_hour(mixed_fleet(h, l)):.1f}/h), seed 0")
    runs = [Run(h, l, rate, name, plan.duration_s) for rate in plan.loads for name in POLICIES]
    rows = run_all(runs, workers)
    print(_table(rows))
    by_load = {(run.rate_rps, run.policy): r for run, r in zip(runs, rows)}
    ratios = {rate: round(_ratio(by_load[rate, "ours"], by_load[rate, "pow2"]), 3) for rate in plan.loads}
    capacity = {name: _capacity(by_load, plan.loads, name, 0.9) for name in POLICIES}
    print(f"ours/pow2 goodput by nominal load: {ratios}")
    print(f"highest load served >= 90 % within the SLO: {capacity}")
    report |= {"load_sweep": [r.row() for r in rows], "ours_over_pow2_by_load": ratios, "capacity_at_90": capacity}

    # The meaningful comparison: the highest load ours still serves >= 90 % (near its capacity),
    # on other seeds too, since one 4-minute window is a small sample.
    near = capacity["ours"]
    if near is not None and plan.seeds:
        print(f"ours/pow2 at {near:g} req/s on seeds {plan.seeds}:")
        extra = run_all([Run(h, l, near, name, plan.duration_s, seed) for seed in plan.seeds
                         for name in ("ours", "pow2")], workers, progress=None)
        seeds = {0: ratios[near]} | {seed: round(_ratio(extra[2 * k], extra[2 * k + 1]), 3)
                                     for k, seed in enumerate(plan.seeds)}
        for k, seed in enumerate(plan.seeds):
            print(f"  seed {seed}: ours {extra[2 * k].goodput_fraction:.1%} pow2 {extra[2 * k + 1].goodput_fraction:.1%}"
                  f" -> {seeds[seed]:.2f}x")
        report["ours_over_pow2_near_capacity"] = {"load": near, "by_seed": seeds}
    return rows


def _cheapest_section(plan: Plan, slo: SLO, workers: int | None, report: dict) -> None:
    print(f"\n4/5 cheapest fleet for 95 % goodput at {plan.load:g} req/s (grid up to {plan.cheapest_grid[0]} H100 "
          f"x {plan.cheapest_grid[1]} L40S-TP2 replicas)")
    report["cheapest"] = {}
    for name in plan.cheapest_policies:
        found = cheapest_fleet(plan.load, slo, 0.95, name, *plan.cheapest_grid, duration_s=plan.duration_s,
                               workers=workers, progress=None)
        report["cheapest"][name] = found
        where = (f"{found['h100']}x H100 + {found['l40s']}x L40S-TP2 at ${found['usd_per_hour']:.1f}/h"
                 if found["h100"] is not None else "none in the grid")
        print(f"  {name:<5}: {where} ({len(found['tried'])} fleets simulated)")


def _scale_section(plan: Plan, slo: SLO, report: dict) -> None:
    h, l, rate, window = plan.scale
    print(f"\n5/5 simulator speed: {h + l} replicas, {rate:g} req/s for {window:g} s of arrivals (no drain)")
    jobs = generate(rate, window, seed=0)
    big = simulate(mixed_fleet(h, l), jobs, "ours", slo, duration_s=window, warmup_fraction=0.0, drain_s=0.0)
    print(f"  {len(jobs)} requests, {big.steps:,} engine steps, {big.tokens_out:,} tokens in {big.wall_s:.1f} s "
          f"({big.wall_s / max(big.tokens_out, 1) * 1e6:.1f} us per generated token, "
          f"{big.virtual_s / big.wall_s:.2f} virtual s per wall s)")
    report["scale"] = big.row() | {"requests": len(jobs)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sweeps and shorter runs (< 1 min)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    slo = SLO()
    report: dict = {"plan": asdict(plan), "slo": asdict(slo),
                    "assumptions": {"h100_usd_per_gpu_hour": H100_USD_PER_GPU_HOUR,
                                    "l40s_usd_per_gpu_hour": L40S_USD_PER_GPU_HOUR,
                                    "short_spill_per_replica": SHORT_SPILL_PER_REPLICA,
                                    "long_spill_per_replica": LONG_SPILL_PER_REPLICA},
                    "section_wall_s": {}}
    report["workload"] = describe(list(_jobs(plan.load, plan.duration_s, 0)))
    print(f"workload at {plan.load:g} req/s over {plan.duration_s:g} s: {json.dumps(report['workload'])}")

    def timed(name: str, section: Callable[[], object]):
        t = time.perf_counter()
        out = section()
        report["section_wall_s"][name] = round(time.perf_counter() - t, 1)
        return out

    load_rows = timed("load", lambda: _load_section(plan, args.workers, report))
    print(f"\n2/5 fleet size sweep at {plan.load:g} req/s ({plan.size_h100_share:.0%} H100)")
    size_rows = timed("size", lambda: sweep(plan.load, fleets_by_size(plan.sizes, plan.size_h100_share),
                                            plan.sweep_policies, slo, plan.duration_s, workers=args.workers))
    print(_table(size_rows))
    print(f"\n3/5 H100 share sweep, {plan.share_total} replicas at {plan.load:g} req/s")
    share_rows = timed("share", lambda: sweep(plan.load, fleets_by_share(plan.share_total, plan.share_h100),
                                              plan.sweep_policies, slo, plan.duration_s, workers=args.workers))
    print(_table(share_rows))
    report |= {"size_sweep": [r.row() for r in size_rows], "share_sweep": [r.row() for r in share_rows]}
    timed("cheapest", lambda: _cheapest_section(plan, slo, args.workers, report))
    timed("scale", lambda: _scale_section(plan, slo, report))

    report["plots"] = _plot(size_rows, share_rows, load_rows, plan)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write_json("fleet_sim", report)
    print(f"\nwrote fleet_sim.json and {', '.join(report['plots'])} in {report['wall_s']:.0f} s "
          f"(sections: {report['section_wall_s']})")


if __name__ == "__main__":
    main()
