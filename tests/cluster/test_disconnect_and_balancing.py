"""Replica behaviour that needs handles: cancellation on disconnect, and token-aware balancing.

Both deploy extra applications on the shared cluster, so the timings they rely on are their own.
"""

import asyncio
import time

import httpx
import pytest
from ray import serve
from ray.serve.config import RequestRouterConfig

from common.protocol import GenerateRequest
from deployments.stub_replica import StubReplica
from router.request_router import TokenLoadRouter
from tests.shared_cluster import deploy_app

pytestmark = pytest.mark.cluster


def slow_pool_args(decode_ms: float) -> dict:
    return {
        "tenants_file": "configs/tenants.yaml",
        "pools": [{"name": "slow", "max_model_len": 40_960, "num_replicas": 1,
                   "engine": {"kind": "stub", "prefill_tokens_per_s": 50_000, "decode_ms_per_token": decode_ms}}],
    }


def test_client_disconnect_stops_generation(local_cluster, ray_driver, auth):
    url = deploy_app(local_cluster, "slow", slow_pool_args(decode_ms=150))
    pool = serve.get_deployment_handle("pool-slow", app_name="slow")
    payload = {"model": "magistral-small-2506", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{url}/v1/chat/completions", headers=auth, json=payload) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            next(lines)
            while pool.stats.remote().result()["ongoing_requests"] != 1:
                time.sleep(0.05)
        # leaving the block closes the connection mid-stream (the stub needs ~10 s more)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = pool.stats.remote().result()
        if stats["cancelled"] == 1:
            break
        time.sleep(0.1)
    assert (stats["cancelled"], stats["completed"], stats["ongoing_requests"], stats["queued_tokens"]) == (1, 0, 0, 0)
    serve.delete("slow")


def _deploy_pool(name: str, metric: str):
    deployment = StubReplica.options(
        name=name, num_replicas=2,
        request_router_config=RequestRouterConfig(
            request_router_class=TokenLoadRouter, request_router_kwargs={"metric": metric},
            request_routing_stats_period_s=0.2))
    return serve.run(deployment.bind(pool=name, prefill_tokens_per_s=20_000, decode_ms_per_token=40),
                     name=name, route_prefix=None)


async def _burst(handle, prompt_sizes: list[int]) -> dict[str, int]:
    async def one(i: int, tokens: int) -> tuple[str, int]:
        request = GenerateRequest(request_id=f"b{i}", kind="chat", context_limit=40_960,
                                  messages=[{"role": "user", "content": "x"}], prompt_tokens=tokens, max_tokens=16)
        events = handle.options(stream=True).generate.remote(request)
        start = await events.__anext__()
        async for _ in events:
            pass
        return start["replica"], tokens

    per_replica: dict[str, int] = {}
    for replica, tokens in await asyncio.gather(*(one(i, t) for i, t in enumerate(prompt_sizes))):
        per_replica[replica] = per_replica.get(replica, 0) + tokens
    return per_replica


async def test_mixed_burst_spreads_by_tokens_better_than_by_request_count(ray_driver):
    burst = [3_000, 50] * 12  # long and short prompts interleaved, all in flight at once
    spreads = {}
    for metric in ("tokens", "requests"):
        name = f"balance-{metric}"
        handle = _deploy_pool(name, metric)
        per_replica = await _burst(handle, burst)
        serve.delete(name)
        loads = sorted(per_replica.values()) + [0] * (2 - len(per_replica))
        spreads[metric] = loads[-1] - loads[0]
        print(f"\n{metric:>8}: prompt tokens per replica {sorted(per_replica.values())}, spread {spreads[metric]}")
    # Token-aware ranking bounds the imbalance by one long prompt whatever the timing. Ranking by
    # request count bounds nothing, but on a given run it may land even by chance (it once did,
    # spread 0), so its spread is printed for comparison, not asserted against.
    assert spreads["tokens"] <= 3_000
