"""Crashes while requests run: an ingress replica killed (SIGKILL) mid-burst, and the process
holding the quota state (the PostgreSQL server) crashed and restarted mid-burst.

What must hold: every request whose client got a complete answer has its ledger row with the
usage the client saw; what the dead ingress held (its quota lease, by default) stops counting
within the expiry bound; each of its cut requests gets an `expired` row that bills what the
replica generated (it stops generating for a dead ingress); the spent budget is what the ledger
says, not reset.
"""

import asyncio
import json
import os
import signal
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml
from ray import serve

from router.tenancy.quota import day_key
from router.tenancy.lease_store import LeaseStore
from router.tenancy.store import QuotaStore, utcnow
from tests.postgres import create_database
from tests.shared_cluster import deploy_app

pytestmark = pytest.mark.cluster

TTL_S = 3.0
MESSAGES = [{"role": "user", "content": "Keep talking while I pull the plug."}]


def ingress_pids(app: str) -> list[int]:
    """Ray titles each actor's worker process `ray::<actor class>`; Serve's replicas are
    `ServeReplica:<app>:<deployment>` (the state API would need the dashboard)."""
    title = f"ray::ServeReplica:{app}:router".encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(title):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


async def stream_one(client: httpx.AsyncClient, url: str, api_key: str, request_id: str) -> dict | None:
    """The final usage if the answer arrived complete ([DONE] after a usage chunk), else None."""
    body = {"model": "magistral-small-2506", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {api_key}", "x-request-id": request_id}
    usage, done = None, False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                return None
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    chunk = json.loads(line[6:], parse_float=Decimal)
                    if "error" in chunk:
                        return None
                    usage = chunk.get("usage") or usage
    except httpx.HTTPError:
        return None
    return usage if done and usage else None


def crash_app(local_cluster, name: str, tmp_path, **args) -> str:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": {"crash": {"api_keys": ["sk-test-crash"],
                                                             "limits": {"tokens_per_day": 1_000_000}}}}))
    return deploy_app(local_cluster, name, {
        "tenants_file": str(tenants), "router_replicas": 2, "reservation_ttl_s": TTL_S,
        "pools": [{"name": "c", "max_model_len": 48, "num_replicas": 1, "max_ongoing_requests": 256,
                   "engine": {"kind": "stub", "prefill_tokens_per_s": 50_000, "decode_ms_per_token": 150}}],
        **args})


def test_killed_ingress_loses_no_row_and_leaks_no_reservation(local_cluster, ray_driver, tmp_path):
    url = crash_app(local_cluster, "crash", tmp_path)
    pool = serve.get_deployment_handle("pool-c", app_name="crash")
    store = LeaseStore(local_cluster["ledger_url"])
    pids = ingress_pids("crash")
    assert len(pids) == 2

    async def run() -> list[dict | None]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            tasks = [asyncio.create_task(stream_one(client, url, "sk-test-crash", f"crash-{i}")) for i in range(40)]
            await asyncio.sleep(2.0)  # every request admitted and streaming (each takes ~5 s)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(time.monotonic())
            return await asyncio.gather(*tasks)

    killed: list[float] = []
    results = asyncio.run(run())
    killed_at = killed[0]
    complete = {f"crash-{i}": u for i, u in enumerate(results) if u is not None}
    assert 0 < len(complete) < 40, f"{len(complete)} of 40 complete: the kill should cut some, not all"

    # What the dead ingress held stops counting within the bound. Its quota lease (the default):
    # TTL after its last sync, plus the skew allowance; the live ingress's lease, idle once the
    # burst is over, gives everything back. (With quota_leases off, its reservations are dropped
    # within TTL + one sweep.)
    def holding() -> int:
        now = utcnow()
        return store.in_flight("crash") + sum(
            1 for r in store.lease_rows("crash") if r["expires_at"] + timedelta(seconds=1) > now
            and (r["slots"] or r["tokens"]))
    while holding() and time.monotonic() - killed_at < TTL_S * 2 + 5:
        time.sleep(0.2)
    assert holding() == 0
    dropped_after = time.monotonic() - killed_at
    print(f"\n{len(complete)} of 40 complete; nothing held for the dead ingress {dropped_after:.1f} s "
          f"after the kill (TTL {TTL_S} s)")

    # A lease-admitted request has no row until it is settled, or billed from its replica's report.
    while time.monotonic() - killed_at < TTL_S * 2 + 10 and len(store.rows("crash", limit=1000)) < 40:
        time.sleep(0.2)
    rows = {r["client_request_id"]: r for r in store.rows("crash", limit=1000)}
    assert set(rows) == {f"crash-{i}" for i in range(40)}  # every request has exactly one row
    for rid, usage in complete.items():
        row = rows[rid]
        assert row["status"] == "completed"
        assert (row["prompt_tokens"], row["completion_tokens"], row["cost_usd"]) == (
            usage["prompt_tokens"], usage["completion_tokens"], usage["cost_usd"])
    lost = [rid for rid in rows if rid not in complete]
    assert lost and all(rows[rid]["status"] == "expired" for rid in lost)

    # The replica stopped the dead ingress's requests (each would have run ~5 s) and a live
    # ingress billed its expired rows with what the replica generated, naming the replica.
    stats = pool.stats.remote().result()
    assert stats["cancelled"] == len(lost) and stats["completed"] == len(complete)
    while time.monotonic() - killed_at < TTL_S * 2 + 10 and not all(
            r["replica"] for r in store.rows("crash", limit=1000) if r["client_request_id"] in lost):
        time.sleep(0.2)
    billed_after = time.monotonic() - killed_at
    rows = {r["client_request_id"]: r for r in store.rows("crash", limit=1000)}
    for rid in lost:
        row = rows[rid]
        assert row["status"] == "expired" and row["replica"] == stats["replica"], row
        assert 0 < row["completion_tokens"] < 32 and row["prompt_tokens"] > 0 and row["cost_usd"] > 0, row
    print(f"{len(lost)} cut streams billed {sum(rows[rid]['completion_tokens'] for rid in lost)} tokens "
          f"generated, {billed_after:.1f} s after the kill")

    # The budget spent is the ledger's, not reset by the crash.
    billed = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows.values())
    assert store.spent("crash", day_key(utcnow())).tokens == billed >= sum(
        u["prompt_tokens"] + u["completion_tokens"] for u in complete.values())
    store.close()
    serve.delete("crash")


