"""Predicted placement on a live cluster: each request goes to the replica, of any pool that holds
it, whose GPU class's engine model predicts it meets its objectives, from what the replicas publish
and what this ingress has just sent them. Both pools hold the whole context here, so the length
rule would send everything to the first pool."""

import asyncio
import json
import os

import httpx
import pytest
from ray import serve

from tests.conftest import user_prompt_with_tokens
from tests.shared_cluster import deploy_app

pytestmark = pytest.mark.cluster
MODEL = "magistral-small-2506"


def predicted_args() -> dict:
    def pool(name: str, gpu: str, usd: float) -> dict:
        return {"name": name, "max_model_len": 40_960, "num_replicas": 1, "usd_per_hour": usd,
                "spill_at_outstanding_tokens": 10**9,  # the length rule would never spill
                "engine": {"kind": "stub", "gpu": gpu, "time_scale": 4}}

    return {"tenants_file": "configs/tenants.yaml", "routing": "predicted",
            "objectives": {"ttft_base_s": 0.25, "ttft_prefill_tokens_per_s": 40_000, "tpot_s": 0.02},
            "pools": [pool("short", "L40S_TP2", 5.2), pool("long", "H100_TP1", 7.0)]}


@pytest.fixture(scope="module")
def predicted(local_cluster, ray_driver):
    url = deploy_app(local_cluster, "predicted", predicted_args())
    yield url
    serve.delete("predicted")


def chat(url: str, auth: dict, messages: list[dict], max_tokens: int) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=auth, timeout=60,
                      json={"model": MODEL, "messages": messages, "max_tokens": max_tokens})


def test_a_chat_goes_to_the_cheaper_class_and_a_long_prompt_to_the_one_that_meets_its_ttft(predicted, auth, counter):
    short_chat = chat(predicted, auth, [{"role": "user", "content": "What is 2+2?"}], 20)
    assert short_chat.status_code == 200, short_chat.text
    assert short_chat.headers["x-pool"] == "short"
    # 20k prompt tokens: an idle L40S's prefill alone would miss the objective; the H100 meets it.
    document = chat(predicted, auth, user_prompt_with_tokens(counter, 20_000), 10)
    assert document.status_code == 200, document.text
    assert document.headers["x-pool"] == "long"


def test_a_burst_sees_its_own_queued_prefill_and_spreads_over_both_pools(predicted, auth, counter):
    messages = user_prompt_with_tokens(counter, 6_000)

    async def burst() -> list[str]:
        async with httpx.AsyncClient(timeout=60, headers=auth) as client:
            responses = await asyncio.gather(*(
                client.post(f"{predicted}/v1/chat/completions",
                            json={"model": MODEL, "messages": messages, "max_tokens": 20})
                for _ in range(6)))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [r.headers["x-pool"] for r in responses]

    pools = asyncio.run(burst())
    # One 6k prefill meets the L40S's objective; a second queued behind it would not, so the
    # burst is split, though every prompt fits both pools and none was refused.
    assert set(pools) == {"short", "long"}, pools


def test_the_routing_span_shows_the_predictions_and_the_request_span_the_ttft_it_got(predicted, auth, otlp_receiver):
    trace_id = os.urandom(16).hex()
    headers = {**auth, "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}
    resp = httpx.post(f"{predicted}/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Name a bird."}], "max_tokens": 20})
    assert resp.status_code == 200, resp.text
    spans = otlp_receiver.wait_for(trace_id, lambda ss: {"route", "chat magistral-small-2506"} <= {s.name for s in ss}
                                   and any("magistral.routing.actual_ttft_s" in s.attributes for s in ss))
    route = next(s for s in spans if s.name == "route").attributes
    if os.environ.get("PRINT_ROUTING_SPAN"):  # docs/routing.md's example
        print(json.dumps({k: v for k, v in route.items() if k.startswith("magistral.routing")}, indent=1))
    assert route["magistral.routing.reason"] == "predicted"
    assert route["magistral.routing.predicted.replicas"][0] == resp.headers["x-replica"]
    assert route["magistral.routing.predicted.pools"][0] == resp.headers["x-pool"] == "short"
    assert set(route["magistral.routing.predicted.pools"]) == {"short", "long"}  # every pool's replicas
    assert all(t > 0 for t in route["magistral.routing.predicted.ttft_s"])
    assert route["magistral.routing.predicted.meets"][0] is True
    actual = [s.attributes["magistral.routing.actual_ttft_s"] for s in spans if "magistral.routing.actual_ttft_s" in s.attributes]
    assert len(actual) == 1 and 0 < actual[0] < 5


def test_a_conversations_next_turn_finds_the_replica_holding_its_prefix(predicted, auth, counter, otlp_receiver):
    system = {"role": "system", "content": "You answer about birds. " + "Context. " * 3000}
    first = [system, {"role": "user", "content": "Name a bird."}]
    one = chat(predicted, auth, first, 20)
    assert one.status_code == 200, one.text
    answer = one.json()["choices"][0]["message"]["content"] or "A robin."  # 20 tokens may all be thinking
    trace_id = os.urandom(16).hex()
    headers = {**auth, "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}
    second = httpx.post(f"{predicted}/v1/chat/completions", headers=headers, timeout=60, json={
        "model": MODEL, "max_tokens": 20,
        "messages": first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Another."}]})
    assert second.status_code == 200, second.text
    spans = otlp_receiver.wait_for(trace_id, lambda ss: any(s.name == "route" for s in ss))
    route = next(s for s in spans if s.name == "route").attributes
    # The router remembers where it sent the first turn: the system prompt and first question are
    # predicted cached there (~ the first turn's prompt), nowhere else.
    replicas = route["magistral.routing.predicted.replicas"]
    cached = dict(zip(replicas, route["magistral.routing.predicted.prefix_cached_tokens"]))
    assert cached[one.headers["x-replica"]] > 0.8 * one.json()["usage"]["prompt_tokens"]
    assert all(tokens == 0 for rid, tokens in cached.items() if rid != one.headers["x-replica"])
    assert second.headers["x-replica"] == one.headers["x-replica"]
