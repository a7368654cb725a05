"""The span a replica opens around one generation, in the replica's own process.

Its parent is the ingress's routing span (the W3C context on the GenerateRequest), so the trace
shows which Serve replica, Ray node and accelerator served the request. It is started and ended
explicitly rather than made current: a replica's generate() is an async generator that Serve may
close from another task, where detaching a context token would fail.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.protocol import DELTA, END, ERROR, GenerateRequest
from common.telemetry import attributes as A
from common.telemetry.propagation import carrier_for, context_from

OPERATIONS = {"chat": "chat", "completion": "text_completion"}


class GenerationSpan:
    def __init__(self, tracer: trace.Tracer, request: GenerateRequest, identity: dict):
        operation = OPERATIONS[request.kind]
        self._started = time.monotonic()
        self._first_token = False
        self.span = tracer.start_span(
            f"{operation} {request.model}", context=context_from(request.trace_context), kind=SpanKind.SERVER,
            attributes={
                A.OPERATION: operation, A.PROVIDER: A.PROVIDER_MISTRAL, A.REQUEST_MODEL: request.model,
                A.REQUEST_STREAM: request.stream, A.REQUEST_ID: request.request_id, A.LEDGER_KEY: request.request_key,
                A.REPLICA_ID: identity["replica"], A.NODE_ID: identity["node_id"],
                A.ACCELERATOR: identity["accelerator"], A.POOL: identity["pool"],
                **({A.REQUEST_MAX_TOKENS: request.max_tokens} if request.max_tokens is not None else {}),
            },
        )

    def child_carrier(self) -> dict[str, str]:
        """W3C headers for the engine (vLLM's trace_headers): its llm_request span is our child."""
        return carrier_for(self.span)

    def observe(self, event: dict) -> None:
        kind = event["event"]
        if kind == DELTA and not self._first_token:
            self._first_token = True
            self.span.set_attribute(A.TIME_TO_FIRST_CHUNK, time.monotonic() - self._started)
        elif kind == END:
            self.span.set_attributes({
                A.INPUT_TOKENS: event["prompt_tokens"], A.OUTPUT_TOKENS: event["completion_tokens"],
                A.REASONING_TOKENS: event["reasoning_tokens"], A.FINISH_REASONS: [event["finish_reason"]],
            })
        elif kind == ERROR:
            self.span.set_attribute(A.ERROR_TYPE, event["type"])
            self.span.set_status(Status(StatusCode.ERROR, event["message"][:200]))

    def end(self, *, cancelled: bool, generated: int | None = None, error: BaseException | None = None) -> None:
        """cancelled: the caller went away (or the replica failed) before the end event."""
        if generated is not None:
            self.span.set_attribute(A.OUTPUT_TOKENS, generated)
        if error is not None:
            self.span.record_exception(error)
            self.span.set_attribute(A.ERROR_TYPE, type(error).__name__)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
        elif cancelled:
            self.span.set_attribute(A.OUTCOME, "cancelled")
            self.span.set_attribute(A.ERROR_TYPE, "cancelled")
            self.span.set_status(Status(StatusCode.ERROR, "cancelled: the caller went away"))
        self.span.end()
