"""No input gets a 5xx: every route of the running app, fuzzed with bodies generated from its own
OpenAPI document (tests/schema_strategies.py), arbitrary JSON, strings with lone surrogates, bodies
nested past the edge's depth bound, and header bytes Serve's proxy reads itself.

Against the session's local cluster (stub pools, SQLite ledger) through Serve's HTTP proxy, with
the demo key; the tests whose requests reach the ledger also run against the `pg` application,
whose quotas and ledger are on PostgreSQL. Generated max_tokens are kept small so well-formed
bodies finish quickly; everything else is as generated.
"""

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.json_nesting import MAX_DEPTH
from tests.schema_strategies import (ANY_JSON, ANY_TEXT, DEEP, HEADERS, deep_values, from_schema, resolved,
                                     with_deep)

pytestmark = pytest.mark.cluster

EXAMPLES = 120
BODY_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/messages/count_tokens"]


@pytest.fixture(scope="module")
def openapi(local_cluster) -> dict:
    return httpx.get(f"{local_cluster['root_url']}/openapi.json", timeout=10).json()


def body_schemas(openapi: dict) -> dict[str, dict]:
    components = openapi["components"]["schemas"]
    out = {}
    for path, operations in openapi["paths"].items():
        post = operations.get("post")
        if post and "requestBody" in post:
            out[path] = resolved(post["requestBody"]["content"]["application/json"]["schema"], components)
    return out


def likely_fields(schema: dict) -> dict:
    """Strategies for the fields every request needs right to get past the first checks (the
    model id, a conversation), mixed with what the schema alone would draw, so that most bodies
    reach counting, admission and the replica while the rest probe validation."""
    served = st.sampled_from(["magistral-small-2506", "mistralai/Magistral-Small-2506"])
    fields = {"model": st.one_of(served, served, served, ANY_TEXT), "max_tokens": st.integers(-2, 8) | st.none()}
    if "messages" in schema.get("properties", {}):
        turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": ANY_TEXT})
        chat = st.lists(turn, min_size=1, max_size=3).map(lambda ms: ms[:-1] + [{**ms[-1], "role": "user"}])
        fields["messages"] = st.one_of(chat, chat, chat, from_schema(schema["properties"]["messages"]))
    return fields


def small(body):
    """Keep generation short: a huge max_tokens only makes the stub talk for long, and so does
    `ignore_eos` without one (the whole context: ~5 minutes at the stub's 5 ms per token)."""
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int) and not isinstance(body.get(key), bool) and body[key] > 8:
                body[key] = 8
        if body.get("ignore_eos") is True and body.get("max_tokens") is None \
                and body.get("max_completion_tokens") is None:  # absent, or null
            body["max_tokens"] = 8
    return body


def encoded(body) -> bytes:
    """JSON bytes; lone surrogates go out as \\ud800 escapes, as a client's JSON encoder writes them."""
    return json.dumps(body, ensure_ascii=True).encode()


def test_the_openapi_document_names_the_generation_routes(openapi):
    assert set(body_schemas(openapi)) == set(BODY_ROUTES)


def _client(root_url: str, auth: dict) -> httpx.Client:
    return httpx.Client(base_url=root_url, headers={**auth, "content-type": "application/json"}, timeout=60)


@pytest.fixture(scope="module")
def client(local_cluster, auth):
    with _client(local_cluster["root_url"], auth) as c:
        yield c


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger_client(request, local_cluster, auth):
    """The session's application (SQLite ledger), then the `pg` one (PostgreSQL)."""
    url = local_cluster["root_url"] if request.param == "sqlite" else request.getfixturevalue("postgres_app")
    with _client(url, auth) as c:
        yield c


def check(client: httpx.Client, method: str, path: str, **kwargs) -> None:
    r = client.request(method, path, **kwargs)
    assert r.status_code < 500, f"{method} {path} {kwargs} -> {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:  # an error in the route's API shape (OpenAI's or Anthropic's)
        assert set(r.json()["error"]) >= {"message", "type"}


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_schema_shaped_bodies_never_get_a_5xx(ledger_client, openapi, path):
    schema = body_schemas(openapi)[path]
    strategy = from_schema(schema, likely_fields(schema))

    @FUZZ
    @given(body=strategy)
    def run(body):
        check(ledger_client, "POST", path, content=encoded(small(body)))

    run()


