"""Admitted requests per second for ONE tenant across 4 ingress processes.

    PYTHONPATH=. .venv/bin/python -m bench.quota [--quick]

The live path (what the ingress runs by default, `quota_leases: true`): each of 4 processes
(multiprocessing, spawn) runs the ingress's own TenancyGate with IN_FLIGHT requests at a time
(reserve, then settle with the real usage). Admissions come out of the process's quota lease in
memory (router/tenancy/lease_admission.py); each lease sync is one transaction that writes the
rows of every request settled since the last, counts them and sets the lease. The tenant has a
daily token budget the run exhausts (plus a concurrency limit), so the last units go out one
request at a time; every process runs until the budget refuses it for good. This is the last
line's figure. Over-admissions = admitted requests beyond what the budget allows (must be 0); the
ledger and the counters are checked against the count too. Against SQLite (a temp file) and
PostgreSQL (a throwaway server started as tests/postgres.py does, stopped at the end).

The reservation path (`quota_leases: false`): the same gate with one reservation row per request,
reservations and settlements group-committed (router/tenancy/group_commit.py).

For comparison, one transaction per reservation and per settlement (the ingress before group
commits): 4 processes calling QuotaStore.reserve + settle per request for a few seconds.
Last line: `quota tenant_admits_per_s_sqlite=... tenant_admits_per_s_postgres=... over_admitted=...`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import yaml

from bench.report import write_json
from common.protocol import end_event
from router.tenancy.lease_store import LeaseStore
from router.tenancy.quota import Ask, Grant, Limits, day_key
from router.tenancy.store import COMPLETED, Outcome, QuotaStore, RequestInfo

TENANT = "big"
PROCESSES = 4
IN_FLIGHT = 16  # per process: 64 in all, the tenant's concurrency limit
PROMPT, MAX_TOKENS = 100, 50
WORST = PROMPT + MAX_TOKENS
INPUT, COMPLETION = Decimal("0.5") / 1_000_000, Decimal("1.5") / 1_000_000
ASK = Ask(PROMPT, MAX_TOKENS, False, INPUT, COMPLETION)
COST = PROMPT * INPUT + MAX_TOKENS * COMPLETION  # real usage = the worst case: the budget is hit exactly


def _lease_worker(url: str, limits: Limits, name: str, cap_s: float, ready, go, out) -> None:
    out.put(asyncio.run(_gate_loop(url, limits, name, cap_s, ready, go, leases=True)))


def _reserving_worker(url: str, limits: Limits, name: str, cap_s: float, ready, go, out) -> None:
    out.put(asyncio.run(_gate_loop(url, limits, name, cap_s, ready, go, leases=False)))


async def _gate_loop(url: str, limits: Limits, name: str, cap_s: float, ready, go, *, leases: bool) -> dict:
    from router.tenancy.errors import QuotaRefused
    from router.tenancy.gate import TenancyGate, TenancySettings
    from router.tenancy.settlement import Ending

    folder = tempfile.mkdtemp(prefix=f"bench-quota-{name}-")
    tenants, prices = os.path.join(folder, "tenants.yaml"), os.path.join(folder, "prices.yaml")
    with open(tenants, "w") as f:
        yaml.safe_dump({"tenants": {TENANT: {"api_keys": ["sk-big"], "limits": {
            k: v for k, v in vars(limits).items() if v is not None}}}}, f)
    with open(prices, "w") as f:
        yaml.safe_dump({"tiers": {"standard": {"short": {"input": 0.5, "output": 1.5}}}}, f)
    gate = TenancyGate(TenancySettings(tenants, prices, url, pools=("short",), leases=leases))
    tenant = gate.authenticate("sk-big")
    ready.put(name)
    await asyncio.to_thread(go.wait)
    counts = {"admitted": 0, "busy": 0}
    times: list[float] = []
    spent = asyncio.Event()
    stop = time.monotonic() + cap_s

    async def client() -> None:
        while not spent.is_set() and time.monotonic() < stop:
            info = RequestInfo(uuid.uuid4().hex, TENANT, route="chat", model="m", pool="short")
            try:
                account = await gate.reserve(tenant, info, prompt_tokens=PROMPT, max_tokens=MAX_TOKENS, clampable=False)
            except QuotaRefused as exc:
                if exc.refusal.limit == "max_concurrent_requests":  # another process's slot: try again
                    counts["busy"] += 1
                    await asyncio.sleep(0.001)
                    continue
                spent.set()  # the budget refuses for good
                return
            counts["admitted"] += 1
            times.append(time.monotonic())
            account.observe(end_event(finish_reason="stop", prompt_tokens=PROMPT, completion_tokens=MAX_TOKENS,
                                      reasoning_tokens=0))
            await gate.settle(account, Ending.COMPLETED)

    await asyncio.gather(*(client() for _ in range(IN_FLIGHT)))
    await gate.close_leases()
    transactions = sum(g.transactions for g in (*gate._reserving.values(), *gate._settling.values())) + sum(
        h.syncs for h in gate._leased.values())
    gate.store.close()
    return {"name": name, **counts, "transactions": transactions,
            "first": min(times) if times else None, "last": max(times) if times else None}


def _today_worker(url: str, limits: Limits, name: str, seconds: float, ready, go, out) -> None:
    store = QuotaStore(url)
    ready.put(name)
    go.wait()
    admitted = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        info = RequestInfo(uuid.uuid4().hex, TENANT, route="chat", model="m", pool="short")
        if isinstance(store.reserve(info, name, limits, ASK), Grant):
            store.settle(info, Outcome(COMPLETED, PROMPT, MAX_TOKENS, 0, COST))
            admitted += 1
    store.close()
    out.put({"name": name, "admitted": admitted})


def _run(target, url: str, limits: Limits, arg: float) -> tuple[list[dict], float]:
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(url, limits, f"ingress-{i}", arg, ready, go, out))
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        t0 = time.monotonic()
        go.set()
        results = [out.get(timeout=arg + 120) for _ in procs]
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return results, elapsed


def budget_run(worker, url: str, allowed: int, cap_s: float) -> dict:
    """4 processes of `worker` against a budget of `allowed` requests: admitted per second, and
    whether the ledger, the counters and the count agree with the budget."""
    limits = Limits(tokens_per_day=WORST * allowed, max_concurrent_requests=PROCESSES * IN_FLIGHT)
    LeaseStore(url).close()  # the tables, before the processes race to create them
    results, elapsed = _run(worker, url, limits, cap_s)
    admitted = sum(r["admitted"] for r in results)
    firsts = [r["first"] for r in results if r["first"]]
    lasts = [r["last"] for r in results if r["last"]]
    span = max(lasts) - min(firsts) if firsts else elapsed
    store = QuotaStore(url)
    spent = store.spent(TENANT, day_key(datetime.now(timezone.utc)))
    rows = sum(r["requests"] for r in store.totals(tenant=TENANT) if r["status"] == COMPLETED)
    store.close()
    over = max(0, admitted - allowed) + max(0, rows - allowed) + max(0, spent.tokens - limits.tokens_per_day) // WORST
    return {"allowed": allowed, "admitted": admitted, "ledger_rows": rows, "spent_tokens": spent.tokens,
            "limit_tokens": limits.tokens_per_day, "over_admitted": over, "limit_reached": admitted == allowed,
            "seconds": span, "admits_per_s": admitted / span if span > 0 else 0.0,
            "transactions": sum(r.get("syncs", r.get("transactions", 0)) for r in results), "per_process": results}


def today_path(url: str, seconds: float) -> dict:
    limits = Limits(tokens_per_day=10 ** 15, max_concurrent_requests=64)
    QuotaStore(url).close()
    results, elapsed = _run(_today_worker, url, limits, seconds)
    admitted = sum(r["admitted"] for r in results)
    return {"admitted": admitted, "seconds": elapsed, "admits_per_s": admitted / elapsed}


def measure(label: str, make_url, allowed: int, cap_s: float, today_s: float) -> dict:
    runs = {}
    for path, worker, unit in (("live", _lease_worker, "lease syncs"), ("reservations", _reserving_worker, "transactions")):
        print(f"{label}: {path} path, {PROCESSES} processes, budget of {allowed} requests ...", flush=True)
        run = runs[path] = budget_run(worker, make_url(path), allowed, cap_s)
        print(f"{label}: {path} path admitted {run['admitted']} of {run['allowed']} allowed in "
              f"{run['seconds']:.2f} s = {run['admits_per_s']:.0f}/s ({run['transactions']} {unit}), "
              f"ledger rows {run['ledger_rows']}, over-admitted {run['over_admitted']}", flush=True)
    print(f"{label}: one transaction each (reserve, settle), {PROCESSES} processes, {today_s:.0f} s ...", flush=True)
    today = today_path(make_url("today"), today_s)
    print(f"{label}: one transaction each {today['admits_per_s']:.0f}/s ({today['admitted']} in "
          f"{today['seconds']:.1f} s)", flush=True)
    return {**runs, "one_transaction_each": today}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller budget, shorter comparison")
    args = parser.parse_args()
    allowed, cap_s, today_s = (20_000, 30.0, 3.0) if args.quick else (60_000, 60.0, 8.0)
    folder = tempfile.mkdtemp(prefix="bench-quota-")
    results: dict = {"processes": PROCESSES, "quick": args.quick}
    results["sqlite"] = measure("sqlite", lambda name: f"sqlite:///{folder}/{name}.db", allowed, cap_s, today_s)

    from tests.postgres import _Server, create_database, postgres_bindir  # the tests' throwaway server

    bindir = postgres_bindir()
    if bindir is None:
        print("postgres: no server binaries (make postgres-server): skipped", flush=True)
        results["postgres"] = None
    else:
        server = _Server(bindir)
        try:
            server.init()
            server.start()
            print(f"postgres: throwaway server pid {server.pid} on port {server.port}", flush=True)
            results["postgres"] = measure("postgres", lambda name: create_database(server, f"bench_{name}"),
                                          allowed, cap_s, today_s)
        finally:
            server.stop()
            server.remove()
            print("postgres: server stopped", flush=True)
    sqlite_rate = results["sqlite"]["live"]["admits_per_s"]
    pg = results["postgres"]
    pg_rate = pg["live"]["admits_per_s"] if pg else float("nan")
    over = sum(r[path]["over_admitted"] for r in (results["sqlite"], pg) if r for path in ("live", "reservations"))
    results.update(tenant_admits_per_s_sqlite=sqlite_rate, tenant_admits_per_s_postgres=pg_rate, over_admitted=over,
                   target_admits_per_s=5000)
    write_json("quota", results)
    print(f"quota tenant_admits_per_s_sqlite={sqlite_rate:.0f} tenant_admits_per_s_postgres={pg_rate:.0f} "
          f"over_admitted={over}")


if __name__ == "__main__":
    main()
