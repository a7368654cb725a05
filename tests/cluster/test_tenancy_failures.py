"""Crashes while requests run: an ingress replica killed (SIGKILL) mid-burst.

What must hold: every request whose client got a complete answer has its ledger row with the
usage the client saw; the dead ingress's reservations are dropped within the expiry bound (each
leaves an `expired` row); the spent budget is what the ledger says, not reset.
"""

import asyncio
import json
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml
from ray import serve

from router.tenancy.quota import day_key
from router.tenancy.store import QuotaStore, utcnow
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


def test_killed_ingress_loses_no_row_and_leaks_no_reservation(local_cluster, ray_driver, tmp_path):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": {"crash": {"api_keys": ["sk-test-crash"],
                                                             "limits": {"tokens_per_day": 1_000_000}}}}))
    url = deploy_app(local_cluster, "crash", {
        "tenants_file": str(tenants), "router_replicas": 2, "reservation_ttl_s": TTL_S,
        "pools": [{"name": "c", "max_model_len": 48, "num_replicas": 1, "max_ongoing_requests": 256,
                   "engine": {"kind": "stub", "prefill_tokens_per_s": 50_000, "decode_ms_per_token": 150}}],
    })
    store = QuotaStore(local_cluster["ledger_url"])
    pids = ingress_pids("crash")
    assert len(pids) == 2

    async def run() -> list[dict | None]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            tasks = [asyncio.create_task(stream_one(client, url, "sk-test-crash", f"crash-{i}")) for i in range(40)]
            await asyncio.sleep(2.0)  # every request admitted and streaming (each takes ~5 s)
            os.kill(pids[0], signal.SIGKILL)
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    killed_at = time.monotonic()
    complete = {f"crash-{i}": u for i, u in enumerate(results) if u is not None}
    assert 0 < len(complete) < 40, f"{len(complete)} of 40 complete: the kill should cut some, not all"

    # The dead ingress's reservations are dropped within the bound: TTL + one sweep (TTL / 3).
    while store.in_flight("crash") and time.monotonic() - killed_at < TTL_S * 2 + 5:
        time.sleep(0.2)
    assert store.in_flight("crash") == 0
    assert time.monotonic() - killed_at < TTL_S * 2 + 5

    rows = {r["client_request_id"]: r for r in store.rows("crash", limit=1000)}
    assert set(rows) == {f"crash-{i}" for i in range(40)}  # every request has exactly one row
    for rid, usage in complete.items():
        row = rows[rid]
        assert row["status"] == "completed"
        assert (row["prompt_tokens"], row["completion_tokens"], row["cost_usd"]) == (
            usage["prompt_tokens"], usage["completion_tokens"], usage["cost_usd"])
    lost = [r for rid, r in rows.items() if rid not in complete]
    assert lost and all(r["status"] in ("expired", "cancelled", "failed") for r in lost)

    # The budget spent is the ledger's, not reset by the crash.
    billed = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows.values())
    assert store.spent("crash", day_key(utcnow())).tokens == billed >= sum(
        u["prompt_tokens"] + u["completion_tokens"] for u in complete.values())
    store.close()
    serve.delete("crash")
