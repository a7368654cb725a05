"""The Anthropic Messages API through the same router, with the official `anthropic` SDK,
unmodified, against the session's local cluster (stub pools)."""

import json

import anthropic
import httpx
import pytest

from tests.shared_cluster import DEMO_KEY

pytestmark = pytest.mark.cluster

MODEL = "magistral-small-2506"
CONVERSATION = [{"role": "user", "content": "Name three birds."}]


@pytest.fixture(scope="module")
def client(local_cluster) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=local_cluster["root_url"], api_key=DEMO_KEY, max_retries=0)


def test_create_returns_thinking_then_text_with_consistent_usage(client, local_cluster):
    message = client.messages.create(model=MODEL, max_tokens=200, messages=CONVERSATION)
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text"], kinds
    assert message.content[0].thinking and message.content[1].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.id.startswith("msg_")
    assert 0 < message.usage.output_tokens <= 200
    counted = client.messages.count_tokens(model=MODEL, messages=CONVERSATION)
    assert message.usage.input_tokens == counted.input_tokens
    # ...and the OpenAI route counts the same conversation the same
    r = httpx.post(f"{local_cluster['base_url']}/chat/completions", headers={"Authorization": f"Bearer {DEMO_KEY}"},
                   json={"model": MODEL, "messages": CONVERSATION, "max_tokens": 1}, timeout=60)
    assert r.json()["usage"]["prompt_tokens"] == counted.input_tokens


def test_stream_gives_text_deltas_and_a_final_message_with_usage(client):
    with client.messages.stream(model=MODEL, max_tokens=60, system="Answer briefly.", messages=CONVERSATION) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts and "".join(texts) == "".join(b.text for b in final.content if b.type == "text")
    assert final.content[0].type == "thinking"
    counted = client.messages.count_tokens(model=MODEL, system="Answer briefly.", messages=CONVERSATION)
    assert final.usage.input_tokens == counted.input_tokens
    assert 0 < final.usage.output_tokens <= 60
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_a_stop_sequence_is_reported(client):
    plain = client.messages.create(model=MODEL, max_tokens=400, messages=CONVERSATION)
    text = plain.content[-1].text
    word = text.split()[2]  # the stub's answer is deterministic for the same conversation
    stopped = client.messages.create(model=MODEL, max_tokens=400, messages=CONVERSATION, stop_sequences=[word])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert word not in stopped.content[-1].text


def test_system_prompt_and_tools_are_counted_like_the_openai_route(client, local_cluster):
    tools = [{"name": "get_weather", "description": "Weather in a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    counted = client.messages.count_tokens(model=MODEL, system="Be terse.", messages=CONVERSATION, tools=tools)
    openai_tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                      "parameters": t["input_schema"]}} for t in tools]
    r = httpx.post(f"{local_cluster['base_url']}/chat/completions", headers={"Authorization": f"Bearer {DEMO_KEY}"},
                   json={"model": MODEL, "max_tokens": 1, "tools": openai_tools,
                         "messages": [{"role": "system", "content": "Be terse."}, *CONVERSATION]}, timeout=60)
    assert r.json()["usage"]["prompt_tokens"] == counted.input_tokens


def test_a_wrong_key_raises_the_sdks_authentication_error(local_cluster):
    bad = anthropic.Anthropic(base_url=local_cluster["root_url"], api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model=MODEL, max_tokens=5, messages=CONVERSATION)
    assert info.value.body["error"]["type"] == "authentication_error"


def test_an_over_cap_prompt_is_an_invalid_request_error(client):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hello " * 41_000}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "invalid_request_error"
    assert "40960" in info.value.body["error"]["message"] or "40 960" in info.value.body["error"]["message"]


def test_unknown_model_and_images_get_anthropic_errors(client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-nope", max_tokens=5, messages=CONVERSATION)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [image]}])
    assert "reads text only" in info.value.body["error"]["message"]


def test_lone_surrogate_is_a_400_in_the_anthropic_shape(local_cluster):
    body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "a\ud800"}]})
    r = httpx.post(f"{local_cluster['root_url']}/v1/messages", content=body.encode(),
                   headers={"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01",
                            "content-type": "application/json"}, timeout=30)
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
