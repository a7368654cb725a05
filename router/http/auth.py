"""Authenticate before anything reads the body.

FastAPI reads and parses a route's JSON body before it runs the route's dependencies, so a key
checked in a dependency would let an anonymous client make the ingress parse up to
`max_body_bytes` of JSON (and see a 400 for malformed JSON instead of a 401). This pure ASGI
middleware checks the key first, from the headers only, and answers 401 before the body is read;
the tenant it finds goes into the request's state for the routes (`tenant_of`).

Every path but PUBLIC_PATHS needs a key, an unknown one too: a client without a key learns
nothing about the routes.
"""

from __future__ import annotations

from router import errors
from router.http.asgi_errors import send_error
from router.tenancy.directory import Tenant

PUBLIC_PATHS = frozenset({"/health", "/openapi.json"})
_STATE_KEY = "tenant"


def api_key(headers) -> str | None:
    """`Authorization: Bearer <key>`, else `x-api-key` (Anthropic's header). ASGI headers:
    (name, value) byte pairs, names lower-case."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found.setdefault(name, value)
    auth = found.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    key = found.get(b"x-api-key")
    return key.decode("latin-1") if key is not None else None


def _label_route(app, scope) -> None:
    """Put the route the path names into the scope, as Starlette's router would have: the
    refusal's span and metrics are labelled by it (router/telemetry/asgi.py), not as unmatched."""
    from starlette.routing import Match

    matched = {}
    for route in app.router.routes:
        matched.setdefault(route.matches(scope)[0], route)
    route = matched.get(Match.FULL) or matched.get(Match.PARTIAL)  # PARTIAL: the path, another method
    if route is not None:
        scope["route"] = route


def tenant_of(state) -> Tenant | None:
    """The tenant AuthMiddleware authenticated (a Starlette `request.state`), if any."""
    return getattr(state, _STATE_KEY, None)


class AuthMiddleware:
    """The gate is `app.state.gate` (set by the ingress replica); without one (an app not set up)
    nothing is authenticated here and `tenant_of` stays None, so a route refuses with 401."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        app = scope.get("app")
        gate = getattr(app.state, "gate", None) if scope["type"] == "http" and app is not None else None
        if gate is None or errors.route_path(scope) in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        tenant = gate.authenticate(api_key(scope.get("headers") or ()))
        state = scope.setdefault("state", {})
        rt = state.get("trace")  # TelemetryMiddleware's RequestTrace, when telemetry is on
        if tenant is None:
            error = errors.unauthorized()
            if rt is not None:
                rt.record.refusal = error.code
            _label_route(app, scope)
            await send_error(send, scope, error)
            return
        state[_STATE_KEY] = tenant
        if rt is not None:
            rt.record.tenant = tenant.name
        await self.app(scope, receive, send)
