"""Admitted requests per second for ONE tenant across 4 ingress processes, through quota leases.

    PYTHONPATH=. .venv/bin/python -m bench.quota [--quick]

Each of 4 processes (multiprocessing, spawn) holds a lease of the same tenant (LeaseHolder:
router/tenancy/lease_store.py) and admits + settles in a tight loop: admit in memory, finish with
the real usage, and sync when one is due (every `settle_batch` settlements or `settle_s`, free
units low, renewal), each sync one transaction that writes the ledger rows, counts them and sets
the lease. The tenant has a daily token budget the run exhausts (plus a concurrency limit), so the
last units go out one request at a time; every process runs until the budget refuses it for good.
Over-admissions = admitted requests beyond what the budget allows (must be 0); the ledger and the
counters are checked against the count too. Against SQLite (a temp file) and PostgreSQL (a
throwaway server started as tests/postgres.py does, stopped at the end).

For comparison, today's path in the same run: 4 processes calling QuotaStore.reserve + settle per
request (two transactions each, as the ingress does through its thread pool) for a few seconds.
Last line: `quota tenant_admits_per_s_sqlite=... tenant_admits_per_s_postgres=... over_admitted=...`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

from bench.report import write_json
from router.tenancy.lease_store import LeaseHolder, LeaseStore
from router.tenancy.quota import Ask, Grant, Limits, Refusal, day_key
from router.tenancy.store import COMPLETED, Outcome, QuotaStore, RequestInfo

TENANT = "big"
PROCESSES = 4
PROMPT, MAX_TOKENS = 100, 50
WORST = PROMPT + MAX_TOKENS
INPUT, COMPLETION = Decimal("0.5") / 1_000_000, Decimal("1.5") / 1_000_000
ASK = Ask(PROMPT, MAX_TOKENS, False, INPUT, COMPLETION)
COST = PROMPT * INPUT + MAX_TOKENS * COMPLETION  # real usage = the worst case: the budget is hit exactly


def _lease_worker(url: str, limits: Limits, name: str, cap_s: float, ready, go, out) -> None:
    store = LeaseStore(url)
    holder = LeaseHolder(store, TENANT, limits, name)
    ready.put(name)
    go.wait()
    admitted = refused = 0
    first = last = None
    stop = time.monotonic() + cap_s
    while time.monotonic() < stop:
        got = holder.admit(ASK, RequestInfo(uuid.uuid4().hex, TENANT, route="chat", model="m", pool="short"))
        if isinstance(got, Refusal):
            refused += 1
            if not holder.lease.recallable:
                break  # the budget is spent: nothing left anywhere
            time.sleep(0.001)  # another lease's spare is being recalled
            continue
        now = time.monotonic()
        first = first or now
        last = now
        admitted += 1
        holder.finish(got, Outcome(COMPLETED, PROMPT, MAX_TOKENS, 0, COST))
        holder.tick()
    holder.close()
    store.close()
    out.put({"name": name, "admitted": admitted, "refused": refused, "syncs": holder.syncs,
             "first": first, "last": last})


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


def lease_path(url: str, allowed: int, cap_s: float) -> dict:
    limits = Limits(tokens_per_day=WORST * allowed, max_concurrent_requests=64)
    LeaseStore(url).close()  # the tables, before the processes race to create them
    results, elapsed = _run(_lease_worker, url, limits, cap_s)
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
            "syncs": sum(r["syncs"] for r in results), "per_process": results}


def today_path(url: str, seconds: float) -> dict:
    limits = Limits(tokens_per_day=10 ** 15, max_concurrent_requests=64)
    QuotaStore(url).close()
    results, elapsed = _run(_today_worker, url, limits, seconds)
    admitted = sum(r["admitted"] for r in results)
    return {"admitted": admitted, "seconds": elapsed, "admits_per_s": admitted / elapsed}


def measure(label: str, make_url, allowed: int, cap_s: float, today_s: float) -> dict:
    print(f"{label}: lease path, {PROCESSES} processes, budget of {allowed} requests ...", flush=True)
    lease = lease_path(make_url("lease"), allowed, cap_s)
    print(f"{label}: lease path admitted {lease['admitted']} of {lease['allowed']} allowed in "
          f"{lease['seconds']:.2f} s = {lease['admits_per_s']:.0f}/s ({lease['syncs']} syncs), "
          f"ledger rows {lease['ledger_rows']}, over-admitted {lease['over_admitted']}", flush=True)
    print(f"{label}: today's path (reserve + settle per request), {PROCESSES} processes, {today_s:.0f} s ...",
          flush=True)
    today = today_path(make_url("today"), today_s)
    print(f"{label}: today's path {today['admits_per_s']:.0f}/s ({today['admitted']} in {today['seconds']:.1f} s)",
          flush=True)
    return {"lease": lease, "today": today}


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
    sqlite_rate = results["sqlite"]["lease"]["admits_per_s"]
    pg = results["postgres"]
    pg_rate = pg["lease"]["admits_per_s"] if pg else float("nan")
    over = results["sqlite"]["lease"]["over_admitted"] + (pg["lease"]["over_admitted"] if pg else 0)
    results.update(tenant_admits_per_s_sqlite=sqlite_rate, tenant_admits_per_s_postgres=pg_rate, over_admitted=over,
                   target_admits_per_s=5000)
    write_json("quota", results)
    print(f"quota tenant_admits_per_s_sqlite={sqlite_rate:.0f} tenant_admits_per_s_postgres={pg_rate:.0f} "
          f"over_admitted={over}")


if __name__ == "__main__":
    main()
