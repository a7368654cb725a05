"""One request's telemetry in the ingress: the SERVER span, the spans under it, its metrics.

The ASGI middleware (router/telemetry/asgi.py) opens a RequestTrace per HTTP request, continuing
the client's traceparent; the routes add what they decide (tenant, admission, quota, routing,
usage) and the middleware finishes it when the response is over, the whole stream included.
Prompt and completion text go into spans only when the config's `trace_content` is on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from common.telemetry import attributes as A
from router.telemetry import routing_spans
from common.telemetry.propagation import carrier_for, trace_id_hex
from router.telemetry.request_record import CANCELLED, FAILED, REFUSED, RequestRecord, metric_points
from router.telemetry.span_attributes import placement_attributes


class RequestTrace:
    def __init__(self, tracer: trace.Tracer, metrics, span: Span, record: RequestRecord, capture_content: bool):
        self.tracer, self.metrics, self.span, self.record = tracer, metrics, span, record
        self.capture_content = capture_content
        self.context: Context = trace.set_span_in_context(span)
        self.trace_id = trace_id_hex(span)
        self.account = None  # the tenancy Account, once the request holds a reservation
        self._reasoning: list[str] = []
        self._content: list[str] = []

    # ---- what the routes tell it ---------------------------------------------------------
    def set(self, attributes: Mapping) -> None:
        self.span.set_attributes(attributes)

    @contextmanager
    def step(self, name: str) -> Iterator[Span]:
        """A child span around a step of the route (admission): ended, with the error if any."""
        with self.tracer.start_as_current_span(name, context=self.context) as span:
            yield span

    def start_routing(self, request_key: str, attributes: Mapping) -> tuple[Span, dict[str, str]]:
        """The routing span, open until the replica starts; returns it and the W3C context the
        replica's span continues. Serve's RequestRouter adds the replica ranking to it."""
        span = self.tracer.start_span("route", context=self.context, attributes=attributes)
        routing_spans.track(request_key, span)
        return span, carrier_for(span)

    @staticmethod
    def routed(request_key: str, span: Span, start_event: dict | None, error: BaseException | None = None) -> None:
        routing_spans.untrack(request_key)
        if start_event is not None and start_event.get("replica"):
            span.set_attributes({**placement_attributes(start_event), A.CHOSEN_REPLICA: start_event["replica"]})
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()

    def placed(self, start_event: dict) -> None:
        self.span.set_attributes(placement_attributes(start_event))

    def delta(self, event: dict) -> None:
        """A delta left for the client (time to first token; the text when content is traced)."""
        if self.record.first_token_s is None:
            self.record.mark_first_token(time.monotonic())
            self.span.set_attribute(A.TIME_TO_FIRST_CHUNK, self.record.first_token_s - self.record.started_s)
        if self.capture_content:
            self._reasoning.append(event.get("reasoning") or "")
            self._content.append(event.get("content") or "")

    def in_band_error(self, status: int) -> None:
        self.record.end_status = status

    def matched(self, method: str, route: str) -> None:
        """The route template the app matched (HTTP semantic conventions: span name and http.route)."""
        self.record.route = route
        self.span.update_name(f"{method} {route}")
        self.span.set_attribute(A.HTTP_ROUTE, route)

    # ---- the end -------------------------------------------------------------------------
    def finish(self, error: BaseException | None) -> None:
        r, span = self.record, self.span
        r.ended_s = time.monotonic()
        if self.account is not None and self.account.status is not None:
            r.outcome = self.account.status
            r.usage(*self.account.billed, self.account.cost)
        if isinstance(error, asyncio.CancelledError):
            r.outcome = CANCELLED
        elif error is not None:
            r.outcome = r.outcome or FAILED
            span.record_exception(error)
        elif r.http_status is not None and r.http_status >= 400:
            r.outcome = REFUSED if r.http_status < 500 else FAILED
            if r.http_status < 500 and r.refusal is None:  # answered before a route ran (413)
                r.refusal = f"http_{r.http_status}"
        self._final_attributes()
        if r.outcome == CANCELLED:
            span.set_status(Status(StatusCode.ERROR, "cancelled: the client went away"))
        elif r.status >= 500 or r.outcome == FAILED:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {r.status}"))
        span.end()
        self.metrics.record(metric_points(r))

    def _final_attributes(self) -> None:
        r = self.record
        attributes = {A.TENANT: r.tenant, A.OUTCOME: r.outcome or "completed", A.HTTP_STATUS: r.status}
        if r.pool != "none":
            attributes[A.POOL] = r.pool
        if self.account is not None and self.account.status is not None:
            attributes.update({A.INPUT_TOKENS: r.prompt_tokens, A.OUTPUT_TOKENS: r.completion_tokens,
                               A.REASONING_TOKENS: r.reasoning_tokens})
            if r.cost_usd is not None:
                attributes[A.COST_USD] = str(r.cost_usd)
        if r.refusal is not None:
            attributes[A.ERROR_TYPE] = r.refusal
        elif r.outcome == CANCELLED:
            attributes[A.ERROR_TYPE] = "cancelled"
        if self.capture_content and (self._content or self._reasoning):
            parts = [{"type": "reasoning", "content": "".join(self._reasoning)},
                     {"type": "text", "content": "".join(self._content)}]
            attributes[A.OUTPUT_MESSAGES] = json.dumps([{"role": "assistant", "parts": parts}], ensure_ascii=False)
        self.span.set_attributes(attributes)


UNMATCHED = "unmatched"  # route label of a path no route serves (keeps the label set bounded)


def start_request_trace(tracer: trace.Tracer, metrics, parent: Context | None, method: str,
                        capture_content: bool) -> RequestTrace:
    """The route is not known yet (routing happens inside the app): see RequestTrace.matched."""
    span = tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes={A.HTTP_METHOD: method})
    return RequestTrace(tracer, metrics, span, RequestRecord(route=UNMATCHED, started_s=time.monotonic()),
                        capture_content)
