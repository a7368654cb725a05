"""Routing policies side by side on the local cluster, then their capacity in the fleet simulator.

    .venv/bin/python -m bench.routing [--quick]

Local cluster: a Ray head of its own with stub replicas running the engine model
(common/engine_model.py) of 1 H100 (TP 1) and 2 L40S pairs (TP 2), `TIME_SCALE` times faster
than real GPUs, behind the full router. The same seeded workload (bench/workload.py's reasoning
mix: chats, retrieved documents, 10k-30k-token documents, reasoning-length outputs, shared system
prompts) is replayed open-loop, with Poisson arrivals, against four policies:
  round_robin   one Serve deployment over the mixed replicas, each replica in turn
  pow2          the same deployment with Ray Serve's default power-of-two router
  length_spill  the router's previous rule: short prompts to the L40S pool (16k context), long ones
                to the H100, spill on outstanding tokens, TokenLoadRouter inside a pool
  predicted     the router's default: every replica of both full-context pools predicted by its
                GPU class's engine model (router/routing/placer.py), the best one taken
Each request streams; its time to first token and time per output token (scaled back to GPU
time) are judged against the objectives (common.config.Objectives). Goodput = requests meeting
both per second; a request unfinished at the end counts as a miss. Seeds 1-3 (1 with --quick).
Then the simulator's capacity search (bench/sim/routing_capacity.py: the highest rate at which
>= 90 % of requests meet the objectives, per fleet mix and seed).
Last line: `routing goodput_ratio_vs_pow2=X sim_goodput_ratio_vs_pow2=Y sim_min_ratio_over_mixes=Z
sim_prefix_ratio=W`: X the local goodput of predicted over pow2 (median over seeds), Y the
simulator's capacity ratio on the reference fleet, Z its lowest over the fleet mixes, W on the
prefix-heavy workload.
Writes bench/results/routing.json and routing.png.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.fleet_sim import H100_USD_PER_GPU_HOUR, L40S_USD_PER_GPU_HOUR, SLO
from bench.http_timing import Sample, percentile, timed_chat
from bench.report import figure, save, write_json
from bench.workload import REASONING_MIX, Job, describe, generate

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


LOCAL_POLICIES = ("round_robin", "pow2", "length_spill", "predicted")
USD_PER_HOUR = {H100: H100_USD_PER_GPU_HOUR, L40S: 2 * L40S_USD_PER_GPU_HOUR}


def pool(name: str, gpu, replicas: int, max_model_len: int, router: str, spill: int, **extra) -> dict:
    engine = {"kind": "stub", "gpu": gpu, "time_scale": TIME_SCALE, "emit_interval_ms": EMIT_INTERVAL_MS}
    return {"name": name, "max_model_len": max_model_len, "num_replicas": replicas, "request_router": router,
            "spill_at_outstanding_tokens": spill, "max_ongoing_requests": 96, "engine": engine,
            "accelerator": gpu if isinstance(gpu, str) else "mixed", **extra}


def policy_args(policy: str) -> dict:
    """The pools (and routing settings) each policy runs on: the same five GPUs every time."""
    if policy in ("round_robin", "pow2"):
        # one deployment over mixed nodes; every replica serves the full context (naive setup)
        gpus = [L40S, L40S, H100]
        router = "round_robin" if policy == "round_robin" else "power_of_two"
        return {"pools": [pool("fleet", gpus, 3, 40_960, router, 10**12)]}
    short_gpu, short_n = FLEET["short"]
    long_gpu, long_n = FLEET["long"]
    if policy == "length_spill":
        # the router spills the L40S pool at ~150k outstanding tokens per replica (its KV holds 200k)
        return {"routing": "length_spill",
                "pools": [pool("short", short_gpu, short_n, 16_384, "token_load", 300_000, max_prompt_tokens=8_192),
                          pool("long", long_gpu, long_n, 40_960, "token_load", 10**12)]}
    # predicted: both pools hold the whole context; the objectives run TIME_SCALE times faster too
    slo = SLO()
    objectives = {"ttft_base_s": slo.ttft_base_s / TIME_SCALE, "tpot_s": slo.tpot_s / TIME_SCALE,
                  "ttft_prefill_tokens_per_s": slo.ttft_prefill_tokens_per_s * TIME_SCALE}
    return {"routing": "predicted", "objectives": objectives,
            "pools": [pool("short", short_gpu, short_n, 40_960, "token_load", 10**12, usd_per_hour=USD_PER_HOUR[L40S]),
                      pool("long", long_gpu, long_n, 40_960, "token_load", 10**12, usd_per_hour=USD_PER_HOUR[H100])]}


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
    for policy in LOCAL_POLICIES:
        args = {"tenants_file": str(folder / "tenants.yaml"), "prices_file": str(folder / "prices.yaml"),
                "ledger_url": f"sqlite:///{folder}/ledger.db", **policy_args(policy)}
        serve.run(build_app(args), name=policy, route_prefix=f"/{policy}", blocking=False)
        urls[policy] = f"http://127.0.0.1:{PORT}/{policy}"
    for policy, url in urls.items():
        wait_for_health(f"{url}/health", 300)
        print(f"deployed {policy}: {[p['name'] for p in policy_args(policy)['pools']]}", flush=True)
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


def run_local(rate_rps: float, duration_s: float, seeds: tuple[int, ...], drain_s: float) -> tuple[list[dict], dict]:
    """Every policy on the same jobs, seed after seed; one row per (seed, policy)."""
    import ray
    from ray import serve

    workloads = {seed: [dataclasses.replace(j, output_tokens=min(j.output_tokens, OUTPUT_CAP))
                        for j in generate(rate_rps, duration_s, seed, REASONING_MIX)] for seed in seeds}
    workload = describe(workloads[seeds[0]])
    print(f"workload (seed {seeds[0]}): {workload}", flush=True)
    print(f"{duration_s:.0f} GPU-seconds of arrivals at {rate_rps} req/s ({duration_s / TIME_SCALE:.0f} s here at "
          f"time scale {TIME_SCALE:g}), outputs cut at {OUTPUT_CAP}, seeds {list(seeds)}", flush=True)
    slo = SLO()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as folder:
        ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": PORT})
            urls = deploy_all(Path(folder))
            for seed, jobs in workloads.items():
                for policy in LOCAL_POLICIES:
                    started = time.monotonic()
                    outcomes = asyncio.run(replay(urls[policy], jobs, drain_s))
                    row = {"seed": seed, **judge(policy, outcomes, duration_s, slo)}
                    rows.append(row)
                    print(f"seed {seed} {policy:>12}: goodput {row['goodput_rps']:.3f} req/s ({row['good']}/"
                          f"{row['measured']} met the SLO), TTFT p50 {row['ttft_p50_s']:.2f} p99 {row['ttft_p99_s']:.2f} s,"
                          f" TPOT p50 {row['tpot_p50_s'] * 1e3:.0f} p99 {row['tpot_p99_s'] * 1e3:.0f} ms, "
                          f"${row['usd_per_m_tokens']:.3f}/M tokens, {row['unfinished']} unfinished, "
                          f"{row['errors']} errors [{time.monotonic() - started:.0f} s]", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    return rows, workload


def local_ratio(rows: list[dict], policy: str = "predicted") -> tuple[float, list[float]]:
    """Goodput of `policy` over pow2's, per seed, and their median."""
    by = {(r["seed"], r["policy"]): r["goodput_rps"] for r in rows}
    ratios = [by[(seed, policy)] / max(by[(seed, "pow2")], 1e-9) for seed in sorted({r["seed"] for r in rows})]
    return statistics.median(ratios), ratios


