"""One simulation: routing policies over heterogeneous GPU pools, in virtual time.

Discrete events (arrivals, replica step ends) on a heap; each replica is one
common.engine_model.EngineModel taking steps back to back while it holds work. Requests that
no replica can take (every candidate at max_ongoing_requests) wait in the router's FIFO and are
retried when a slot frees. A policy with an `admission` (bench/sim/fair_admission.py) replaces
that FIFO with its own queue discipline: it sees every arrival and step end, dispatches through
the loop and may shed (refuse) requests. Goodput counts requests meeting both TTFT and TPOT
objectives.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from bench.sim.fleets import SLO, PoolSpec, fleet_label, fleet_usd_per_hour
from bench.sim.policies import REJECTED, Fleet, Policy, Replica, make_policy
from bench.workload import CONTEXT_CAP, Job
from common.engine_model import EngineModel


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
    shed: int = 0  # refused by the policy's admission queue (misses)

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
        # A queue discipline in front of the policy (None: the FIFOs above).
        self.admission = getattr(policy, "admission", None)
        self.shed = 0

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
                self.fleet.now = self.now
                self._step_ended(self.fleet.replicas[at])
            else:
                self.now = self.fleet.now = arrival_t
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
        if self.admission is not None:
            self.admission.arrived(job, self.fleet, self._dispatch, self._shed)
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
        replica.engine.add(job.job_id, job.prompt_tokens, output, chain=job.prefix_chain)
        self.fleet.hold(replica)
        self.policy.on_route(job, replica)
        if not replica.busy:
            self.kicked.append(replica)

    def _shed(self, job: Job) -> None:
        """The admission queue refused `job` (at arrival or after its bounded wait): a miss."""
        judged = int(self.judged[self.index[job.job_id]])
        self.shed += judged
        self.misses += judged
        self.judged_left -= judged

    def _step_ended(self, replica: Replica) -> None:
        """Apply a finished step: first tokens, finishes (a slot frees: retry the FIFOs), tokens."""
        result, replica.pending, replica.busy = replica.pending, None, False
        self.preemptions += len(result.preempted)
        now, index, judged = self.now, self.index, self.judged
        in_window = self.warmup <= now < self.duration
        freed = started = False
        for request_id, step in result.requests.items():  # the hot loop: once per request per step
            self.tokens_out += step.tokens
            if in_window:
                self.output_in_window += step.tokens
            if step.first_token:
                started = True
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
        if self.admission is not None:
            self.admission.step_ended(self.fleet, freed or started, self._dispatch, self._shed)
        elif freed:
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
            unfinished=int((judged & ~done).sum()) - self.rejected - self.shed, rejected=self.rejected,
            truncated=self.truncated,
            preemptions=self.preemptions, tokens_out=self.tokens_out, share_by_pool=share,
            replicas={p.name: p.replicas for p in self.specs}, steps=self.steps, virtual_s=self.now,
            wall_s=time.perf_counter() - started,
            aborted=self.give_up is not None and self.misses > self.give_up, shed=self.shed)
