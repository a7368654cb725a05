"""The edge's rules for hostile input (issue 19), without Ray: strict request types, max_tokens
read as at most 2**31-1, bounded JSON nesting, the key checked before the body is read, the
header policy Serve's proxy runs, and /v1/usage's query values."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError

from router.errors import validation_error
from router.http.auth import AuthMiddleware, api_key, tenant_of
from router.http.body_limit import BodyLimitMiddleware
from router.http.header_policy import BAD_REQUEST_ID, HeaderPolicy, proxy_middlewares, screen
from router.json_nesting import MAX_DEPTH, deeper_than
from router.tenancy.directory import Tenant
from router.tenancy.errors import UsageQueryRefused
from router.tenancy.usage_report import UsageQuery
from router.wire.anthropic import CountTokensRequest, MessagesRequest
from router.wire.openai.models import MAX_INT32, ChatCompletionRequest, CompletionRequest

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def refused(model, body: dict) -> dict:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return validation_error(info.value.errors()).body()["error"]


def nested(depth: int, leaf="x"):
    """A value `depth` objects deep."""
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# ---- strict types ------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,param", [
    ({"max_tokens": "5"}, "max_tokens"), ({"max_tokens": True}, "max_tokens"), ({"max_tokens": 5.0}, "max_tokens"),
    ({"max_completion_tokens": "5"}, "max_completion_tokens"), ({"stream": "true"}, "stream"),
    ({"stream": 1}, "stream"), ({"temperature": "0.5"}, "temperature"), ({"temperature": True}, "temperature"),
    ({"top_p": "1"}, "top_p"), ({"seed": "1"}, "seed"), ({"n": True}, "n"), ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"stream_options": {"include_usage": "true"}}, "stream_options.include_usage"),
    ({"stop": 5}, "stop"), ({"user": 7}, "user"), ({"model": 1}, "model"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
])
def test_openai_chat_types_are_strict(extra, param):
    error = refused(ChatCompletionRequest, {**CHAT, **extra})
    # A union field's param names the branch tried first too (stop.str): the field leads it.
    assert error["param"].startswith(param) and error["type"] == "invalid_request_error", error


@pytest.mark.parametrize("extra", [{"prompt": 5}, {"max_tokens": "5"}, {"stream": "false"}])
def test_openai_completion_types_are_strict(extra):
    refused(CompletionRequest, {"model": "m", "prompt": "hi", **extra})


@pytest.mark.parametrize("extra", [
    {"max_tokens": "5"}, {"max_tokens": True}, {"stream": "true"}, {"temperature": "1"}, {"top_k": "3"},
    {"top_k": 3.0}, {"metadata": {"user_id": 5}}, {"stop_sequences": "stop"},
    {"tool_choice": {"type": "auto", "disable_parallel_tool_use": "true"}},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
])
def test_anthropic_types_are_strict(extra):
    refused(MessagesRequest, {**MESSAGES, **extra})


def test_a_json_integer_is_still_a_float():
    """JSON writes 1 for 1.0: a float field takes it (temperature 1 is a common setting)."""
    body = ChatCompletionRequest.model_validate({**CHAT, "temperature": 1, "top_p": 1, "stream": False})
    assert body.sampling() == {"temperature": 1.0, "top_p": 1.0} and isinstance(body.temperature, float)
    assert MessagesRequest.model_validate({**MESSAGES, "temperature": 0, "top_p": 1}).temperature == 0.0


# ---- max_tokens above 2**31-1 ------------------------------------------------------------------

@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_openai_max_tokens_over_int32_is_read_as_int32(field):
    body = ChatCompletionRequest.model_validate({**CHAT, field: 10**30})
    assert body.requested_max_tokens() == MAX_INT32  # then clamped to the context by admission
    assert CompletionRequest.model_validate({"model": "m", "prompt": "p", "max_tokens": 2**31}).max_tokens == MAX_INT32


def test_anthropic_max_tokens_over_int32_is_read_as_int32():
    assert MessagesRequest.model_validate({**MESSAGES, "max_tokens": 10**30}).requested_max_tokens() == MAX_INT32


@pytest.mark.parametrize("value", [0, -1, -(10**30)])
def test_max_tokens_below_one_is_still_refused(value):
    assert refused(ChatCompletionRequest, {**CHAT, "max_tokens": value})["param"] == "max_tokens"
    refused(MessagesRequest, {**MESSAGES, "max_tokens": value})


def test_the_openapi_document_sets_no_upper_bound_on_max_tokens():
    props = ChatCompletionRequest.model_json_schema()["properties"]
    assert "maximum" not in json.dumps(props["max_tokens"]) and '"minimum": 1' in json.dumps(props["max_tokens"])


# ---- nesting depth ------------------------------------------------------------------------------

def test_depth_counts_arrays_and_objects():
    assert not deeper_than({"a": [1, {"b": "x"}]}, 3) and deeper_than({"a": [1, {"b": ["x"]}]}, 3)
    assert not deeper_than("text", 0) and not deeper_than(nested(MAX_DEPTH)) and deeper_than(nested(MAX_DEPTH + 1))
    deep: list = []
    for _ in range(100_000):  # iterative: no RecursionError whatever the depth
        deep = [deep]
    assert deeper_than(deep)


@pytest.mark.parametrize("field", ["tool_choice", "response_format", "tools", "ignored_extra_field"])
def test_a_chat_body_nested_too_deep_is_a_clear_400(field):
    value = nested(900)
    if field == "tools":
        value = [{"type": "function", "function": {"name": "f", "parameters": value}}]
    error = refused(ChatCompletionRequest, {**CHAT, field: value})
    assert f"more than {MAX_DEPTH} levels deep" in error["message"] and error["code"] == "invalid_request"


def test_a_realistic_tool_schema_is_well_within_the_bound():
    schema: dict = {"type": "string"}
    for _ in range(10):  # ten levels of objects in a tool's JSON schema
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    body = {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}}
    assert ChatCompletionRequest.model_validate(body).tools


@pytest.mark.parametrize("extra", [
    {"tools": [{"name": "t", "input_schema": nested(900)}]},
    {"messages": [{"role": "user", "content": "hi"},
                  {"role": "assistant",
                   "content": [{"type": "tool_use", "id": "a", "name": "t", "input": nested(900)}]},
                  {"role": "user", "content": "go on"}]},
    {"thinking": nested(900)},
])
def test_an_anthropic_body_nested_too_deep_is_a_clear_400(extra):
    for model in (MessagesRequest, CountTokensRequest):
        assert f"more than {MAX_DEPTH} levels deep" in refused(model, {**MESSAGES, **extra})["message"]


# ---- the key before the body ---------------------------------------------------------------------

class Gate:
    def authenticate(self, key: str | None) -> Tenant | None:
        return Tenant("demo") if key == "sk-good" else None


@pytest.fixture
def keyed_app():
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AuthMiddleware)
    app.state.gate, app.state.max_body_bytes, app.state.reads = Gate(), 1_000, 0

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        request.app.state.reads += 1
        body = await request.json()
        return {"tenant": tenant_of(request.state).name, "keys": sorted(body)}

    @app.post("/v1/messages")
    async def messages(request: Request):
        request.app.state.reads += 1
        return {}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


async def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.request(method, path, **kwargs)


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer sk-bad"}, {"x-api-key": "nope"}])
@pytest.mark.parametrize("content", [b"{oops", b"x" * 5_000, b"[" * 2_000 + b"]" * 2_000])
async def test_no_valid_key_is_a_401_whatever_the_body_and_it_is_never_read(keyed_app, headers, content):
    r = await call(keyed_app, "POST", "/v1/chat/completions", content=content,
                   headers={**headers, "content-type": "application/json"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert keyed_app.state.reads == 0


async def test_the_401_is_in_the_route_s_api_shape(keyed_app):
    r = await call(keyed_app, "POST", "/v1/messages", content=b"{oops")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error" and r.json()["type"] == "error"


async def test_a_valid_key_reaches_the_route_with_its_tenant(keyed_app):
    keys = ({"authorization": "Bearer sk-good"}, {"Authorization": "bearer  sk-good "}, {"x-api-key": "sk-good"})
    for headers in keys:
        r = await call(keyed_app, "POST", "/v1/chat/completions", json={"b": 1, "a": 2}, headers=headers)
        assert r.json() == {"tenant": "demo", "keys": ["a", "b"]}
    r = await call(keyed_app, "POST", "/v1/chat/completions", content=b"x" * 5_000, headers={"x-api-key": "sk-good"})
    assert r.status_code == 413  # past the key, the body limit


async def test_public_paths_and_unknown_paths(keyed_app):
    assert (await call(keyed_app, "GET", "/health")).status_code == 200
    assert (await call(keyed_app, "GET", "/nothing")).status_code == 401  # no key: nothing about routes
    assert (await call(keyed_app, "GET", "/nothing", headers={"x-api-key": "sk-good"})).status_code == 404


def test_api_key_prefers_bearer():
    assert api_key([(b"x-api-key", b"a"), (b"authorization", b"Bearer b")]) == "b"
    assert api_key([(b"authorization", b"Basic zzz"), (b"x-api-key", b"a")]) == "a"
    assert api_key([(b"authorization", b"Bearer \xff")]) == "\xff"  # latin-1, never a decode error
    assert api_key([]) is None


# ---- the header policy ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [b"x-session-id", b"X_Session_Id", b"serve_multiplexed_model_id",
                                  b"serve-multiplexed-model-id", b"x-request-timeout-seconds",
                                  b"x-request-disconnect-disabled", b"x-serve-router-replica"])
def test_headers_that_steer_serve_are_removed(name):
    kept, problem = screen([(name, b"\xffpin-me"), (b"authorization", b"Bearer k")])
    assert problem is None and kept == [(b"authorization", b"Bearer k")]


def test_the_renamed_session_header_is_removed_too(monkeypatch):
    monkeypatch.setenv("RAY_SERVE_SESSION_ID_HEADER_KEY", "x-affinity")
    assert screen([(b"x-affinity", b"1")]) == ([], None)


@pytest.mark.parametrize("value", [b"ab\xffcd", b"caf\xc3\xa9", b"a\tb", b"x" * 257, b"\x7f"])
def test_an_x_request_id_serve_cannot_keep_is_refused(value):
    assert screen([(b"x-request-id", value)])[1] == BAD_REQUEST_ID


def test_request_ids_kept_dropped():
    assert screen([(b"x-request-id", b"req 1/abc-DEF_=")])[0] == [(b"x-request-id", b"req 1/abc-DEF_=")]
    assert screen([(b"x-request-id", b"")]) == ([], None)  # none: Serve makes one
    assert screen([(b"x-request-id", b"a"), (b"x-request-id", b"b")])[0] == [(b"x-request-id", b"a")]
    assert screen([(b"traceparent", b"00-\xff"), (b"tracestate", b"k=\xfe"), (b"x-other", b"\xff")])[0] == \
        [(b"x-other", b"\xff")]  # a header Serve does not read keeps its bytes


@pytest.fixture
def policed_app():
    app = FastAPI()
    app.add_middleware(HeaderPolicy)

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def echo(request: Request):
        return {"headers": sorted(request.headers.keys())}

    return app


async def test_the_policy_answers_400_in_the_route_s_shape(policed_app):
    r = await call(policed_app, "POST", "/v1/chat/completions", headers={"x-request-id": b"caf\xc3\xa9"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request_id"
    assert r.json()["error"]["param"] == "x-request-id" and len(r.headers["x-request-id"]) == 36
    # In Serve's proxy the application's route prefix is still in the path.
    r = await call(policed_app, "POST", "/app/v1/messages", headers={"x-request-id": b"caf\xc3\xa9"})
    assert r.status_code == 400 and r.json()["type"] == "error"


async def test_the_policy_passes_clean_requests_on(policed_app):
    r = await call(policed_app, "GET", "/v1/models", headers={"x-session-id": "1", "x-request-id": "r1"})
    assert r.status_code == 200 and "x-session-id" not in r.json()["headers"] and "x-request-id" in r.json()["headers"]


def test_serve_s_proxy_callback_returns_starlette_middleware():
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    assert [m.cls for m in validate_http_proxy_callback_return(proxy_middlewares())] == [HeaderPolicy]


# ---- /v1/usage query values ----------------------------------------------------------------------

@pytest.mark.parametrize("params,param", [
    ({"pool": "short\x00"}, "pool"), ({"tenant": "demo\x00"}, "tenant"), ({"from": "2026\x00"}, "from"),
    ({"limit": "1\x00"}, "limit"), ({"tenant": ""}, "tenant"),
])
@pytest.mark.parametrize("caller", [Tenant("demo"), Tenant("root", admin=True)])
def test_usage_query_values_the_ledger_cannot_take_are_400s(params, param, caller):
    with pytest.raises(UsageQueryRefused) as info:
        UsageQuery.parse(params, caller)
    assert info.value.param == param and not info.value.forbidden


def test_usage_query_defaults():
    assert UsageQuery.parse({}, Tenant("demo")).tenant == "demo"
    assert UsageQuery.parse({}, Tenant("root", admin=True)).tenant is None
    assert UsageQuery.parse({"tenant": "demo", "pool": ""}, Tenant("root", admin=True)).pool is None
