"""No 5xx and no surprises at the edge (issue 19), on the session's cluster, through Serve's HTTP
proxy: the key before the body, strict types, max_tokens over 2**31-1 clamped, bounded nesting,
the header policy in the proxy, ids on every answer, /v1/usage's query values on SQLite and
PostgreSQL, and a response id of each answer's own."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from router.json_nesting import MAX_DEPTH

pytestmark = pytest.mark.cluster
MODEL = "magistral-small-2506"
CAP = 40_960
HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": MODEL, "messages": HI, "max_tokens": 3}
MESSAGES = {"model": MODEL, "messages": HI, "max_tokens": 3}
KEY = {"Authorization": "Bearer sk-local-demo"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(local_cluster):
    with httpx.Client(base_url=local_cluster["root_url"], timeout=120) as c:
        yield c


def deep_text(depth: int, leaf: str = '"x"') -> bytes:
    """JSON text nested `depth` objects deep (json.dumps itself would recurse too deep)."""
    return ('{"a":' * depth + leaf + "}" * depth).encode()


def with_deep(body: dict, field: str, depth: int) -> bytes:
    """`body` with `field` (a top-level key) set to a value nested `depth` deep."""
    text = json.dumps({**body, field: "__deep__"}).encode()
    return text.replace(b'"__deep__"', deep_text(depth))


def openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert code is None or error["code"] == code, error
    assert r.headers.get("x-request-id") and r.headers.get("x-trace-id")
    return error


def anthropic_error(r: httpx.Response, status: int, kind: str) -> dict:
    assert r.status_code == status, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == kind, r.text
    return r.json()["error"]


def raw_get(root_url: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, str], bytes]:
    """GET with header bytes as given (no client library would send a non-UTF-8 header)."""
    url = urlsplit(root_url)
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: " + url.netloc.encode(), b"Connection: close",
             *(name + b": " + value for name, value in headers)]
    with socket.create_connection((url.hostname, url.port), timeout=60) as s:
        s.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), found, body


# ---- 1. the key before the body -------------------------------------------------------------------

BODIES = {"malformed": b"{oops", "deep": deep_text(5_000), "huge": b'{"x": "' + b"x" * 5_000_000 + b'"}'}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"x-api-key": "sk-wrong"}])
@pytest.mark.parametrize("kind", BODIES)
def test_no_valid_key_is_401_whatever_the_body(client, headers, kind):
    r = client.post("/v1/chat/completions", content=BODIES[kind], headers={**headers, **JSON})
    openai_error(r, 401, "invalid_api_key")
    r = client.post("/v1/messages", content=BODIES[kind], headers={**headers, **JSON})
    anthropic_error(r, 401, "authentication_error")


def test_the_key_comes_first_on_every_route_but_health_and_openapi(client):
    for method, path in [("GET", "/v1/models"), ("GET", "/v1/usage"), ("POST", "/v1/messages/count_tokens"),
                         ("GET", "/v1/no-such-route")]:
        assert client.request(method, path).status_code == 401, path
    assert client.get("/health").status_code == 200 and client.get("/openapi.json").status_code == 200


# ---- 2. strict types -----------------------------------------------------------------------------

@pytest.mark.parametrize("extra,param", [
    ({"max_tokens": "5"}, "max_tokens"), ({"max_tokens": True}, "max_tokens"), ({"max_tokens": 2.0}, "max_tokens"),
    ({"stream": "true"}, "stream"), ({"temperature": "0.5"}, "temperature"), ({"n": True}, "n"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
])
def test_openai_wrong_types_are_400(client, extra, param):
    error = openai_error(client.post("/v1/chat/completions", headers=KEY, json={**CHAT, **extra}), 400, "invalid_value")
    assert error["param"] == param and error["type"] == "invalid_request_error"
    openai_error(client.post("/v1/completions", headers=KEY, json={"model": MODEL, "prompt": "p", **extra}), 400)


@pytest.mark.parametrize("extra", [{"max_tokens": "5"}, {"max_tokens": True}, {"stream": "true"},
                                   {"temperature": "1"}, {"top_k": 2.5}])
def test_anthropic_wrong_types_are_400(client, extra):
    anthropic_error(client.post("/v1/messages", headers=KEY, json={**MESSAGES, **extra}), 400, "invalid_request_error")


def test_a_json_integer_is_a_valid_float(client):
    r = client.post("/v1/chat/completions", headers=KEY, json={**CHAT, "temperature": 1, "top_p": 1})
    assert r.status_code == 200, r.text
    assert client.post("/v1/messages", headers=KEY, json={**MESSAGES, "temperature": 1}).status_code == 200


# ---- 3. max_tokens over 2**31-1 is clamped like any max_tokens over the cap ---------------------------

@pytest.mark.parametrize("value", [2**31 - 1, 2**31, 10**30])
def test_max_tokens_over_int32_is_clamped_to_the_cap(client, value):
    r = client.post("/v1/chat/completions", headers=KEY, json={**CHAT, "max_tokens": value})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= CAP
    r = client.post("/v1/messages", headers=KEY, json={**MESSAGES, "max_tokens": value})
    assert r.status_code == 200, r.text


# ---- 4. nesting depth ---------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [MAX_DEPTH, 760, 970, 5_000])
@pytest.mark.parametrize("field", ["tool_choice", "response_format", "unknown_field"])
def test_a_chat_body_nested_too_deep_is_a_clear_400(client, depth, field):
    r = client.post("/v1/chat/completions", headers={**KEY, **JSON}, content=with_deep(CHAT, field, depth))
    error = openai_error(r, 400)
    assert f"more than {MAX_DEPTH} levels deep" in error["message"]


def test_a_chat_body_nested_within_the_bound_is_served(client):
    body = with_deep(CHAT, "tool_choice", MAX_DEPTH - 1)  # the body itself is the first level
    r = client.post("/v1/chat/completions", headers={**KEY, **JSON}, content=body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_an_anthropic_body_nested_too_deep_is_a_clear_400(client, path):
    tools = [{"name": "t", "input_schema": {"type": "object"}}]
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "t", "input": "__deep__"}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]
    text = json.dumps({**MESSAGES, "tools": tools, "messages": history}).encode()
    r = client.post(path, headers={**KEY, **JSON}, content=text.replace(b'"__deep__"', deep_text(900)))
    assert f"more than {MAX_DEPTH} levels deep" in anthropic_error(r, 400, "invalid_request_error")["message"]


# ---- 5. headers Serve's proxy reads, screened in the proxy -------------------------------------------

def test_a_non_utf8_request_id_is_a_400_from_the_proxy_not_a_500(local_cluster):
    auth = (b"authorization", b"Bearer sk-local-demo")
    status, headers, body = raw_get(local_cluster["root_url"], "/v1/models", [auth, (b"x-request-id", b"ab\xffcd")])
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_request_id", body
    assert headers["x-request-id"] and headers["content-type"] == "application/json"
    status, _, body = raw_get(local_cluster["root_url"], "/v1/messages", [auth, (b"x-request-id", b"caf\xc3\xa9")])
    assert status == 400 and json.loads(body)["type"] == "error"  # Anthropic's shape on its routes


@pytest.mark.parametrize("name", [b"x-session-id", b"X_Session_Id", b"serve_multiplexed_model_id",
                                  b"serve-multiplexed-model-id"])
def test_serve_routing_headers_are_removed_not_decoded(local_cluster, name):
    """Serve's proxy would decode these as UTF-8 (a 500) and steer the ingress replica choice by
    them; the header policy removes them first."""
    auth = (b"authorization", b"Bearer sk-local-demo")
    status, headers, body = raw_get(local_cluster["root_url"], "/v1/models", [auth, (name, b"pin\xffme")])
    assert status == 200, body
    assert raw_get(local_cluster["root_url"], "/v1/models", [auth, (name, b"pin-me")])[0] == 200


def test_a_client_cannot_set_the_proxy_s_timeout(client):
    """x-request-timeout-seconds is a hint from HAProxy to Serve's proxy; a client's would cut its
    own request short at 1 ms (408), or lift the timeout altogether with 0."""
    r = client.post("/v1/chat/completions", headers={**KEY, "x-request-timeout-seconds": "0.001"},
                    json={**CHAT, "max_tokens": 20})
    assert r.status_code == 200, r.text


def test_a_valid_request_id_is_echoed(client):
    r = client.get("/v1/models", headers={**KEY, "x-request-id": "client id 42/x"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client id 42/x"


# ---- 6. ids on every answer, Allow on a 405 -----------------------------------------------------------

def test_health_carries_request_and_trace_ids(client):
    r = client.get("/health", headers={"x-request-id": "probe-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "probe-1" and len(r.headers["x-trace-id"]) == 32
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert client.get("/health", headers={"traceparent": parent}).headers["x-trace-id"] == \
        "0af7651916cd43dd8448eb211c80319c"


def test_a_405_names_the_allowed_methods(client):
    r = client.get("/v1/chat/completions", headers=KEY)
    openai_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    r = client.post("/v1/models", headers=KEY)
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = client.delete("/v1/messages", headers=KEY)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["type"] == "error"


# ---- 7. /v1/usage's query values, and ids of each answer's own -------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger_url(request, local_cluster) -> str:
    """The session's application (SQLite ledger), and one on PostgreSQL."""
    return local_cluster["root_url"] if request.param == "sqlite" else request.getfixturevalue("postgres_app")


