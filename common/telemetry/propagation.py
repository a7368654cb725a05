"""W3C trace context across processes: a plain dict carried on the replica request."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_w3c = TraceContextTextMapPropagator()  # traceparent / tracestate, what vLLM reads too


def carrier_for(span: trace.Span) -> dict[str, str]:
    """Headers that make `span` the parent of whatever the receiver starts."""
    carrier: dict[str, str] = {}
    _w3c.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def context_from(carrier: Mapping[str, str] | None) -> Context | None:
    """The parent context in a carrier (None: start a new trace)."""
    return _w3c.extract(carrier) if carrier else None


def trace_id_hex(span: trace.Span) -> str | None:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