@pytest.mark.parametrize("path", [*BODY_ROUTES, "/v1/models", "/v1/usage"])
def test_arbitrary_json_never_gets_a_5xx(client, path):
    @FUZZ
    @given(body=ANY_JSON)
    def run(body):
        check(client, "POST" if path in BODY_ROUTES else "GET", path, content=encoded(small(body)))

    run()


def test_query_strings_never_get_a_5xx(ledger_client):
    names = st.sampled_from(["from", "to", "pool", "limit", "tenant", "x"])
    nul = st.builds(lambda a, b: a + "\x00" + b, ANY_TEXT, ANY_TEXT)  # PostgreSQL text cannot hold it

    @FUZZ
    @given(params=st.dictionaries(names, ANY_TEXT | nul, max_size=4))
    def run(params):
        check(ledger_client, "GET", "/v1/usage",
              params={k: v.encode("utf-8", "replace").decode() for k, v in params.items()})

    run()


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "magistral-small-2506", "messages": [{"role": "user", "content": "a\ud800"}]}),
    ("/v1/completions", {"model": "magistral-small-2506", "prompt": "\udfff"}),
])
def test_lone_surrogate_is_a_400_in_the_openai_shape(client, path, body):
    r = client.post(path, content=encoded(body))
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and "not valid Unicode" in r.json()["error"]["message"]


def test_a_body_far_over_the_cap_is_refused_before_it_is_read(client):
    huge = encoded({"model": "magistral-small-2506", "messages": [{"role": "user", "content": "x" * 5_000_000}]})
    r = client.post("/v1/chat/completions", content=huge)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


# ---- nesting past the edge's bound, and header bytes Serve's proxy reads ------------------------------

_CHAT = {"model": "magistral-small-2506", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
_TOOL_TURNS = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "t", "input": DEEP}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]
# Every field that carries the client's JSON as it came (typed Any / dict), one a body ignores, and
# fields whose type a deep value breaks.
DEEP_TEMPLATES = {
    "/v1/chat/completions": [
        {**_CHAT, "tool_choice": DEEP}, {**_CHAT, "response_format": DEEP}, {**_CHAT, "unknown": DEEP},
        {**_CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": DEEP}}]},
        {**_CHAT, "messages": [{"role": "user", "content": DEEP}]}, {**_CHAT, "stop": DEEP}],
    "/v1/completions": [{"model": "magistral-small-2506", "prompt": DEEP, "max_tokens": 3},
                        {"model": "magistral-small-2506", "prompt": "p", "max_tokens": 3, "extra": DEEP}],
    "/v1/messages": [
        {**_CHAT, "tool_choice": DEEP}, {**_CHAT, "thinking": DEEP}, {**_CHAT, "metadata": DEEP},
        {**_CHAT, "tools": [{"name": "t", "input_schema": DEEP}]}, {**_CHAT, "messages": _TOOL_TURNS},
        {**_CHAT, "system": DEEP}],
    "/v1/messages/count_tokens": [
        {**_CHAT, "tools": [{"name": "t", "input_schema": DEEP}]}, {**_CHAT, "messages": _TOOL_TURNS}],
}


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_deeply_nested_bodies_never_get_a_5xx(client, path):
    @FUZZ
    @given(template=st.sampled_from(DEEP_TEMPLATES[path]), deep=deep_values(MAX_DEPTH))
    def run(template, deep):
        check(client, "POST", path, content=with_deep(template, deep))

    run()


def test_header_bytes_serve_reads_never_get_a_5xx(ledger_client):
    """Through Serve's proxy: its header policy removes the headers that steer Serve and refuses an
    x-request-id it cannot keep (400); every other request is served, its id echoed."""

    @FUZZ
    @given(headers=HEADERS, path=st.sampled_from(["/v1/chat/completions", "/v1/messages"]))
    def run(headers, path):
        r = ledger_client.post(path, content=encoded(_CHAT), headers=headers)
        assert r.status_code < 500, f"{headers} -> {r.status_code} {r.text[:300]}"
        ids = [v for k, v in headers if k.lower() == b"x-request-id" and v]
        if ids and not (len(ids[0]) <= 256 and ids[0].isascii() and ids[0].decode().isprintable()):
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
        else:
            assert r.status_code == 200, f"{headers} -> {r.status_code} {r.text[:300]}"
            assert r.headers["x-request-id"] == (ids[0].decode() if ids else r.headers["x-request-id"])

    run()
