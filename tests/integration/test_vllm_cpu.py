"""A real vLLM engine on CPU (tiny random-weight model) behind the full router.

configs/cpu-vllm.yaml is deployed as a second application ("/vllm") on the session's local
cluster: one engine per test session. Random weights write random text, so these tests check the
path (counts, caps, streaming, abort, tool calls), not the words.
"""

import json
import time
from decimal import Decimal

import httpx
import pytest
import yaml

from router.magistral_defaults import with_system_prompt
from common.tokens import TekkenCounter
from tests.shared_cluster import deploy_app

pytestmark = pytest.mark.integration
MODEL = "magistral-small-2506"
ENGINE_START_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def vllm_app(local_cluster, ray_driver, tiny_model_dir):
    from ray import serve

    with open("configs/cpu-vllm.yaml") as f:
        args = yaml.safe_load(f)["applications"][0]["args"]
    args["ledger_url"] = local_cluster["ledger_url"]  # the session's, not the config's .run/ledger.db
    url = deploy_app(local_cluster, "vllm", args, ENGINE_START_TIMEOUT_S)
    pool = serve.get_deployment_handle("pool-cpu", app_name="vllm")
    with open(tiny_model_dir / "SYSTEM_PROMPT.txt") as f:
        system_prompt = f.read().strip()
    try:
        yield {"url": url, "pool": pool, "system_prompt": system_prompt}
    finally:
        serve.delete("vllm")


@pytest.fixture(scope="module")
def tiny_counter(tiny_model_dir) -> TekkenCounter:
    return TekkenCounter(str(tiny_model_dir / "tekken.json"))


@pytest.fixture(scope="module")
def client(vllm_app, auth):
    with httpx.Client(base_url=vllm_app["url"], headers=auth, timeout=300) as c:
        yield c


def stats(vllm_app) -> dict:
    return vllm_app["pool"].stats.remote().result()


def test_models_lists_the_model(client):
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL


def test_chat_usage_matches_mistral_common_count(client, tiny_counter):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}]
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 12})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-pool"] == "cpu" and resp.headers["x-replica"]
    body = resp.json()
    assert body["usage"]["prompt_tokens"] == tiny_counter.count_chat(messages)
    assert 0 < body["usage"]["completion_tokens"] <= 12
    message = body["choices"][0]["message"]
    assert "reasoning_content" in message and isinstance(message["content"], str)


def test_model_system_prompt_is_used_when_request_has_none(client, tiny_counter, vllm_app):
    messages = [{"role": "user", "content": "Hello"}]
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 4})
    assert resp.status_code == 200, resp.text
    expected = tiny_counter.count_chat(with_system_prompt(messages, vllm_app["system_prompt"]))
    assert resp.json()["usage"]["prompt_tokens"] == expected > tiny_counter.count_chat(messages)


