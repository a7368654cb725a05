"""Spill-over: when the preferred pool is saturated, requests go to the next pool that holds them."""

import time

import httpx
import pytest

from tests.shared_cluster import deploy_app

pytestmark = pytest.mark.cluster
SLOW = {"kind": "stub", "prefill_tokens_per_s": 50_000, "decode_ms_per_token": 100}


def spill_args() -> dict:
    # Each request below brings 100 completion tokens of work plus a few prompt tokens, so the
    # 'short' pool counts as saturated from the third request held open at once.
    return {
        "tenants_file": "configs/tenants.yaml",
        "pools": [
            {"name": "short", "max_model_len": 16_384, "max_prompt_tokens": 8_192,
             "spill_at_outstanding_tokens": 200, "engine": SLOW},
            {"name": "long", "max_model_len": 40_960, "spill_at_outstanding_tokens": 10**9, "engine": SLOW},
        ],
    }


def test_saturated_short_pool_spills_to_long_and_recovers(local_cluster, ray_driver, auth):
    url = deploy_app(local_cluster, "spill", spill_args())
    payload = {"model": "magistral-small-2506", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 100, "stream": True}
    pools = []
    with httpx.Client(timeout=60, headers=auth) as client:
        streams = [client.stream("POST", f"{url}/v1/chat/completions", json=payload) for _ in range(3)]
        responses = [s.__enter__() for s in streams]  # all three held open (~6 s of decode each)
        try:
            pools = [r.headers["x-pool"] for r in responses]
        finally:
            for s in streams:
                s.__exit__(None, None, None)
        assert pools == ["short", "short", "long"]
        # once the router has seen those streams go (within a decode step or two), the cheap
        # pool takes requests again
        deadline = time.monotonic() + 10
        while True:
            after = client.post(f"{url}/v1/chat/completions", json={**payload, "stream": False, "max_tokens": 2})
            if after.headers["x-pool"] == "short" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert after.headers["x-pool"] == "short"
    from ray import serve

    serve.delete("spill")
