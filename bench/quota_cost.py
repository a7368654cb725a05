"""What the quota path adds to one request: reserve before dispatch + settle after, in-process.

    .venv/bin/python bench/quota_cost.py [--requests 500] [--postgres-url postgresql://...]

Runs the ingress's own TenancyGate, both ways: admitting out of quota leases (the default:
router/tenancy/lease_admission.py, the settlement awaited until its lease's sync commits) and
with one reservation per request (reserve -> settle, group-committed on the gate's thread pool:
router/tenancy/group_commit.py), against SQLite in a temp dir, and PostgreSQL when a URL is given, for a tenant with a
requests-per-minute limit (the costlier path: it reads the minute window) and one with a daily
token budget. Side by side: an empty hop through the same thread pool, the floor any database
work pays. Prints p50 / p99 in ms, sequentially and with 32 requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid

import yaml

from router.tenancy.gate import TenancyGate, TenancySettings
from router.tenancy.settlement import Ending
from router.tenancy.store import RequestInfo

TENANTS = {"tenants": {
    "rpm": {"api_keys": ["sk-bench-rpm"], "limits": {"requests_per_minute": 10_000_000}},
    "budget": {"api_keys": ["sk-bench-budget"], "limits": {"tokens_per_day": 10 ** 15}},
}}


def pct(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1e3


async def one(gate: TenancyGate, tenant) -> None:
    info = RequestInfo(uuid.uuid4().hex, tenant.name, "bench", "chat", "m", "short")
    meter = await gate.reserve(tenant, info, prompt_tokens=100, max_tokens=50, clampable=False)
    meter.prompt_tokens, meter.completion_tokens = 100, 50
    await gate.settle(meter, Ending.COMPLETED)


async def measure(gate: TenancyGate, tenant, n: int, concurrency: int) -> list[float]:
    samples: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def timed(fn):
        async with sem:
            t = time.perf_counter()
            await fn()
            samples.append(time.perf_counter() - t)

    if tenant is None:  # the floor: one empty hop through the same pool, twice (reserve + settle)
        loop = asyncio.get_running_loop()

        async def fn():
            await loop.run_in_executor(gate._db, lambda: None)
            await loop.run_in_executor(gate._db, lambda: None)
    else:
        async def fn():
            await one(gate, tenant)
    await asyncio.gather(*(timed(fn) for _ in range(n)))
    return samples


async def bench(url: str, n: int, leases: bool) -> None:
    folder = tempfile.mkdtemp(prefix="quota-bench-")
    tenants, prices = os.path.join(folder, "tenants.yaml"), os.path.join(folder, "prices.yaml")
    with open(tenants, "w") as f:
        yaml.safe_dump(TENANTS, f)
    with open(prices, "w") as f:
        yaml.safe_dump({"tiers": {"standard": {"short": {"input": 0.5, "output": 1.5}}}}, f)
    gate = TenancyGate(TenancySettings(tenants, prices, url, leases=leases))
    directory = gate.tenants.get()
    rows = []
    for label, tenant in (("empty hop x2", None), ("rpm tenant", directory.tenants["rpm"]),
                          ("budget tenant", directory.tenants["budget"])):
        for concurrency in (1, 32):
            await measure(gate, tenant, 50, concurrency)  # warm up
            samples = await measure(gate, tenant, n, concurrency)
            rows.append((label, concurrency, pct(samples, 0.5), pct(samples, 0.99), statistics.mean(samples) * 1e3))
    backend = url.split(":", 1)[0]
    how = "admitted out of quota leases, settled by their syncs" if leases else "reserve + settle, group-committed"
    print(f"\n{backend}: {n} requests per row ({how})")
    print(f"{'path':>14} {'in flight':>9} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for label, c, p50, p99, mean in rows:
        print(f"{label:>14} {c:>9} {p50:>8.3f} {p99:>8.3f} {mean:>8.3f}")
    await gate.close_leases()
    gate.store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--postgres-url", help="also measure PostgreSQL (e.g. a throwaway server)")
    args = parser.parse_args()
    for leases in (True, False):
        asyncio.run(bench(f"sqlite:///{tempfile.mkdtemp(prefix='quota-bench-')}/ledger.db", args.requests, leases))
        if args.postgres_url:
            asyncio.run(bench(args.postgres_url, args.requests, leases))


if __name__ == "__main__":
    main()