def test_stream_with_usage(client, tiny_counter):
    messages = [{"role": "user", "content": "Count to five."}]
    payload = {"model": MODEL, "messages": messages, "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=payload) as resp:
        assert resp.status_code == 200 and resp.headers["x-pool"] == "cpu"
        lines = [l for l in resp.iter_lines() if l]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(l[6:]) for l in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_text_completion(client):
    resp = client.post("/v1/completions", json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 8


def test_prompt_over_cap_is_refused_before_the_engine(client, vllm_app):
    before = stats(vllm_app)
    too_long = [{"role": "user", "content": "hello " * 41_000}]
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": too_long})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
    after = stats(vllm_app)
    assert (after["completed"], after["cancelled"]) == (before["completed"], before["cancelled"])


def test_tools_reach_the_engine_and_are_counted_exactly(client, tiny_counter, vllm_app):
    """The tool schema is part of the prompt ([AVAILABLE_TOOLS]): counts match with it included.

    Random weights never choose to call a tool, so parsing of real tool-call output is tested on
    Magistral-shaped text in test_magistral_parsers.py.
    """
    tools = [{"type": "function", "function": {"name": "get_unit", "parameters": {
        "type": "object", "properties": {"unit": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Which unit?"}]
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "tools": tools, "max_tokens": 5})
    assert resp.status_code == 200, resp.text
    full = with_system_prompt(messages, vllm_app["system_prompt"])
    assert resp.json()["usage"]["prompt_tokens"] == tiny_counter.count_chat(full, tools) > tiny_counter.count_chat(full)
    assert isinstance(resp.json()["choices"][0]["message"]["tool_calls"], list)


def test_value_the_engine_refuses_is_a_400_not_a_retryable_error(client):
    resp = client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "bogus"}})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"]


def test_client_disconnect_aborts_the_engine_request(client, vllm_app):
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}],
               "max_tokens": 4000, "stream": True}
    cancelled_before = stats(vllm_app)["cancelled"]
    with client.stream("POST", "/v1/chat/completions", json=payload) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(lines), next(lines)
        deadline = time.monotonic() + 60
        while stats(vllm_app)["engine_running"] != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stats(vllm_app)["engine_running"] == 1
    # connection closed mid-stream: ~4 000 tokens at ~30 ms each were still to come
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = stats(vllm_app)
        if now["engine_unfinished"] == 0 and now["engine_running"] == 0:
            break
        time.sleep(0.2)
    assert (now["engine_unfinished"], now["engine_running"], now["ongoing_requests"]) == (0, 0, 0)
    assert now["cancelled"] == cancelled_before + 1


def test_routing_stats_name_the_replica_and_the_engine_load(vllm_app):
    routing = vllm_app["pool"].record_routing_stats.remote().result()
    assert (routing["pool"], routing["accelerator"]) == ("cpu", "CPU-vllm")
    assert routing["node_id"] and routing["replica"]
    for key in ("queued_tokens", "ongoing_requests", "engine_running", "engine_waiting", "kv_cache_usage"):
        assert isinstance(routing[key], (int, float)), key


def test_json_schema_response_format_is_enforced(client):
    """Even random weights must follow the grammar; this also proves grammars apply while the
    Magistral reasoning parser is on (enable_in_reasoning): without it the output was free text.

    The grammar lets JSON whitespace repeat, and random weights often spend max_tokens there, so
    the check is that the output, whitespace removed, is a prefix of a document the schema allows.
    """
    schema = {"type": "object", "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
              "required": ["unit"], "additionalProperties": False}
    resp = client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Which unit?"}], "max_tokens": 40,
        "response_format": {"type": "json_schema", "json_schema": {"name": "unit", "schema": schema}}})
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    compact = "".join(choice["message"]["content"].split())
    allowed = ['{"unit":"celsius"}', '{"unit":"fahrenheit"}']
    assert compact and any(doc.startswith(compact) for doc in allowed), choice["message"]["content"]
    if choice["finish_reason"] == "stop":
        assert compact in allowed