def run_simulator(quick: bool, workers: int) -> dict:
    """Capacity per fleet mix, policy and seed (bench/sim/routing_capacity.py)."""
    from bench.sim import routing_capacity

    return routing_capacity.measure(quick=quick, workers=workers)


def plot(local: list[dict], sim: dict) -> None:
    fig, axes = figure(1, 2, "Routing policies: goodput on the local cluster, capacity in the simulator")
    seeds = sorted({r["seed"] for r in local})
    width = 0.8 / len(seeds)
    for i, seed in enumerate(seeds):
        rows = [r for r in local if r["seed"] == seed]
        axes[0].bar([x + i * width for x in range(len(rows))], [r["goodput_rps"] for r in rows], width,
                    label=f"seed {seed}")
    axes[0].set_xticks([x + width * (len(seeds) - 1) / 2 for x in range(len(LOCAL_POLICIES))], LOCAL_POLICIES)
    axes[0].set_title(f"local: 1 H100 + 2 L40S pairs (stub, x{TIME_SCALE:g})\ngoodput (req/s)")
    axes[0].legend()
    mixes = [r for r in sim["rows"] if r["policy"] == "predicted"]
    labels = [f"{r['h100']}+{r['l40s']}" for r in mixes]
    axes[1].bar(labels, [r["ratio_vs_pow2_median"] for r in mixes], color="tab:green")
    axes[1].axhline(1.0, color="black", linewidth=0.8)
    axes[1].set_title("simulator: predicted capacity / pow2 (H100 + L40S replicas)")
    save(fig, "routing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, shorter runs")
    parser.add_argument("--rate", type=float, default=0.8, help="requests per GPU-second on the local fleet")
    parser.add_argument("--workers", type=int, default=2, help="simulator processes")
    parser.add_argument("--skip-local", action="store_true", help="the simulator only")
    parser.add_argument("--duration", type=float, default=None, help="GPU-seconds of arrivals per local run")
    parser.add_argument("--sim-results", type=Path, default=None,
                        help="take the simulator's figures from this bench.sim.routing_capacity JSON instead of "
                             "running it again (same code, ~20 min saved)")
    args = parser.parse_args()
    seeds = (1,) if args.quick else (1, 2, 3)
    duration = args.duration or (105.0 if args.quick else 240.0)  # GPU-seconds of arrivals (35 s / 80 s here)
    # After the last arrival, long enough for a request that meets its objectives to finish
    # (the longest output at the TPOT objective, plus a long prompt's TTFT): later is a miss.
    drain = (OUTPUT_CAP * SLO().tpot_s + SLO().ttft_limit_s(30_000)) / TIME_SCALE + 5.0
    local, workload = ([], {}) if args.skip_local else run_local(args.rate, duration, seeds, drain_s=drain)
    ratio, per_seed = local_ratio(local) if local else (float("nan"), [])
    if local:
        print(f"local: predicted / pow2 goodput per seed {[round(r, 3) for r in per_seed]}, median {ratio:.3f}")
    sim = json.loads(args.sim_results.read_text()) if args.sim_results else run_simulator(args.quick, args.workers)
    write_json("routing", {"quick": args.quick, "time_scale": TIME_SCALE, "local_fleet": FLEET,
                           "local_rate_rps": args.rate, "local_duration_s": duration, "workload": workload,
                           "slo": SLO().model_dump(), "local": local, "local_ratio_by_seed": per_seed,
                           "simulator": sim, "goodput_ratio_vs_pow2": ratio})
    plot(local, sim)
    print(f"routing goodput_ratio_vs_pow2={ratio:.3f} sim_goodput_ratio_vs_pow2={sim['ref_ratio']:.3f} "
          f"sim_min_ratio_over_mixes={sim['min_ratio']:.3f} sim_prefix_ratio={sim['prefix_ratio']:.3f}")


if __name__ == "__main__":
    main()
