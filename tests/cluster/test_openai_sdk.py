"""The official openai SDK (sync, async, streaming) against the local cluster."""

import openai
import pytest

pytestmark = pytest.mark.cluster
MODEL = "magistral-small-2506"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_sync(base_url):
    client = openai.OpenAI(base_url=base_url, api_key="sk-local-demo")
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=100)
    resp = raw.parse()
    assert raw.headers["x-pool"] == "short"
    assert resp.choices[0].message.content.startswith("Stub answer")
    assert resp.choices[0].message.reasoning_content
    assert resp.usage.completion_tokens_details.reasoning_tokens > 0
    assert [m.id for m in client.models.list()][0] == MODEL


async def test_async_and_stream(base_url):
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-local-demo")
    resp = await client.chat.completions.create(model="mistralai/Magistral-Small-2506", messages=MESSAGES)
    assert resp.choices[0].finish_reason == "stop" and resp.usage.total_tokens > 0
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    content, reasoning, usage = "", "", None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
    assert content == resp.choices[0].message.content  # deterministic stub, same answer
    assert reasoning == resp.choices[0].message.reasoning_content
    assert usage.completion_tokens == resp.usage.completion_tokens
    await client.close()


def test_sdk_sees_typed_errors(base_url):
    bad = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=MESSAGES)
    good = openai.OpenAI(base_url=base_url, api_key="sk-local-demo", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(model="nope", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as err:
        good.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi " * 41_000}])
    assert err.value.code == "context_length_exceeded"
