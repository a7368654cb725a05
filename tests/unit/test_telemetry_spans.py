"""Spans of the ingress and the replicas, on a local SDK TracerProvider (the global one is never set; no Ray)."""

import asyncio
import json
import time
import types
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode

from common.protocol import (
    GenerateRequest,
    delta_event,
    end_event,
    error_event,
    start_event,
)
from router.routing import load_book as balancing
from router.admission import admit
from router.context_cap import OverflowPolicy
from router.routing.pools import SPILLED, PoolLimits
from common.telemetry import attributes as A
from common.telemetry import replica_span
from router.telemetry import routing_spans
from router.telemetry.asgi import IngressTelemetry, TelemetryMiddleware, request_trace, trace_id_header
from common.telemetry.propagation import carrier_for, context_from, trace_id_hex
from router.telemetry.request_trace import UNMATCHED, start_request_trace
from router.telemetry.span_attributes import (
    admission_attributes,
    messages_attribute,
    placement_attributes,
    quota_attributes,
    replica_ranking_attributes,
    routing_attributes,
)
from router.tenancy.quota import Grant, RateHeaders

CAP = 40_960
POOLS = [
    PoolLimits("short", max_model_len=16_384, max_prompt_tokens=8_192, spill_at_outstanding_tokens=10**9),
    PoolLimits("long", max_model_len=40_960, max_prompt_tokens=40_959, spill_at_outstanding_tokens=10**9),
]
IDENTITY = {"replica": "short#abc", "node_id": "node-1", "accelerator": "L4", "pool": "short"}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter) -> trace.Tracer:
    provider = TracerProvider(sampler=ALWAYS_ON)  # explicit: independent of OTEL_TRACES_SAMPLER
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