def usage_rows(client, request_id: str) -> list[dict]:
    """The ledger rows of one x-request-id (the demo key is an admin: ?tenant=demo)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [r for r in client.get("/v1/usage", params={"tenant": "demo", "limit": 1000}).json()["data"]
                if r["client_request_id"] == request_id]
        if rows:
            return rows
        time.sleep(0.2)
    return []


def test_engine_usage_is_priced_and_in_the_ledger(client):
    resp = client.post("/v1/chat/completions", headers={"x-request-id": "vllm-priced-1"}, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 7})
    assert resp.status_code == 200, resp.text
    usage = json.loads(resp.text, parse_float=Decimal)["usage"]
    assert Decimal(resp.headers["x-cost-usd"]) == usage["cost_usd"] > 0
    (row,) = usage_rows(client, "vllm-priced-1")
    assert (row["status"], row["pool"], row["replica"]) == ("completed", "cpu", resp.headers["x-replica"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert Decimal(str(row["cost_usd"])) == usage["cost_usd"]


def test_cancelled_stream_is_billed_what_the_engine_delivered(client, vllm_app):
    """Hang up mid-stream: the request is billed its prompt plus the completion tokens that left
    the router before it learnt of the hang-up: at least what the client read, at most what the
    engine generated; and the engine stops within a second.

    Not exactly what the client read: Serve's proxy buffers the router's chunks and notices a
    closed connection only after the engine (~20 ms a token here) has produced more, which the
    router had already handed on. The stub test (tests/cluster/test_tenancy.py), whose tokens
    are slower than that, shows the exact match.
    """
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}],
               "max_tokens": 4000, "stream": True,
               "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    before = stats(vllm_app)["cancelled_completion_tokens"]
    seen = None
    with client.stream("POST", "/v1/chat/completions", json=payload, headers={"x-request-id": "vllm-cancel-1"}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("usage"):
                seen = json.loads(line[6:])["usage"]
                if seen["completion_tokens"] >= 8:
                    break
    hung_up = time.monotonic()
    while time.monotonic() - hung_up < 5 and stats(vllm_app)["engine_unfinished"]:
        time.sleep(0.05)
    stopped_after = time.monotonic() - hung_up
    generated = stats(vllm_app)["cancelled_completion_tokens"] - before
    (row,) = usage_rows(client, "vllm-cancel-1")
    assert row["status"] == "cancelled"
    assert row["prompt_tokens"] == seen["prompt_tokens"]
    assert seen["completion_tokens"] <= row["completion_tokens"] <= generated < 4000
    print(f"\nclient read {seen['completion_tokens']} tokens, billed {row['completion_tokens']}, "
          f"engine generated {generated}; engine stopped {stopped_after:.2f} s after the hang-up")
    assert stopped_after < 1.0, f"the engine still held the request {stopped_after:.2f} s after the hang-up"


def test_engine_llm_request_span_is_a_child_of_the_replica_span(client, otlp_receiver):
    """vLLM's own llm_request span (engine tracing switched on by the OTEL_* environment the
    session's cluster runs with) hangs under our replica span, in one trace with the ingress."""
    r = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": "Hello"}]})
    assert r.status_code == 200
    trace_id = r.headers["x-trace-id"]
    names = {"POST /v1/chat/completions", "route", f"chat {MODEL}", "llm_request"}
    spans = otlp_receiver.wait_for(trace_id, lambda ss: names <= {s.name for s in ss}, timeout_s=60)
    by_name = {s.name: s for s in spans}
    assert names <= set(by_name), sorted(by_name)
    replica, engine = by_name[f"chat {MODEL}"], by_name["llm_request"]
    assert engine.parent_id == replica.span_id
    assert replica.parent_id == by_name["route"].span_id
    assert replica.attributes["magistral.replica.id"] == r.headers["x-replica"]
    assert replica.attributes["magistral.accelerator.type"] == "CPU-vllm"
    # the engine counted the same prompt and completion the client was billed
    assert engine.attributes["gen_ai.usage.prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert engine.attributes["gen_ai.usage.completion_tokens"] == r.json()["usage"]["completion_tokens"]
    ids = {s.span_id for s in spans}
    assert [s.name for s in spans if s.parent_id not in ids] == ["POST /v1/chat/completions"]


def test_anthropic_messages_on_the_engine(vllm_app, auth):
    """The Anthropic route on a real engine: the official SDK, streamed and not; input tokens
    equal count_tokens (the engine's own count of the same rendered prompt)."""
    import anthropic

    client = anthropic.Anthropic(base_url=vllm_app["url"], api_key=auth["Authorization"][7:], max_retries=0)
    conversation = [{"role": "user", "content": "Hello"}]
    counted = client.messages.count_tokens(model=MODEL, messages=conversation).input_tokens
    message = client.messages.create(model=MODEL, max_tokens=6, messages=conversation)
    assert message.usage.input_tokens == counted and 0 < message.usage.output_tokens <= 6
    assert message.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(model=MODEL, max_tokens=6, messages=conversation) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens == counted and 0 < final.usage.output_tokens <= 6
