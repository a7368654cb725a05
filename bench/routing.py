"""Routing policies side by side on the local cluster, then in the fleet simulator.

    .venv/bin/python -m bench.routing [--quick]

Local cluster: a Ray head of its own with stub replicas running the engine model
(deployments/engine_model.py) of 1 H100 (TP 1) and 2 L40S pairs (TP 2), `TIME_SCALE` times faster
than real GPUs, behind the full router. The same seeded workload (bench/workload.py: chats,
retrieved documents, 10k-30k-token documents, long reasoning outputs, shared system prompts)
is replayed open-loop, with Poisson arrivals, against four policies:
  round_robin  one Serve deployment over the mixed replicas, each replica in turn
  pow2         the same deployment with Ray Serve's default power-of-two router
  length_only  our pools (short prompts to the L40S pool, long ones to the H100) without spill,
               Serve's power-of-two inside each pool
  router       the router's default: our pools with spill and TokenLoadRouter (outstanding work in tokens)
Each request streams; its time to first token and time per output token (scaled back to GPU
time) are judged against bench.fleet_sim.SLO. Goodput = requests meeting both per second.
Then the simulator (bench/fleet_sim.py) runs the same comparison at one fleet size in virtual
time. Last line: `routing goodput_ratio_vs_pow2=X sim_goodput_ratio_vs_pow2=Y`.
Writes bench/results/routing.json and routing.png.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import httpx

from bench.fleet_sim import H100_USD_PER_GPU_HOUR, L40S_USD_PER_GPU_HOUR, SLO
from bench.http_timing import Sample, percentile, timed_chat
from bench.sim.policies import POLICIES
from bench.report import figure, save, write_json
from bench.workload import Job, describe, generate

PORT = 8141
KEY = "sk-bench"
# The stub GPUs run 3x faster than real ones. Every millisecond this machine's CPU adds (event
# loop lag, HTTP, the router) counts TIME_SCALE times in GPU time, so the scale stays small.
TIME_SCALE = 3.0
EMIT_INTERVAL_MS = 250  # coalesce stream events: the one machine's CPU is for routing, not SSE
H100, L40S = "H100_TP1", "L40S_TP2"
FLEET = {"long": (H100, 1), "short": (L40S, 2)}  # pool: (GPU profile, replicas)
FLEET_USD_PER_HOUR = H100_USD_PER_GPU_HOUR * 1 + 2 * L40S_USD_PER_GPU_HOUR * 2
OUTPUT_CAP = 1_500  # the local run cuts the longest reasoning traces so every run drains in time
WARMUP_FRACTION = 0.1  # requests arriving in the first 10 % find an empty fleet: not judged


def pool(name: str, gpu, replicas: int, max_model_len: int, router: str, spill: int, **extra) -> dict:
    engine = {"kind": "stub", "gpu": gpu, "time_scale": TIME_SCALE, "emit_interval_ms": EMIT_INTERVAL_MS}
    return {"name": name, "max_model_len": max_model_len, "num_replicas": replicas, "request_router": router,
            "spill_at_outstanding_tokens": spill, "max_ongoing_requests": 96, "engine": engine,
            "accelerator": gpu if isinstance(gpu, str) else "mixed", **extra}


def policy_pools(policy: str) -> list[dict]:
    """The pools each policy runs on: the same five GPUs every time."""
    if policy in ("round_robin", "pow2"):
        # one deployment over mixed nodes; every replica serves the full context (naive setup)
        gpus = [L40S, L40S, H100]
        return [pool("fleet", gpus, 3, 40_960, "round_robin" if policy == "round_robin" else "power_of_two", 10**12)]
    spill = policy == "router"
    router = "token_load" if spill else "power_of_two"
    short_gpu, short_n = FLEET["short"]
    long_gpu, long_n = FLEET["long"]
    # the router spills the L40S pool at ~150k outstanding tokens per replica (its KV holds 200k)
    return [pool("short", short_gpu, short_n, 16_384, router, 300_000 if spill else 10**12, max_prompt_tokens=8_192),
            pool("long", long_gpu, long_n, 40_960, router, 10**12)]


def deploy_all(folder: Path) -> dict[str, str]:
    from ray import serve

    from cluster.local import wait_for_health
    from cluster.app import build_app

    tenants = {"tenants": {"bench": {"api_keys": [KEY]}}}
    prices = {"default_tier": "standard", "tiers": {"standard": {
        name: {"input": 0.5, "output": 1.5} for name in ("fleet", "short", "long")}}}
    (folder / "tenants.yaml").write_text(json.dumps(tenants))
    (folder / "prices.yaml").write_text(json.dumps(prices))
    urls = {}
    for policy in POLICIES:
        args = {"tenants_file": str(folder / "tenants.yaml"), "prices_file": str(folder / "prices.yaml"),
                "ledger_url": f"sqlite:///{folder}/ledger.db", "pools": policy_pools(policy)}
        serve.run(build_app(args), name=policy, route_prefix=f"/{policy}", blocking=False)
        urls[policy] = f"http://127.0.0.1:{PORT}/{policy}"
    for policy, url in urls.items():
        wait_for_health(f"{url}/health", 300)
        print(f"deployed {policy}: {[p['name'] for p in policy_pools(policy)]}", flush=True)
    return urls


_SYSTEM_PROMPTS: dict[str, str] = {}


def body_for(job: Job) -> dict:
    """A chat whose prompt is ~job.prompt_tokens Tekken tokens (" a" is one token; the router
    counts the real figure), with a shared system prompt when the job has one."""
    messages = []
    user_tokens = job.prompt_tokens - 10
    if job.prefix_key:
        system = _SYSTEM_PROMPTS.setdefault(
            job.prefix_key, f"You are assistant {job.prefix_key}." + " a" * max(1, job.prefix_tokens - 10))
        messages.append({"role": "system", "content": system})
        user_tokens -= job.prefix_tokens + 8
    messages.append({"role": "user", "content": f"{job.job_id}:" + " b" * max(1, user_tokens)})
    return {"model": "magistral-small-2506", "messages": messages, "max_tokens": job.output_tokens,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


async def replay(url: str, jobs: list[Job], drain_s: float) -> list[tuple[Job, Sample | None]]:
    """Send each job at its arrival time / TIME_SCALE; give up on what is still running
    `drain_s` after the last arrival (a miss)."""
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits,
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:
        start = time.perf_counter()

        async def one(job: Job) -> Sample:
            await asyncio.sleep(max(0.0, start + job.arrival_s / TIME_SCALE - time.perf_counter()))
            return await timed_chat(client, "/v1/chat/completions", body_for(job))

        tasks = [asyncio.ensure_future(one(job)) for job in jobs]
        last = jobs[-1].arrival_s / TIME_SCALE if jobs else 0.0
        await asyncio.wait(tasks, timeout=max(0.0, start + last + drain_s - time.perf_counter()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [(job, task.result() if task.done() and not task.cancelled() and task.exception() is None else None)
            for job, task in zip(jobs, tasks)]


def judge(policy: str, outcomes: list[tuple[Job, Sample | None]], duration_s: float, slo: SLO) -> dict:
    """Scaled back to GPU time: goodput, TTFT, TPOT, cost per million tokens."""
    measured = [(j, s) for j, s in outcomes if j.arrival_s >= WARMUP_FRACTION * duration_s]
    good, ttfts, tpots, tokens, errors = 0, [], [], 0, 0
    for job, sample in measured:
        if sample is not None and not sample.ok:
            errors += 1
        if sample is None or not sample.ok or sample.ttft_s is None:
            ttfts.append(float("inf"))
            continue
        ttft = sample.ttft_s * TIME_SCALE
        tpot = (sample.tpot_s or 0.0) * TIME_SCALE
        ttfts.append(ttft)
        tpots.append(tpot)
        tokens += job.prompt_tokens + (sample.completion_tokens or 0)
        if ttft <= slo.ttft_limit_s(job.prompt_tokens) and tpot <= slo.tpot_s and sample.completion_tokens == job.output_tokens:
            good += 1
    window = duration_s * (1 - WARMUP_FRACTION)
    hours = duration_s / 3600
    return {"policy": policy, "measured": len(measured), "good": good, "errors": errors,
            "unfinished": sum(1 for _, s in measured if s is None),
            "goodput_rps": good / window, "goodput_fraction": good / max(len(measured), 1),
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
            "tpot_p50_s": percentile(tpots, 50), "tpot_p99_s": percentile(tpots, 99),
            "usd_per_m_tokens": FLEET_USD_PER_HOUR * hours / tokens * 1e6 if tokens else float("inf")}


def run_local(rate_rps: float, duration_s: float, seed: int, drain_s: float) -> tuple[list[dict], dict]:
    import ray
    from ray import serve

    jobs = [dataclasses.replace(j, output_tokens=min(j.output_tokens, OUTPUT_CAP))
            for j in generate(rate_rps, duration_s, seed)]
    workload = describe(jobs)
    print(f"workload: {len(jobs)} requests over {duration_s:.0f} GPU-seconds at {rate_rps} req/s "
          f"({duration_s / TIME_SCALE:.0f} s here at time scale {TIME_SCALE:g}), outputs cut at {OUTPUT_CAP}",
          flush=True)
    slo = SLO()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as folder:
        ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": PORT})
            urls = deploy_all(Path(folder))
            for policy in POLICIES:
                started = time.monotonic()
                outcomes = asyncio.run(replay(urls[policy], jobs, drain_s))
                row = judge(policy, outcomes, duration_s, slo)
                rows.append(row)
                print(f"{policy:>12}: goodput {row['goodput_rps']:.3f} req/s ({row['good']}/{row['measured']} "
                      f"met the SLO), TTFT p50 {row['ttft_p50_s']:.2f} p99 {row['ttft_p99_s']:.2f} s, TPOT p50 "
                      f"{row['tpot_p50_s'] * 1e3:.0f} p99 {row['tpot_p99_s'] * 1e3:.0f} ms, "
                      f"${row['usd_per_m_tokens']:.3f}/M tokens, {row['unfinished']} unfinished, "
                      f"{row['errors']} errors [{time.monotonic() - started:.0f} s]", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    return rows, workload


# The simulator's comparison load: on its reference fleet (2 H100 + 6 L40S pairs) the highest
# load at which the router still meets the objectives for >= 90 % of requests (`python -m
# bench.fleet_sim` sweeps loads 3.0-5.0; README, Performance, has the whole curve).
SIM_LOAD_RPS = 4.5


def run_simulator(quick: bool) -> dict:
    """The same comparison in virtual time, at the simulator's reference fleet."""
    from bench.fleet_sim import FULL, QUICK, compare_policies, fleet_label, mixed_fleet

    h100, l40s = (QUICK if quick else FULL).reference
    fleet = mixed_fleet(h100, l40s)
    jobs = generate(SIM_LOAD_RPS, FULL.duration_s, seed=0)  # 4 minutes of arrivals, ~20 s to simulate
    started = time.monotonic()
    results = compare_policies(fleet, jobs, SLO(), workers=None)
    print(f"simulator: {fleet_label(fleet)} at {SIM_LOAD_RPS} req/s, {len(jobs)} requests, "
          f"{time.monotonic() - started:.0f} s", flush=True)
    rows = []
    for name, r in results.items():
        rows.append(r.row())
        print(f"{name:>12}: goodput {r.goodput_rps:.3f} req/s ({r.goodput_fraction:.0%}), TTFT p50 "
              f"{r.ttft_p50_s:.2f} p99 {r.ttft_p99_s:.2f} s, TPOT p99 {r.tpot_p99_s * 1e3:.0f} ms, "
              f"${r.usd_per_m_tokens:.3f}/M tokens", flush=True)
    return {"fleet": fleet_label(fleet), "load_rps": SIM_LOAD_RPS, "duration_s": FULL.duration_s, "rows": rows}