def only(exporter, name=None):
    spans = [s for s in exporter.get_finished_spans() if name is None or s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def exported_attributes(tracer, exporter, attributes: dict) -> dict:
    """The attributes as the SDK keeps them (an invalid value would be dropped with a warning)."""
    tracer.start_span("probe", attributes=attributes).end()
    return dict(only(exporter, "probe").attributes)


def as_exported(attributes: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()}


def never_count() -> int:
    raise AssertionError("the exact count was not needed")


# ---- span_attributes ---------------------------------------------------------------------

def test_admission_attributes_when_the_bound_decided():
    adm = admit(upper_bound=500, count_exact=never_count, max_tokens=100, pools=POOLS, outstanding_tokens={},
                cap=CAP, policy=OverflowPolicy.CLAMP)
    assert admission_attributes(adm, CAP) == {
        A.PROMPT_COUNTED: False, A.PROMPT_BOUND: 500, A.CONTEXT_CAP: CAP, A.CONTEXT_LIMIT: 16_384,
        A.POOL: "short", A.GRANTED_MAX_TOKENS: 100,
    }  # no input tokens: nothing was counted


def test_admission_attributes_when_counted_and_clamped(tracer, exporter):
    adm = admit(upper_bound=None, count_exact=lambda: 30_000, max_tokens=20_000, pools=POOLS,
                outstanding_tokens={}, cap=CAP, policy=OverflowPolicy.CLAMP)
    attrs = admission_attributes(adm, CAP)
    assert attrs == {
        A.PROMPT_COUNTED: True, A.PROMPT_BOUND: 30_000, A.INPUT_TOKENS: 30_000, A.CONTEXT_CAP: CAP,
        A.CONTEXT_LIMIT: CAP, A.POOL: "long", A.GRANTED_MAX_TOKENS: CAP - 30_000, A.CLAMPED_FROM: 20_000,
    }
    assert exported_attributes(tracer, exporter, attrs) == attrs


def test_admission_attributes_leave_out_a_max_tokens_the_replica_fills_in():
    adm = admit(upper_bound=500, count_exact=never_count, max_tokens=None, pools=POOLS, outstanding_tokens={},
                cap=CAP, policy=OverflowPolicy.CLAMP)
    assert adm.max_tokens is None
    assert A.GRANTED_MAX_TOKENS not in admission_attributes(adm, CAP)


def test_routing_attributes_of_a_spill_list_candidates_in_order_with_their_load(tracer, exporter):
    pools = [PoolLimits("tiny", 8_192, 4_096, spill_at_outstanding_tokens=1_000),
             PoolLimits("short", 16_384, 8_192, spill_at_outstanding_tokens=2_000), POOLS[1]]
    load = {"tiny": 7_000, "short": 3_000}  # both saturated; long has no entry (0)
    adm = admit(upper_bound=500, count_exact=never_count, max_tokens=100, pools=pools, outstanding_tokens=load,
                cap=CAP, policy=OverflowPolicy.CLAMP)
    attrs = routing_attributes(adm, load)
    assert attrs[A.POOL] == "long" and attrs[A.ROUTING_REASON] == SPILLED
    assert attrs[A.CANDIDATE_POOLS] == ["tiny", "short", "long"]
    assert attrs[A.POOL_OUTSTANDING] == [7_000, 3_000, 0]
    assert "tiny saturated" in attrs[A.ROUTING_DETAIL]
    assert exported_attributes(tracer, exporter, attrs) == as_exported(attrs)


def test_routing_attributes_of_a_predicted_placement_show_the_best_candidates_of_every_pool(tracer, exporter):
    from common.config import Objectives
    from common.engine_model import H100_TP1, L40S_TP2
    from router.routing.placer import Placer, PoolTerms

    placer = Placer({"short": PoolTerms("short", L40S_TP2, 5.2, CAP), "long": PoolTerms("long", H100_TP1, 7.0, CAP)},
                    Objectives())
    views = placer.views([("short", f"s{i}", {"engine_running": i}) for i in range(4)]
                         + [("long", "l0", {"engine_prefill_tokens": 50_000})], now=0.0)
    adm = admit(upper_bound=None, count_exact=lambda: 700, max_tokens=100, pools=POOLS, outstanding_tokens={},
                cap=CAP, policy=OverflowPolicy.CLAMP,
                place=lambda tokens, fitting: placer.place(views, tokens, {f.name for f in fitting}))
    attrs = routing_attributes(adm, {})
    assert attrs[A.ROUTING_REASON] == "predicted" and attrs[A.POOL] == "short"
    assert attrs[A.PREDICTED_REPLICAS] == ["s0", "s1", "s2", "s3"]  # the idlest L40S first; 4 shown of 5
    assert attrs[A.PREDICTED_POOLS] == ["short"] * 4 and all(attrs[A.PREDICTED_MEETS])
    assert attrs[A.PREDICTED_CACHED] == [0, 0, 0, 0]  # no prefix sent anywhere yet
    assert attrs[A.PREDICTED_TTFT] == sorted(attrs[A.PREDICTED_TTFT]) and attrs[A.TTFT_CORRECTION] == 1.0
    assert attrs[A.LIKELY_OUTPUT] == 900 and "replica s0 meets the objectives" in attrs[A.ROUTING_DETAIL]
    assert exported_attributes(tracer, exporter, attrs) == as_exported(attrs)


def test_replica_ranking_attributes_best_first_with_scores():
    loads = [balancing.ReplicaLoad("a", reported_tokens=300, reported_requests=1),
             balancing.ReplicaLoad("c", reported_tokens=100, reported_requests=5),
             balancing.ReplicaLoad("b", reported_tokens=50, local_tokens=100, local_requests=2)]
    attrs = replica_ranking_attributes(balancing.ranked(loads), attempt=2)
    assert attrs == {A.CANDIDATE_REPLICAS: ["b", "c", "a"], A.REPLICA_SCORES: [100, 100, 300],
                     A.REPLICA_REQUESTS: [2, 5, 1], A.ROUTING_ATTEMPTS: 2}


def test_quota_attributes_grant_and_clamp():
    grant = Grant(max_tokens=100, tokens=600, usd=Decimal("0.01"), clamped_from=None, headers=RateHeaders())
    assert quota_attributes(grant) == {A.QUOTA_DECISION: "grant", A.GRANTED_MAX_TOKENS: 100}
    clamp = Grant(max_tokens=40, tokens=540, usd=Decimal("0.004"), clamped_from=16_000, headers=RateHeaders())
    assert quota_attributes(clamp) == {A.QUOTA_DECISION: "clamp", A.GRANTED_MAX_TOKENS: 40,
                                       A.QUOTA_CLAMPED_FROM: 16_000}


def test_placement_and_messages_attributes():
    start = start_event(**IDENTITY, prompt_tokens=None, max_tokens=None)
    assert placement_attributes(start) == {A.REPLICA_ID: "short#abc", A.NODE_ID: "node-1", A.ACCELERATOR: "L4",
                                           A.POOL: "short"}
    assert json.loads(messages_attribute(None, "héllo")) == [{"role": "user", "content": "héllo"}]
    assert "héllo" in messages_attribute([{"role": "user", "content": "héllo"}], None)  # not \\u-escaped


# ---- propagation and the replica's GenerationSpan -----------------------------------------

def generate_request(**kw) -> GenerateRequest:
    kw = {"request_id": "req-1", "kind": "chat", "context_limit": 16_384, "model": "magistral", "request_key": "k1",
          "max_tokens": 50, **kw}
    return GenerateRequest(**kw)


class FakeClock:
    def __init__(self, *values):
        self.values = list(values)

    def monotonic(self):
        return self.values.pop(0)


def test_context_from_an_empty_carrier_starts_a_new_trace():
    assert context_from({}) is None and context_from(None) is None


def test_generation_span_continues_the_routing_span_from_the_carrier(tracer, exporter):
    parent = tracer.start_span("route")
    gen = replica_span.GenerationSpan(tracer, generate_request(trace_context=carrier_for(parent)), IDENTITY)
    gen.end(cancelled=False)
    parent.end()
    span = only(exporter, "chat magistral")
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None and span.parent.is_remote
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.status.status_code is StatusCode.UNSET
    assert {k: span.attributes[k] for k in (A.OPERATION, A.PROVIDER, A.REQUEST_MODEL, A.REQUEST_STREAM,
                                            A.REQUEST_ID, A.LEDGER_KEY, A.REPLICA_ID, A.POOL,
                                            A.REQUEST_MAX_TOKENS)} == {
        A.OPERATION: "chat", A.PROVIDER: "mistral_ai", A.REQUEST_MODEL: "magistral", A.REQUEST_STREAM: True,
        A.REQUEST_ID: "req-1", A.LEDGER_KEY: "k1", A.REPLICA_ID: "short#abc", A.POOL: "short",
        A.REQUEST_MAX_TOKENS: 50}


def test_generation_span_without_a_carrier_is_a_root_and_without_max_tokens(tracer, exporter):
    replica_span.GenerationSpan(tracer, generate_request(kind="completion", max_tokens=None), IDENTITY) \
        .end(cancelled=False)
    span = only(exporter, "text_completion magistral")
    assert span.parent is None
    assert A.REQUEST_MAX_TOKENS not in span.attributes


def test_generation_span_first_delta_and_end_event(tracer, exporter, monkeypatch):
    monkeypatch.setattr(replica_span, "time", FakeClock(10.0, 10.75, 11.5))
    gen = replica_span.GenerationSpan(tracer, generate_request(), IDENTITY)
    gen.observe(start_event(**IDENTITY, prompt_tokens=12, max_tokens=50))
    gen.observe(delta_event(content="Hel", completion_tokens=1))
    gen.observe(delta_event(content="lo", completion_tokens=2))  # not the first: no new clock reading
    gen.observe(end_event(finish_reason="stop", prompt_tokens=12, completion_tokens=2, reasoning_tokens=0))
    gen.end(cancelled=False)
    attrs = only(exporter).attributes
    assert attrs[A.TIME_TO_FIRST_CHUNK] == pytest.approx(0.75)
    assert (attrs[A.INPUT_TOKENS], attrs[A.OUTPUT_TOKENS], attrs[A.REASONING_TOKENS]) == (12, 2, 0)
    assert attrs[A.FINISH_REASONS] == ("stop",)


def test_generation_span_cancelled(tracer, exporter):
    gen = replica_span.GenerationSpan(tracer, generate_request(), IDENTITY)
    gen.end(cancelled=True, generated=7)
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR and "cancelled" in span.status.description
    assert span.attributes[A.OUTCOME] == "cancelled" and span.attributes[A.ERROR_TYPE] == "cancelled"
    assert span.attributes[A.OUTPUT_TOKENS] == 7


def test_generation_span_failure_wins_over_cancelled(tracer, exporter):
    gen = replica_span.GenerationSpan(tracer, generate_request(), IDENTITY)
    gen.end(cancelled=True, error=RuntimeError("engine died"))
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RuntimeError: engine died"
    assert span.attributes[A.ERROR_TYPE] == "RuntimeError" and A.OUTCOME not in span.attributes
    assert [e.name for e in span.events] == ["exception"]


def test_generation_span_error_event(tracer, exporter):
    gen = replica_span.GenerationSpan(tracer, generate_request(), IDENTITY)
    gen.observe(error_event(status=400, message="x" * 500, type="BadRequestError"))
    gen.end(cancelled=False)
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "x" * 200
    assert span.attributes[A.ERROR_TYPE] == "BadRequestError"


def test_child_carrier_names_the_generation_span(tracer, exporter):
    gen = replica_span.GenerationSpan(tracer, generate_request(), IDENTITY)
    carrier = gen.child_carrier()
    ctx = gen.span.get_span_context()
    version, trace_id, span_id, flags = carrier["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert int(flags, 16) & 1  # sampled: vLLM records its span
    gen.end(cancelled=False)


# ---- routing_spans -----------------------------------------------------------------------

LOADS = [balancing.ReplicaLoad("r1", reported_tokens=10), balancing.ReplicaLoad("r2", reported_tokens=20)]


def test_routing_span_gets_each_ranking_until_untracked(tracer, exporter):
    before = routing_spans.tracked()
    span = tracer.start_span("route")
    routing_spans.track("key-1", span)
    try:
        assert routing_spans.tracked() == before + 1
        routing_spans.note_ranking("key-1", LOADS)
        routing_spans.note_ranking("key-1", LOADS[::-1])  # Serve ranks again when all are busy
    finally:
        routing_spans.untrack("key-1")
    routing_spans.note_ranking("key-1", LOADS)  # after untrack: ignored
    routing_spans.untrack("key-1")  # twice: harmless
    span.end()
    attrs = only(exporter).attributes
    assert attrs[A.ROUTING_ATTEMPTS] == 2
    assert attrs[A.CANDIDATE_REPLICAS] == ("r2", "r1") and attrs[A.REPLICA_SCORES] == (20, 10)
    assert routing_spans.tracked() == before


def test_note_ranking_for_an_unknown_key_is_a_no_op():
    before = routing_spans.tracked()
    routing_spans.note_ranking("never-tracked", LOADS)
    routing_spans.note_ranking("", LOADS)  # a request without a key (getattr default in the router)
    assert routing_spans.tracked() == before


def test_a_non_recording_span_is_not_tracked():
    before = routing_spans.tracked()
    span = TracerProvider(sampler=ALWAYS_OFF).get_tracer("off").start_span("route")
    assert not span.is_recording()
    routing_spans.track("key-off", span)
    assert routing_spans.tracked() == before


# ---- RequestTrace (driven directly) ------------------------------------------------------

class Points:
    """Stands in for IngressMetrics: keeps what it is asked to record."""

    def __init__(self):
        self.points = []

    def record(self, points):
        self.points.extend(points)

    def of(self, metric):
        return [p for p in self.points if p.metric == metric]


def test_start_routing_and_routed(tracer, exporter):
    metrics = Points()
    rt = start_request_trace(tracer, metrics, None, "POST", capture_content=False)
    before = routing_spans.tracked()
    span, carrier = rt.start_routing("key-2", {A.POOL: "short"})
    assert routing_spans.tracked() == before + 1
    assert carrier["traceparent"].split("-")[2] == f"{span.get_span_context().span_id:016x}"
    routing_spans.note_ranking("key-2", LOADS)
    rt.routed("key-2", span, start_event(**IDENTITY, prompt_tokens=None, max_tokens=None))
    assert routing_spans.tracked() == before
    route = only(exporter, "route")
    assert route.parent.span_id == rt.span.get_span_context().span_id
    assert route.attributes[A.CHOSEN_REPLICA] == "short#abc" and route.attributes[A.ROUTING_ATTEMPTS] == 1

    span, _ = rt.start_routing("key-3", {})
    rt.routed("key-3", span, None, ConnectionError("pool gone"))
    failed = [s for s in exporter.get_finished_spans() if s.name == "route"][-1]
    assert failed.status.status_code is StatusCode.ERROR and A.CHOSEN_REPLICA not in failed.attributes
    assert routing_spans.tracked() == before


def test_finish_cancelled_is_499_and_an_error_span(tracer, exporter):
    metrics = Points()
    rt = start_request_trace(tracer, metrics, None, "POST", capture_content=False)
    rt.matched("POST", "/v1/chat/completions")
    rt.record.http_status, rt.record.pool = 200, "short"
    rt.finish(asyncio.CancelledError())
    span = only(exporter)
    assert span.name == "POST /v1/chat/completions"
    assert span.status.status_code is StatusCode.ERROR and "cancelled" in span.status.description
    assert span.attributes[A.OUTCOME] == "cancelled" and span.attributes[A.ERROR_TYPE] == "cancelled"
    assert span.attributes[A.HTTP_STATUS] == 499
    assert metrics.of("requests")[0].tags["status"] == "499"


def test_finish_takes_the_usage_from_a_settled_account(tracer, exporter):
    metrics = Points()
    rt = start_request_trace(tracer, metrics, None, "POST", capture_content=False)
    rt.record.http_status, rt.record.pool = 200, "short"
    rt.account = types.SimpleNamespace(status="completed", billed=(12, 30, 7), cost=Decimal("0.0042"))
    rt.finish(None)
    attrs = only(exporter).attributes
    assert (attrs[A.INPUT_TOKENS], attrs[A.OUTPUT_TOKENS], attrs[A.REASONING_TOKENS]) == (12, 30, 7)
    assert attrs[A.COST_USD] == "0.0042" and attrs[A.OUTCOME] == "completed" and attrs[A.POOL] == "short"
    assert [p.value for p in metrics.of("tokens")] == [12, 30, 7]
    assert metrics.of("cost")[0].value == pytest.approx(0.0042)


def test_finish_with_an_unsettled_account_adds_no_usage(tracer, exporter):
    rt = start_request_trace(tracer, Points(), None, "POST", capture_content=False)
    rt.record.http_status = 200
    rt.account = types.SimpleNamespace(status=None, billed=(0, 0, 0), cost=None)
    rt.finish(None)
    assert A.INPUT_TOKENS not in only(exporter).attributes


def test_finish_refused_is_not_an_error_span_but_a_5xx_is(tracer, exporter):
    refused = start_request_trace(tracer, Points(), None, "POST", capture_content=False)
    refused.record.http_status, refused.record.refusal = 429, "rate_limit_exceeded"
    refused.finish(None)
    span = exporter.get_finished_spans()[-1]
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes[A.OUTCOME] == "refused" and span.attributes[A.ERROR_TYPE] == "rate_limit_exceeded"

    in_band = start_request_trace(tracer, Points(), None, "POST", capture_content=False)
    in_band.record.http_status = 200
    in_band.in_band_error(502)  # headers were out with 200
    in_band.finish(None)
    span = exporter.get_finished_spans()[-1]
    assert span.status.status_code is StatusCode.ERROR and span.attributes[A.HTTP_STATUS] == 502


def test_deltas_time_the_first_token_and_capture_content_only_when_asked(tracer, exporter):
    rt = start_request_trace(tracer, Points(), None, "POST", capture_content=True)
    rt.record.http_status = 200
    rt.delta(delta_event(reasoning="think"))
    first = rt.record.first_token_s
    rt.delta(delta_event(content="Hi"))
    rt.delta(delta_event(content=" there"))
    assert rt.record.first_token_s == first
    rt.finish(None)
    attrs = only(exporter).attributes
    assert attrs[A.TIME_TO_FIRST_CHUNK] == pytest.approx(first - rt.record.started_s)
    assert json.loads(attrs[A.OUTPUT_MESSAGES]) == [{"role": "assistant", "parts": [
        {"type": "reasoning", "content": "think"}, {"type": "text", "content": "Hi there"}]}]

    quiet = start_request_trace(tracer, Points(), None, "POST", capture_content=False)
    quiet.record.http_status = 200
    quiet.delta(delta_event(content="secret"))
    quiet.finish(None)
    assert A.OUTPUT_MESSAGES not in exporter.get_finished_spans()[-1].attributes


# ---- TelemetryMiddleware on a small FastAPI app --------------------------------------------

CLIENT_TRACE, CLIENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.fixture
def metrics() -> Points:
    return Points()


@pytest.fixture
def marks() -> dict:
    return {}


@pytest.fixture
def app(tracer, exporter, metrics, marks) -> FastAPI:
    app = FastAPI()
    app.add_middleware(TelemetryMiddleware)
    app.state.telemetry = IngressTelemetry(tracer, metrics=metrics, capture_content=False)

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str, request: Request):
        rt = request_trace(request)
        return {"id": thing_id, "current_is_server_span": trace.get_current_span() is rt.span}

    @app.get("/refuse")
    async def refuse(request: Request):
        request_trace(request).record.refusal = "rate_limit_exceeded"
        return JSONResponse({"error": "slow down"}, status_code=429)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("unexpected")

    @app.get("/stream")
    async def stream(request: Request):
        rt = request_trace(request)
        rt.record.pool = "short"

        async def body():
            for chunk in (b"a", b"b", b"c"):
                yield chunk
                await asyncio.sleep(0.005)
            rt.in_band_error(502)
            marks["last_chunk_ns"] = time.time_ns()
            marks["spans_when_done"] = len(exporter.get_finished_spans())
            yield b"error"

        return StreamingResponse(body(), media_type="text/plain")

    return app


@pytest.fixture
async def client(app):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_x_trace_id_is_the_server_spans_trace_id(client, exporter):
    response = await client.get("/things/7")
    assert response.status_code == 200 and response.json() == {"id": "7", "current_is_server_span": True}
    span = only(exporter)
    assert span.kind is SpanKind.SERVER and span.parent is None
    assert response.headers["x-trace-id"] == f"{span.context.trace_id:032x}"


async def test_a_client_traceparent_is_continued(client, exporter):
    response = await client.get("/things/7", headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    span = only(exporter)
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE == response.headers["x-trace-id"]
    assert span.parent.span_id == int(CLIENT_SPAN, 16) and span.parent.is_remote


async def test_span_named_after_the_route_template(client, exporter, metrics):
    await client.get("/things/42")
    span = only(exporter)
    assert span.name == "GET /things/{thing_id}"
    assert span.attributes[A.HTTP_ROUTE] == "/things/{thing_id}"
    assert span.attributes[A.HTTP_METHOD] == "GET" and span.attributes[A.HTTP_STATUS] == 200
    (requests,) = metrics.of("requests")
    assert requests.tags == {"tenant": "-", "pool": "none", "route": "/things/{thing_id}", "status": "200"}


async def test_an_unknown_path_is_labelled_unmatched(client, exporter, metrics):
    response = await client.get("/no/such/path/123")
    assert response.status_code == 404
    assert metrics.of("requests")[0].tags["route"] == UNMATCHED == "unmatched"
    span = only(exporter)
    assert span.name == "GET" and A.HTTP_ROUTE not in span.attributes


async def test_health_is_not_traced_but_carries_a_trace_id(client, exporter, metrics):
    response = await client.get("/health")
    assert response.status_code == 200 and len(response.headers["x-trace-id"]) == 32
    assert exporter.get_finished_spans() == () and metrics.points == []
    # The client's trace, when it names one (no span of ours in it).
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await client.get("/health", headers={"traceparent": parent})
    assert response.headers["x-trace-id"] == "0af7651916cd43dd8448eb211c80319c"
    assert exporter.get_finished_spans() == ()


async def test_a_refusal_is_counted_with_its_code(client, exporter, metrics):
    response = await client.get("/refuse")
    assert response.status_code == 429 and "x-trace-id" in response.headers
    assert metrics.of("refusals")[0].tags["reason"] == "rate_limit_exceeded"
    assert only(exporter).attributes[A.OUTCOME] == "refused"


async def test_an_unexpected_exception_still_ends_the_span_as_an_error(client, exporter, metrics):
    response = await client.get("/boom")
    assert response.status_code == 500
    span = only(exporter)
    assert span.name == "GET /boom"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.OUTCOME] == "failed"
    assert [e.attributes["exception.type"] for e in span.events if e.name == "exception"] == ["RuntimeError"]
    assert metrics.of("requests")[0].tags == {"tenant": "-", "pool": "none", "route": "/boom", "status": "500"}


async def test_a_stream_span_ends_after_its_last_chunk(client, exporter, metrics, marks):
    response = await client.get("/stream")
    assert response.status_code == 200 and response.content == b"abcerror"
    assert marks["spans_when_done"] == 0  # not exported while the body was still being produced
    span = only(exporter)
    assert span.end_time >= marks["last_chunk_ns"]
    assert span.status.status_code is StatusCode.ERROR  # the in-band 502 after the 200
    assert metrics.of("requests")[0].tags["status"] == "502"
    assert metrics.of("latency")[0].tags == {"pool": "short", "route": "/stream", "stream": "false",
                                             "status": "502"}


async def test_a_cancelled_request_ends_its_span_and_counts_499(tracer, exporter, metrics):
    async def gone(scope, receive, send):
        raise asyncio.CancelledError()

    app_state = types.SimpleNamespace(state=types.SimpleNamespace(
        telemetry=IngressTelemetry(tracer, metrics=metrics)))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "app": app_state}
    with pytest.raises(asyncio.CancelledError):
        await TelemetryMiddleware(gone)(scope, None, None)
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR and span.attributes[A.OUTCOME] == "cancelled"
    assert metrics.of("requests")[0].tags["status"] == "499"
    assert trace.get_current_span() is not span  # the context was detached


