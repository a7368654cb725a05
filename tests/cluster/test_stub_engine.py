"""The stub replica with an engine model: a loaded replica is slow the way a loaded GPU is."""

import concurrent.futures
import json
import time

import httpx
import pytest

from tests.shared_cluster import deploy_app

pytestmark = pytest.mark.cluster
# L40S TP 2, ten times faster than real time: a 6 000-token prompt prefills in ~0.1 s.
ENGINE = {"kind": "stub", "gpu": "L40S_TP2", "time_scale": 10}
DOCUMENT = "word " * 6_000


def stream_ttft(client: httpx.Client, url: str, content: str) -> float:
    body = {"model": "magistral-small-2506", "messages": [{"role": "user", "content": content}],
            "max_tokens": 5, "stream": True}
    started = time.monotonic()
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("reasoning_content"):
                return time.monotonic() - started
    raise AssertionError("no token streamed")


def test_loaded_replica_queues_and_its_ttft_grows_then_recovers(local_cluster, ray_driver, auth):
    from ray import serve

    url = deploy_app(local_cluster, "engine", {
        "tenants_file": "configs/tenants.yaml",
        "pools": [{"name": "l40s", "max_model_len": 16_384, "engine": ENGINE, "max_ongoing_requests": 128}],
    })
    pool = serve.get_deployment_handle("pool-l40s", app_name="engine")
    try:
        with httpx.Client(timeout=120, headers=auth) as client:
            idle = min(stream_ttft(client, url, "hello") for _ in range(3))
            def body(i: int) -> dict:  # distinct documents: identical ones would share the prefix cache
                return {"model": "magistral-small-2506", "messages": [{"role": "user", "content": f"{i}: {DOCUMENT}"}],
                        "max_tokens": 50}

            with concurrent.futures.ThreadPoolExecutor(40) as burst:
                # 40 x ~6 050 tokens = 242k: more than the 200k-token KV cache holds
                futures = [burst.submit(client.post, f"{url}/v1/chat/completions", json=body(i)) for i in range(40)]
                deadline, loaded_stats = time.monotonic() + 30, {}
                while time.monotonic() < deadline:
                    loaded_stats = pool.stats.remote().result()
                    if loaded_stats["engine_waiting"] > 0 and loaded_stats["kv_cache_usage"] > 0.5:
                        break
                    time.sleep(0.05)
                loaded = stream_ttft(client, url, "hello")
                statuses = [f.result().status_code for f in futures]
            after = min(stream_ttft(client, url, "hello") for _ in range(3))
        final = pool.stats.remote().result()
    finally:
        serve.delete("engine")
    print(f"\nTTFT idle {idle * 1e3:.0f} ms, behind the burst {loaded * 1e3:.0f} ms, after {after * 1e3:.0f} ms; "
          f"loaded stats {loaded_stats}")
    assert statuses == [200] * 40
    assert loaded_stats["engine_waiting"] > 0 and loaded_stats["kv_cache_usage"] > 0.5, loaded_stats
    # the probe queued behind ~240k prompt tokens (~4 s at 6k tokens/s, time scale 10): far slower
    assert loaded > max(0.5, 4 * idle), (idle, loaded)
    assert after < loaded / 2
    assert final["engine_running"] == final["engine_waiting"] == 0 and final["kv_cache_usage"] == 0


def test_ignore_eos_generates_exactly_max_tokens(local_cluster, auth):
    base_url = local_cluster["root_url"]
    body = {"model": "magistral-small-2506", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 300, "ignore_eos": True}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=auth, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["usage"]["completion_tokens"] == 300
    assert answer["choices"][0]["finish_reason"] == "length"
    plain = httpx.post(f"{base_url}/v1/chat/completions", json={**body, "ignore_eos": False}, headers=auth, timeout=60)
    assert plain.json()["usage"]["completion_tokens"] < 300  # the stub's text ends well before