def test_quota_database_crash_resets_no_budget_and_loses_no_row(local_cluster, ray_driver, tmp_path,
                                                                postgres_server):
    """The PostgreSQL server holding quotas and ledger is killed (immediate shutdown: no
    checkpoint, like a crash) while 20 streams run, just before they end, and restarted 2 s later.
    New requests meanwhile get a clean 503; the streams' settlements retry until it is back."""
    ledger_url = create_database(postgres_server, "crash_ledger")
    url = crash_app(local_cluster, "pgcrash", tmp_path, ledger_url=ledger_url)
    store = QuotaStore(ledger_url)

    async def run() -> tuple[list[dict | None], list[httpx.Response]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            before = await asyncio.gather(*(stream_one(client, url, "sk-test-crash", f"pg-a{i}") for i in range(5)))
            assert all(before), "requests before the crash must complete"
            tasks = [asyncio.create_task(stream_one(client, url, "sk-test-crash", f"pg-b{i}")) for i in range(20)]
            await asyncio.sleep(4.0)  # the streams end ~6 s in: their settlements meet the outage
            await asyncio.to_thread(postgres_server.stop)
            stopped.append(utcnow())
            during = [await client.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer sk-test-crash"},
                                        json={"model": "magistral-small-2506", "messages": MESSAGES, "max_tokens": 2})
                      for _ in range(2)]
            await asyncio.sleep(2.0)
            await asyncio.to_thread(postgres_server.start, postgres_server.port)
            restarted.append(utcnow())
            return list(before) + list(await asyncio.gather(*tasks)), during

    stopped: list = []
    restarted: list = []
    results, during = asyncio.run(run())
    for resp in during:
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "service_unavailable"
    ids = [f"pg-a{i}" for i in range(5)] + [f"pg-b{i}" for i in range(20)]
    complete = {rid: u for rid, u in zip(ids, results) if u is not None}
    assert len(complete) == 25, f"only {len(complete)} of 25 streams completed across the restart"
    rows = {r["client_request_id"]: r for r in store.rows("crash", limit=1000)}
    for rid, usage in complete.items():
        assert (rows[rid]["status"], rows[rid]["completion_tokens"], rows[rid]["cost_usd"]) == (
            "completed", usage["completion_tokens"], usage["cost_usd"])
    # A row's finished_at is when its request ended (a lease's rows) or when its settlement was
    # finally written (a reservation's): either way at or after the crash for those that waited.
    waited = [rid for rid in complete if rows[rid]["finished_at"] >= stopped[0]]
    assert waited, "no stream ended during the outage: the test did not exercise settlement retries"
    print(f"\n{len(waited)} of 20 streams ended during the outage and were settled after the restart")
    billed = sum(u["prompt_tokens"] + u["completion_tokens"] for u in complete.values())
    assert store.spent("crash", day_key(utcnow())).tokens == billed  # nothing reset, nothing lost
    assert store.in_flight("crash") == 0
    store.close()
    serve.delete("pgcrash")