async def test_without_telemetry_the_app_runs_untraced(exporter):
    app = FastAPI()
    app.add_middleware(TelemetryMiddleware)

    @app.get("/x")
    async def x(request: Request):
        return {"trace": request_trace(request) is not None}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/x")
    assert response.json() == {"trace": False} and "x-trace-id" not in response.headers


def test_trace_id_hex_of_an_invalid_span_is_none():
    assert trace_id_hex(trace.INVALID_SPAN) is None


async def test_an_unexpected_exception_answer_carries_x_trace_id(tracer, exporter, metrics):
    app = FastAPI()
    app.add_middleware(TelemetryMiddleware)
    app.state.telemetry = IngressTelemetry(tracer, metrics=metrics)

    @app.exception_handler(Exception)  # as router/ingress.py's _unexpected does
    async def unexpected(request: Request, exc: Exception):
        return JSONResponse({"error": {"message": "server error"}}, status_code=500, headers=trace_id_header(request))

    @app.get("/boom")
    async def boom():
        raise RuntimeError("unexpected")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers.get("x-trace-id") == f"{only(exporter).context.trace_id:032x}"


async def test_the_ingress_middlewares_keep_route_labels_and_label_a_401_by_its_route(tracer, exporter, metrics):
    """The ingress stacks HeaderPolicy and AuthMiddleware inside TelemetryMiddleware: the matched
    route must still reach the telemetry's scope, and a 401 answered before routing is labelled
    by the route its path names (not `unmatched`)."""
    from router.http.auth import AuthMiddleware
    from router.http.header_policy import HeaderPolicy
    from router.tenancy.directory import Tenant

    class Gate:
        def authenticate(self, key):
            return Tenant("alpha") if key == "good" else None

    app = FastAPI()
    app.add_middleware(AuthMiddleware)
    app.add_middleware(HeaderPolicy)
    app.add_middleware(TelemetryMiddleware)
    app.state.telemetry = IngressTelemetry(tracer, metrics=metrics, capture_content=False)
    app.state.gate = Gate()

    @app.post("/v1/things/{thing_id}")
    async def thing(thing_id: str):
        return {"id": thing_id}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/v1/things/1", headers={"x-api-key": "good"})).status_code == 200
        refused = await client.post("/v1/things/2", content=b"{oops")
        assert refused.status_code == 401 and refused.headers["x-trace-id"]
    served, unauthorized = (p.tags for p in metrics.of("requests"))
    assert served == {"tenant": "alpha", "pool": "none", "route": "/v1/things/{thing_id}", "status": "200"}
    assert unauthorized == {"tenant": "-", "pool": "none", "route": "/v1/things/{thing_id}", "status": "401"}
    assert metrics.of("refusals")[0].tags["reason"] == "invalid_api_key"
    assert [s.name for s in exporter.get_finished_spans()] == ["POST /v1/things/{thing_id}"] * 2
