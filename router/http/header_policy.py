"""Request headers at the door: the ones only Serve may set, and values Serve cannot read.

Ray Serve 2.60's HTTP proxy reads some request headers itself, before any application code runs
(ray/serve/_private/proxy.py, HTTPProxy.setup_request_context_and_handle; http_util.py):

- `x-request-id` and the session header (`x-session-id`, renamed by RAY_SERVE_SESSION_ID_HEADER_KEY)
  are decoded with `value.decode()`: one byte that is not UTF-8 raises UnicodeDecodeError out of
  the proxy's ASGI app and uvicorn answers a bare 500, before the router runs.
- the session header becomes `handle.options(session_id=...)`: the client picks (pins) the ingress
  replica. `serve_multiplexed_model_id` steers the same choice; `x-request-timeout-seconds: 0`
  turns off the proxy's request timeout and `x-request-disconnect-disabled: ?1` stops the proxy
  from noticing that the client left (the replica would keep generating, and billing); HAProxy
  mode trusts `x-serve-router-*`. These are hints between Serve's own components, not for clients.
- `traceparent` / `tracestate` are decoded the same way when Serve's own tracing is on.

HeaderPolicy removes the steering headers, drops trace headers that are not ASCII (W3C: an
invalid traceparent is ignored), keeps one x-request-id, and refuses (400, the route's API shape)
an x-request-id that is not 1..MAX_REQUEST_ID_CHARS printable ASCII characters. It runs in Serve's
proxy, in front of Serve's own request-id middleware, through RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
= `router.http.header_policy:proxy_middlewares` (set in the serve configs' controller_options:
the proxy actors inherit the controller's environment). In HAProxy mode each ingress replica's own
HTTP server applies the same callback (replica.py, configure_http_middlewares) before Serve's
replica code reads the headers, so the policy holds there too (seen on this machine). And it runs
again inside the ingress app, so the app holds the same rules whatever sits in front of it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable

from router import errors
from router.http.asgi_errors import send_error

REQUEST_ID = b"x-request-id"
MAX_REQUEST_ID_CHARS = 256  # what the ledger keeps of it (router/tenancy/store.py, CLIENT_ID_CHARS)
_STEERING = frozenset({"serve_multiplexed_model_id", "x_request_timeout_seconds", "x_request_disconnect_disabled"})
_STEERING_PREFIX = "x_serve_router_"
_TRACE = frozenset({b"traceparent", b"tracestate"})
BAD_REQUEST_ID = (f"The x-request-id header must be 1 to {MAX_REQUEST_ID_CHARS} printable ASCII characters "
                  "(send none and one is made for you).")

Headers = list[tuple[bytes, bytes]]


def _normal(name: bytes) -> str:
    """Serve compares header names case-blind and with '-' and '_' alike: so must we."""
    return name.decode("latin-1").lower().replace("-", "_")


def _session_header() -> str:
    return _normal(os.environ.get("RAY_SERVE_SESSION_ID_HEADER_KEY", "x-session-id").encode("latin-1"))


def valid_request_id(value: bytes) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_CHARS and value.isascii() and value.decode("ascii").isprintable()


def screen(headers: Iterable[tuple[bytes, bytes]]) -> tuple[Headers, str | None]:
    """(the headers to pass on, None) or (_, why the request is refused). Pure."""
    session = _session_header()
    kept: Headers = []
    seen_request_id = False
    for name, value in headers:
        normal = _normal(name)
        if normal in _STEERING or normal == session or normal.startswith(_STEERING_PREFIX):
            continue
        if name.lower() in _TRACE and not value.isascii():
            continue
        if name.lower() == REQUEST_ID:
            if seen_request_id or value == b"":  # one id per request; an empty one is none
                continue
            if not valid_request_id(value):
                return kept, BAD_REQUEST_ID
            seen_request_id = True
        kept.append((name, value))
    return kept, None


def _api_path(scope) -> str:
    """The API path, also in Serve's proxy, where an application's route prefix is still part
    of the path: it decides the error's shape (Anthropic's under /v1/messages)."""
    path = errors.route_path(scope)
    at = path.find("/v1/")
    return path[at:] if at > 0 else path


class HeaderPolicy:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        kept, problem = screen(scope.get("headers") or ())
        if problem is None:
            # In place, as Serve's own request-id middleware edits them: the middleware outside
            # (telemetry) reads what routing writes into this same scope (the matched route).
            scope["headers"] = kept
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation; the app has none
        else:
            error = errors.APIError(400, problem, param="x-request-id", code="invalid_request_id")
            fresh = str(uuid.uuid4()).encode()  # the client's id cannot be echoed: it is the problem
            await send_error(send, {**scope, "path": _api_path(scope), "root_path": ""}, error,
                             [(REQUEST_ID, fresh)])


def proxy_middlewares() -> list:
    """RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH's callback: Serve's proxy wraps its ASGI app in
    these, outside its own request-id middleware."""
    from starlette.middleware import Middleware

    return [Middleware(HeaderPolicy)]
