"""Bad input is the client's 400 / 413, never a 5xx: lone surrogates, non-text parts, huge bodies."""

import json

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError

from router.wire.openai.models import ChatCompletionRequest, CompletionRequest
from router.http.body_limit import BodyLimitMiddleware
from router.errors import validation_error
from router.unicode_text import lone_surrogate_path

LONE = json.loads('"a\\ud800b"')  # what a JSON parser makes of the escape


def test_lone_surrogate_paths():
    assert lone_surrogate_path({"messages": [{"content": "ok"}, {"content": LONE}]}) == "messages.1.content"
    assert lone_surrogate_path({"tools": [{"function": {"parameters": {LONE: 1}}}]}) == f"tools.0.function.parameters.{LONE}"
    assert lone_surrogate_path(LONE) == "(body)"
    assert lone_surrogate_path({"a": ["ok", 1, None, {"b": "é 漢字 🙂"}]}) is None


def refusal(model, body: dict) -> dict:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return validation_error(info.value.errors()).body()["error"]


@pytest.mark.parametrize("body", [
    {"model": "m", "messages": [{"role": "user", "content": LONE}]},
    {"model": LONE, "messages": [{"role": "user", "content": "hi"}]},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": [LONE]},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}],
     "tools": [{"type": "function", "function": {"name": "f", "description": LONE}}]},
])
def test_lone_surrogate_anywhere_in_a_chat_body_is_a_400(body):
    error = refusal(ChatCompletionRequest, body)
    assert "not valid Unicode" in error["message"] and error["type"] == "invalid_request_error"


def test_lone_surrogate_in_a_completion_prompt_is_a_400():
    assert "not valid Unicode" in refusal(CompletionRequest, {"model": "m", "prompt": LONE})["message"]


@pytest.mark.parametrize("part", [{"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                                  {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}])
def test_image_and_audio_parts_say_text_only(part):
    error = refusal(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": [part]}]})
    assert f"reads text only: content parts of type '{part['type']}'" in error["message"]
    assert error["param"] == "messages.0.content"


def test_valid_unicode_passes():
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "漢字 🙂"}]}]})
    assert body.messages[0].content[0].text == "漢字 🙂"


# ---- the body limit ----------------------------------------------------------------------------

@pytest.fixture
def app():
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware)
    app.state.max_body_bytes = 1_000
    app.state.reads = 0

    @app.post("/echo")
    async def echo(request: Request):
        body = await request.body()
        request.app.state.reads += 1
        return {"bytes": len(body)}

    return app


async def post(app, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.post("/echo", **kwargs)


async def test_a_body_under_the_limit_passes(app):
    r = await post(app, content=b"x" * 1_000)
    assert r.status_code == 200 and r.json() == {"bytes": 1_000}


async def test_a_declared_length_over_the_limit_is_refused_before_the_route_reads_it(app):
    r = await post(app, content=b"x" * 1_001)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large" and "1001 bytes" in r.json()["error"]["message"]
    assert app.state.reads == 0


async def test_a_streamed_body_without_a_length_is_cut_at_the_limit(app):
    async def chunks():
        for _ in range(50):
            yield b"x" * 100

    r = await post(app, content=chunks())  # chunked: no content-length
    assert r.status_code == 413 and app.state.reads == 0


async def test_no_limit_configured_means_no_check():
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware)

    @app.post("/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    assert (await post(app, content=b"x" * 100_000)).json() == {"bytes": 100_000}


def test_openapi_lists_the_errors_each_route_returns():
    from router.http.ingress import app as ingress_app

    paths = ingress_app.openapi()["paths"]
    chat = paths["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "404", "413", "429", "503"} <= set(chat) and "422" not in chat
    assert chat["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "422" not in paths["/v1/usage"]["get"]["responses"]


def test_a_deeply_nested_body_is_walked_without_overflowing_the_stack():
    deep: list = ["ok"]
    for _ in range(5_000):
        deep = [deep]
    assert lone_surrogate_path({"thinking": deep}) is None
    bad: list = [LONE]
    for _ in range(5_000):
        bad = [bad]
    assert lone_surrogate_path({"thinking": bad}) == "thinking" + ".0" * 5_001


async def test_a_chunked_body_over_the_limit_is_a_413_on_a_route_that_parses_a_model():
    from pydantic import BaseModel

    class Body(BaseModel):
        text: str

    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware)
    app.state.max_body_bytes = 1_000

    @app.post("/echo")
    async def echo(body: Body):  # FastAPI reads the body itself: a plain exception would be its 400
        return {"n": len(body.text)}

    async def chunks():
        yield b'{"text": "'
        for _ in range(30):
            yield b"x" * 100
        yield b'"}'

    assert (await post(app, content=chunks())).status_code == 413


@pytest.mark.parametrize("extra", [{"stop": ""}, {"stop": ["a", ""]}, {"seed": 10**30}])
def test_values_an_engine_would_choke_on_mid_stream_are_refused_up_front(extra):
    refusal(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


@pytest.mark.parametrize("extra", [{"stop_sequences": [""]}, {"top_k": 10**30},
                                   {"messages": [{"role": "user", "content": []}]}])
def test_anthropic_values_refused_up_front(extra):
    from router.wire.anthropic import MessagesRequest

    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(ValidationError):
        MessagesRequest.model_validate(body)


def test_tool_arguments_no_json_response_can_carry_become_an_empty_input():
    from common.protocol import delta_event, end_event
    from router.wire.anthropic import MessageWriter

    call = {"index": 0, "id": "abcdefghi", "function": {"name": "f", "arguments": '{"x": NaN, "y": 1e999}'}}
    body = MessageWriter("msg_1", "m").full([delta_event(tool_calls=[call]),
                                             end_event(finish_reason="tool_calls", prompt_tokens=1,
                                                       completion_tokens=1, reasoning_tokens=0)])
    assert body["content"][0]["input"] == {}
    json.dumps(body, allow_nan=False)  # what JSONResponse does: must not raise
