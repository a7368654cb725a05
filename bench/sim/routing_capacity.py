"""Routing capacity in the simulator: for each fleet mix and policy, the highest offered rate at
which >= 90 % of requests meet the objectives (bench/sim/capacity.py), on several seeds, with
reasoning-length outputs (median 2.5k, p99 ~11k tokens); and on the reference fleet, the same on
the prefix-heavy workload (bench.workload.PREFIX_HEAVY_MIX: 48 tenants, each with its own 2k-6k
token system prompt, multi-turn chats; its working set exceeds one replica's prefix cache and
fits the fleet's), after a warm-up long enough for conversations to reach steady state.

    .venv/bin/python -m bench.sim.routing_capacity [--quick] [--workers N]

Policies: round_robin and pow2 (Ray Serve's default) over one deployment of mixed replicas;
prefix_affinity (like Ray Serve LLM's PrefixCacheAffinityRouter); router (the previous live rule:
pools by prompt length, spill on outstanding tokens); predicted (router.routing.placer over every
replica of every pool, with the router's memory of prefixes). Seeds 1-3 are reported; the
predictor was tuned on seeds 101-103.
Last line: `routing_capacity ref_ratio=... skewed_ratio=... min_ratio_over_mixes=... prefix_ratio=...`
(predicted over pow2, median over seeds of the per-seed ratios).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from bench.report import write_json
from bench.sim.capacity import CapacityRun
from bench.workload import PREFIX_HEAVY_MIX, REASONING_MIX, describe, generate

REFERENCE, SKEWED = (2, 6), (6, 2)
PREFIX_POLICIES = ("pow2", "prefix_affinity", "predicted")
# The prefix-heavy runs: a warm-up for conversations to reach steady state (their turns come a
# minute or more apart), then the judged window.
PREFIX_WARMUP_S, PREFIX_WINDOW_S = 360.0, 180.0
QUICK_PREFIX_WARMUP_S, QUICK_PREFIX_WINDOW_S = 240.0, 120.0


def _capacity(run: CapacityRun) -> float:
    return run()


def _median_ratio(caps: list[float], pow2: list[float]) -> float:
    return statistics.median(a / b if b else float("inf") for a, b in zip(caps, pow2))


def measure(quick: bool = False, workers: int = 2) -> dict:
    """Every capacity search, printed as it ends and as tables; the figures as a dict."""
    seeds = (1,) if quick else (1, 2, 3)
    duration = 120.0 if quick else 180.0
    mixes = (REFERENCE, SKEWED) if quick else ((0, 8), REFERENCE, (4, 4), SKEWED, (8, 0))
    sweep_policies = ("pow2", "router", "predicted")
    warmup, window = (QUICK_PREFIX_WARMUP_S, QUICK_PREFIX_WINDOW_S) if quick else (PREFIX_WARMUP_S, PREFIX_WINDOW_S)
    prefix_duration = warmup + window
    # The prefix-heavy searches take longest: first.
    prefix_runs = [CapacityRun(*REFERENCE, p, seed, duration_s=prefix_duration, mix=PREFIX_HEAVY_MIX, high=8.0,
                               warmup_fraction=warmup / prefix_duration)
                   for p in PREFIX_POLICIES for seed in seeds]
    runs = [CapacityRun(h, l, p, seed, duration_s=duration, mix=REASONING_MIX, high=6.0)
            for (h, l) in mixes for p in sweep_policies for seed in seeds]
    if not quick:
        runs += [CapacityRun(*REFERENCE, p, seed, duration_s=duration, mix=REASONING_MIX, high=6.0)
                 for p in ("round_robin", "prefix_affinity") for seed in seeds]
    runs = prefix_runs + runs
    print(f"workload (2 req/s sample): {describe(generate(2.0, duration, 1, REASONING_MIX))}")
    sample = [j for j in generate(4.0, prefix_duration, 1, PREFIX_HEAVY_MIX) if j.arrival_s >= warmup]
    print(f"prefix-heavy workload (4 req/s nominal, judged window of a sample): {describe(sample)}; "
          f"{len({j.prefix_key for j in sample})} tenants, {len({j.job_id.split('t')[0] for j in sample})} "
          f"conversations, {warmup:.0f} s warm-up + {window:.0f} s judged")
    started = time.perf_counter()
    print(f"{len(runs)} capacity searches on {workers} workers ...", flush=True)
    capacities: list[float] = [0.0] * len(runs)
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(_capacity, run): i for i, run in enumerate(runs)}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            capacities[i] = future.result()
            run = runs[i]
            label = "prefix-heavy " if run.mix is PREFIX_HEAVY_MIX else ""
            print(f"  [{done}/{len(runs)} {time.perf_counter() - started:5.0f}s] {label}{run.h100} H100 + "
                  f"{run.l40s} L40S {run.policy:<16} seed {run.seed}: {capacities[i]:.2f} req/s", flush=True)
    table: dict[tuple[int, int], dict[str, list[float]]] = {}
    prefix: dict[str, list[float]] = {}
    for run, cap in zip(runs, capacities):
        if run.mix is PREFIX_HEAVY_MIX:
            prefix.setdefault(run.policy, []).append(cap)
        else:
            table.setdefault((run.h100, run.l40s), {}).setdefault(run.policy, []).append(cap)

    def ratio(mix, policy="predicted") -> float:
        return _median_ratio(table[mix][policy], table[mix]["pow2"])

    print(f"\ncapacity (req/s at >= 90 % within the objectives), seeds {seeds}: min / median / max")
    rows = []
    for mix, by_policy in table.items():
        for policy, caps in by_policy.items():
            r = ratio(mix, policy)
            rows.append({"h100": mix[0], "l40s": mix[1], "policy": policy, "capacity_by_seed": caps,
                         "ratio_vs_pow2_median": round(r, 3)})
            print(f"  {mix[0]} H100 + {mix[1]} L40S  {policy:<16} {min(caps):5.2f} {statistics.median(caps):5.2f} "
                  f"{max(caps):5.2f}   x{r:4.2f} pow2 (median of per-seed ratios)")
    print(f"\nprefix-heavy workload on {REFERENCE[0]} H100 + {REFERENCE[1]} L40S, capacity per seed {seeds} "
          f"(nominal req/s): min / median / max")
    prefix_rows = []
    for policy, caps in prefix.items():
        r = _median_ratio(caps, prefix["pow2"])
        per_seed = [round(a / b, 2) if b else float("inf") for a, b in zip(caps, prefix["pow2"])]
        prefix_rows.append({"h100": REFERENCE[0], "l40s": REFERENCE[1], "policy": policy, "capacity_by_seed": caps,
                            "ratio_vs_pow2_by_seed": per_seed, "ratio_vs_pow2_median": round(r, 3)})
        print(f"  {policy:<16} {' '.join(f'{c:5.2f}' for c in caps)}   {min(caps):5.2f} {statistics.median(caps):5.2f} "
              f"{max(caps):5.2f}   x{r:4.2f} pow2 (per seed {per_seed})")
    return {"seeds": seeds, "duration_s": duration, "rows": rows,
            "prefix": {"mix": "PREFIX_HEAVY_MIX", "warmup_s": warmup, "window_s": window, "rows": prefix_rows},
            "ref_ratio": ratio(REFERENCE), "skewed_ratio": ratio(SKEWED), "min_ratio": min(ratio(m) for m in table),
            "prefix_ratio": _median_ratio(prefix["predicted"], prefix["pow2"]),
            "wall_s": round(time.perf_counter() - started, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, two mixes, 2-minute windows")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    result = measure(args.quick, args.workers)
    write_json("routing_capacity", result)
    print(f"routing_capacity ref_ratio={result['ref_ratio']:.3f} skewed_ratio={result['skewed_ratio']:.3f} "
          f"min_ratio_over_mixes={result['min_ratio']:.3f} prefix_ratio={result['prefix_ratio']:.3f}")


if __name__ == "__main__":
    main()