@pytest.mark.parametrize("params,param", [
    ({"pool": "short\x00"}, "pool"), ({"tenant": "demo\x00"}, "tenant"), ({"from": "2026-01-01\x00"}, "from"),
    ({"tenant": ""}, "tenant"),
])
def test_usage_query_values_the_ledger_cannot_take_are_400(ledger_url, params, param):
    r = httpx.get(f"{ledger_url}/v1/usage", params=params, headers=KEY, timeout=60)
    assert openai_error(r, 400, "invalid_value")["param"] == param


def test_usage_still_answers_on_both_ledgers(ledger_url):
    r = httpx.get(f"{ledger_url}/v1/usage", params={"tenant": "demo", "pool": "short"}, headers=KEY, timeout=60)
    assert r.status_code == 200 and r.json()["tenant"] == "demo"


def test_two_answers_to_one_request_id_have_ids_of_their_own(client):
    headers = {**KEY, "x-request-id": "same-id"}
    for path, body, prefix in [("/v1/chat/completions", CHAT, "chatcmpl-"),
                               ("/v1/completions", {"model": MODEL, "prompt": "p", "max_tokens": 3}, "cmpl-"),
                               ("/v1/messages", MESSAGES, "msg_")]:
        first, second = (client.post(path, headers=headers, json=body) for _ in range(2))
        assert first.headers["x-request-id"] == second.headers["x-request-id"] == "same-id"
        ids = {first.json()["id"], second.json()["id"]}
        assert len(ids) == 2 and all(i.startswith(prefix) and "same-id" not in i for i in ids)