def plot(local: list[dict], sim: dict) -> None:
    fig, axes = figure(1, 3, "Routing policies: goodput (TTFT and TPOT objectives met) and TTFT")
    names = [r["policy"] for r in local]
    axes[0].bar(names, [r["goodput_rps"] for r in local], color="tab:blue")
    axes[0].set_title(f"local cluster: 1 H100 + 2 L40S pairs (stub, x{TIME_SCALE:g})\ngoodput (req/s)")
    sim_rows = {r["policy"]: r for r in sim["rows"]}
    axes[1].bar(list(sim_rows), [r["goodput_rps"] for r in sim_rows.values()], color="tab:green")
    axes[1].set_title(f"simulator: {sim['fleet']} at {sim['load_rps']} req/s\ngoodput (req/s)")
    width = 0.4
    xs = range(len(names))
    axes[2].bar([x - width / 2 for x in xs], [100 * r["goodput_fraction"] for r in local], width, label="local")
    axes[2].bar([x + width / 2 for x in xs], [100 * sim_rows[n]["goodput_fraction"] for n in names], width,
                label="simulator")
    axes[2].set_xticks(list(xs), names)
    axes[2].set_title("requests meeting both objectives (%)")
    axes[2].legend()
    save(fig, "routing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (< 5 min)")
    parser.add_argument("--rate", type=float, default=1.2, help="requests per GPU-second on the local fleet")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    duration = 105.0 if args.quick else 360.0  # GPU-seconds of arrivals (35 s / 120 s here)
    local, workload = run_local(args.rate, duration, args.seed, drain_s=12.0 if args.quick else 30.0)
    sim = run_simulator(args.quick)
    by_policy = {r["policy"]: r for r in local}
    sim_by_policy = {r["policy"]: r for r in sim["rows"]}
    ratio = by_policy["router"]["goodput_rps"] / max(by_policy["pow2"]["goodput_rps"], 1e-9)
    sim_ratio = sim_by_policy["router"]["goodput_rps"] / max(sim_by_policy["pow2"]["goodput_rps"], 1e-9)
    write_json("routing", {"quick": args.quick, "time_scale": TIME_SCALE, "local_fleet": FLEET,
                           "local_rate_rps": args.rate, "local_duration_s": duration, "workload": workload,
                           "slo": SLO().model_dump(), "local": local, "simulator": sim,
                           "goodput_ratio_vs_pow2": ratio, "sim_goodput_ratio_vs_pow2": sim_ratio})
    plot(local, sim)
    print(f"routing goodput_ratio_vs_pow2={ratio:.3f} sim_goodput_ratio_vs_pow2={sim_ratio:.3f}")


if __name__ == "__main__":
    main()
