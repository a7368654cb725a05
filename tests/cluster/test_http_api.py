"""The HTTP contract against the local cluster: routing by length, the cap, errors, headers."""

import httpx
import pytest

from tests.conftest import user_prompt_with_tokens

pytestmark = pytest.mark.cluster
MODEL = "magistral-small-2506"
CAP = 40_960


@pytest.fixture(scope="module")
def client(local_cluster):
    with httpx.Client(base_url=local_cluster["root_url"], timeout=120) as c:
        yield c


def chat(client, auth, messages, **extra):
    return client.post("/v1/chat/completions", headers=auth, json={"model": MODEL, "messages": messages, **extra})


def assert_openai_error(resp, status, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code
    assert resp.headers.get("x-request-id")
    return err


def test_health(client):
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.json()["pools"] == {"short": True, "long": True}


def test_models_lists_id_and_alias(client, auth):
    ids = [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
    assert ids == [MODEL, "mistralai/Magistral-Small-2506"]


def test_short_prompt_served_by_short_pool_with_headers_and_reasoning(client, auth, counter):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    resp = chat(client, auth, messages, max_tokens=200)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-pool"] == "short" and resp.headers["x-replica"] and resp.headers["x-request-id"]
    body = resp.json()
    assert body["id"].startswith("chatcmpl-")  # the answer's own id (tests/cluster/test_edge.py)
    msg, usage = body["choices"][0]["message"], body["usage"]
    assert msg["reasoning_content"] and "<think>" not in msg["reasoning_content"] + msg["content"]
    assert msg["content"].startswith("Stub answer from pool short")
    assert usage["prompt_tokens"] == counter.count_chat(messages)
    assert 0 < usage["completion_tokens_details"]["reasoning_tokens"] < usage["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_twenty_thousand_token_prompt_served_by_long_pool(client, auth, counter):
    messages = user_prompt_with_tokens(counter, 20_000)
    resp = chat(client, auth, messages, max_tokens=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-pool"] == "long"
    assert resp.json()["usage"]["prompt_tokens"] == 20_000


def test_prompt_of_cap_tokens_is_refused(client, auth, counter):
    err = assert_openai_error(chat(client, auth, user_prompt_with_tokens(counter, CAP)), 400, "context_length_exceeded")
    assert "40960" in err["message"]


def test_prompt_plus_completion_never_exceeds_cap(client, auth, counter):
    for prompt_tokens, max_tokens in [(CAP - 1, None), (CAP - 30, 5_000), (39_000, None)]:
        resp = chat(client, auth, user_prompt_with_tokens(counter, prompt_tokens), **({"max_tokens": max_tokens} if max_tokens else {}))
        assert resp.status_code == 200, resp.text
        usage = resp.json()["usage"]
        assert usage["prompt_tokens"] == prompt_tokens
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= CAP


def test_stop_and_max_tokens_are_honoured(client, auth):
    resp = chat(client, auth, [{"role": "user", "content": "hi"}], max_tokens=3)
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "length" and resp.json()["usage"]["completion_tokens"] == 3
    resp = chat(client, auth, [{"role": "user", "content": "hi"}], stop=["fixed"])
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["reasoning_content"].endswith("answer with ") and choice["message"]["content"] == ""


def test_text_completion_keeps_raw_text(client, auth):
    resp = client.post("/v1/completions", headers=auth, json={"model": MODEL, "prompt": "Once upon", "max_tokens": 30})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"].startswith("<think>")
    assert body["usage"]["completion_tokens"] == 30 and resp.headers["x-pool"] == "short"


def test_stream_with_usage(client, auth):
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
               "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", headers=auth, json=payload) as resp:
        assert resp.status_code == 200 and resp.headers["x-pool"] == "short" and resp.headers["x-replica"]
        lines = [l for l in resp.iter_lines() if l]
    assert lines[-1] == "data: [DONE]"
    import json

    chunks = [json.loads(l[6:]) for l in lines[:-1]]
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c["choices"])
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert reasoning and content.startswith("Stub answer")
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"model": MODEL}, 400, None),  # messages missing
        ({"model": MODEL, "messages": []}, 400, None),
        ({"model": MODEL, "messages": "hello"}, 400, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, 400, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, None),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
        ({"model": MODEL, "messages": [{"role": "assistant", "content": "I go first"}]}, 400, "invalid_messages"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
    ],
)
def test_bad_input_gets_openai_error_not_500(client, auth, body, status, code):
    assert_openai_error(client.post("/v1/chat/completions", headers=auth, json=body), status, code)


def test_malformed_json(client, auth):
    resp = client.post("/v1/chat/completions", headers={**auth, "content-type": "application/json"}, content=b"{oops")
    assert_openai_error(resp, 400, "invalid_json")


def test_key_is_checked_before_the_body(client):
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": "not a list"})
    assert_openai_error(resp, 401, "invalid_api_key")
    resp = client.post("/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert_openai_error(resp, 401, "invalid_api_key")  # not even parsed (more: tests/cluster/test_edge.py)


def test_user_message_without_content_is_a_clear_400(client, auth):
    err = assert_openai_error(chat(client, auth, [{"role": "user"}]), 400)
    assert "content" in err["message"]


def test_multibyte_text_streams_intact(client, auth):
    resp = chat(client, auth, [{"role": "user", "content": "𝔘🦜 数据 naïve"}])
    assert "𝔘🦜" in resp.json()["choices"][0]["message"]["reasoning_content"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-local-demo"}])
def test_missing_or_wrong_key_is_401(client, headers):
    resp = client.post("/v1/chat/completions", headers=headers, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(resp, 401, "invalid_api_key")
    assert_openai_error(client.get("/v1/models", headers=headers), 401)


def test_unknown_route_is_openai_404(client, auth):
    assert_openai_error(client.get("/v1/nothing-here", headers=auth), 404)
