"""ASGI middleware: one RequestTrace per HTTP request of the ingress.

Opens the SERVER span (continuing the client's traceparent), makes it current while the app runs,
adds `x-trace-id` to the response headers, and finishes the trace once the response is over,
the whole stream included, or the client gone. The tracer, the metrics and the content flag come
from `app.state.telemetry` (an IngressTelemetry, set by the ingress replica).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from router.telemetry.request_trace import RequestTrace, start_request_trace

TRACE_HEADER = b"x-trace-id"
UNTRACED_PATHS = ("/health",)  # load-balancer probes: no spans, no metrics (but an x-trace-id)


@dataclass
class IngressTelemetry:
    tracer: trace.Tracer
    metrics: object  # has record(points); router/telemetry/metrics.py
    capture_content: bool = False


def request_trace(request) -> RequestTrace | None:
    """The RequestTrace of a Starlette request (None when telemetry is not set up)."""
    return getattr(request.state, "trace", None)


def trace_id_header(request) -> dict[str, str]:
    """`x-trace-id` for a response the middleware never sees: Starlette sends the answer of an
    app-wide Exception handler from its outermost middleware, outside this one."""
    rt = request_trace(request)
    return {TRACE_HEADER.decode(): rt.trace_id} if rt is not None and rt.trace_id else {}


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()}


def untraced_trace_id(scope) -> str:
    """The x-trace-id of a request that records no span: the client's trace (traceparent) when
    it sent one, else a new id, so every answer can be quoted by its trace id alike."""
    ctx = trace.get_current_span(propagate.extract(_headers(scope))).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else secrets.token_hex(16)


def _with_header(send, name: bytes, value: bytes):
    async def sending(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (name, value)]}
        await send(message)

    return sending


class TelemetryMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        telemetry: IngressTelemetry | None = getattr(scope.get("app").state, "telemetry", None) \
            if scope["type"] == "http" and scope.get("app") is not None else None
        path = scope.get("path", "")
        if telemetry is None:
            await self.app(scope, receive, send)
            return
        if path.removeprefix(scope.get("root_path", "")) in UNTRACED_PATHS:
            await self.app(scope, receive, _with_header(send, TRACE_HEADER, untraced_trace_id(scope).encode()))
            return
        method = scope["method"]
        rt = start_request_trace(telemetry.tracer, telemetry.metrics, propagate.extract(_headers(scope)),
                                 method, telemetry.capture_content)
        scope.setdefault("state", {})["trace"] = rt
        trace_header = (TRACE_HEADER, rt.trace_id.encode()) if rt.trace_id else None

        async def send_with_trace_id(message):
            if message["type"] == "http.response.start":
                rt.record.http_status = message["status"]
                if trace_header is not None:
                    message = {**message, "headers": [*message.get("headers", ()), trace_header]}
            await send(message)

        token = otel_context.attach(rt.context)
        error = None
        try:
            await self.app(scope, receive, send_with_trace_id)
        except BaseException as exc:  # cancelled (client gone) or failed: the span still ends
            error = exc
            raise
        finally:
            otel_context.detach(token)
            route = scope.get("route")
            if route is not None and getattr(route, "path", None):
                rt.matched(method, route.path)
            rt.finish(error)
