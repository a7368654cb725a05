"""The envelope both replicas run generate() in (deployments/replica_envelope.py): span, refusal,
load accounting, start event, cancellation and stats, driven with fake producers and a local
OpenTelemetry tracer (no Ray cluster, no engine)."""

import asyncio
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import StatusCode

from common.protocol import GenerateRequest, delta_event, end_event, error_event, start_event
from common.telemetry import attributes as A
from common.telemetry.propagation import context_from
from deployments.replica_envelope import Admission, ReplicaEnvelope
from deployments.replica_load import ReplicaIdentity

IDENTITY = ReplicaIdentity(replica="short#abc", pool="short", accelerator="L4", node_id="node-1")
WORK = 12 + 50  # prompt + min(max_tokens, decode estimate)


class FakeMetrics:
    def __init__(self) -> None:
        self.updates: list[dict] = []

    def update(self, stats: dict) -> None:
        self.updates.append(dict(stats))


class FakeReplica:
    """A replica's own part: admit, produce events, count generated tokens."""

    def __init__(self, events: list[dict], *, fail_after: int | None = None, counts: bool = True,
                 refusal: dict | None = None, delay_s: float = 0.0):
        self.events = events
        self.delay_s = delay_s  # between events, as an engine's steps
        self.fail_after = fail_after  # raise after yielding this many events
        self.counts = counts
        self.refusal = refusal
        self.generated = 0
        self.started = self.closed = False
        self.carrier: dict | None = None

    def admit(self, request: GenerateRequest, trace_carrier: dict[str, str]) -> Admission | dict:
        self.carrier = trace_carrier
        if self.refusal is not None:
            return self.refusal
        return Admission(request.prompt_tokens, request.max_tokens, self.produce(),
                         generated=(lambda: self.generated) if self.counts else None)

    async def produce(self):
        self.started = True
        try:
            for i, event in enumerate(self.events):
                if self.fail_after is not None and i == self.fail_after:
                    raise RuntimeError("engine died")
                if event["event"] == "delta":
                    self.generated = event["completion_tokens"]
                yield event
                await asyncio.sleep(self.delay_s)
        finally:
            self.closed = True


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def metrics() -> FakeMetrics:
    return FakeMetrics()


@pytest.fixture
def envelope(exporter, metrics) -> ReplicaEnvelope:
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return ReplicaEnvelope(IDENTITY, provider.get_tracer("test"), metrics)


def request(**overrides) -> GenerateRequest:
    fields = dict(request_id="req-1", kind="chat", context_limit=1000, messages=[{"role": "user", "content": "hi"}],
                  prompt_tokens=12, max_tokens=50, model="magistral", request_key="key-1")
    return GenerateRequest(**{**fields, **overrides})


def stream() -> list[dict]:
    return [
        delta_event(reasoning="hmm", completion_tokens=2, reasoning_tokens=2),
        delta_event(content="Hello", completion_tokens=5, reasoning_tokens=2),
        # one more token than the last delta (it made no text): on completion END's count stands
        end_event(finish_reason="stop", prompt_tokens=12, completion_tokens=6, reasoning_tokens=2),
    ]


def only_span(exporter):
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def totals(envelope) -> dict:
    return {**envelope.load.routing_stats(), **envelope.load.totals()}


async def test_a_normal_run_streams_start_then_the_replicas_events_and_releases_the_load(envelope, exporter):
    replica = FakeReplica(stream())
    gen = envelope.generate(request(), replica.admit)
    start = await gen.__anext__()
    assert start == start_event(**IDENTITY.as_dict(), prompt_tokens=12, max_tokens=50)
    assert totals(envelope)["queued_tokens"] == WORK and totals(envelope)["ongoing_requests"] == 1
    assert not replica.started  # the replica's events start only after START is out
    rest = [event async for event in gen]
    assert rest == stream()
    assert totals(envelope) == {"queued_tokens": 0, "ongoing_requests": 0, "engine_prefill_tokens": 0, "completed": 1, "cancelled": 0,
                                "cancelled_completion_tokens": 0, "context_tokens": 0, "prefilled_tokens_total": 12}
    span = only_span(exporter)
    assert span.name == "chat magistral"
    assert span.status.status_code is StatusCode.UNSET
    attrs = span.attributes
    assert (attrs[A.INPUT_TOKENS], attrs[A.OUTPUT_TOKENS], attrs[A.REASONING_TOKENS]) == (12, 6, 2)
    assert attrs[A.FINISH_REASONS] == ("stop",) and A.TIME_TO_FIRST_CHUNK in attrs
    assert (attrs[A.REPLICA_ID], attrs[A.POOL], attrs[A.NODE_ID]) == ("short#abc", "short", "node-1")
    assert A.OUTCOME not in attrs and A.ERROR_TYPE not in attrs
    assert replica.closed


async def test_the_trace_carrier_makes_the_replica_span_the_engines_parent(envelope, exporter):
    replica = FakeReplica(stream())
    _ = [event async for event in envelope.generate(request(), replica.admit)]
    parent = context_from(replica.carrier)
    assert trace.get_current_span(parent).get_span_context().span_id == only_span(exporter).context.span_id


async def test_a_refusal_books_no_load_and_ends_the_span(envelope, exporter):
    refusal = error_event(status=400, message="too long for this pool", param="max_tokens")
    replica = FakeReplica(stream(), refusal=refusal)
    gen = envelope.generate(request(), replica.admit)
    assert await gen.__anext__() == refusal
    assert totals(envelope)["ongoing_requests"] == 0 and totals(envelope)["queued_tokens"] == 0
    span = only_span(exporter)  # ended before the refusal was yielded
    assert [event async for event in gen] == []
    assert totals(envelope) == {"queued_tokens": 0, "ongoing_requests": 0, "engine_prefill_tokens": 0, "completed": 0, "cancelled": 0,
                                "cancelled_completion_tokens": 0, "context_tokens": 0, "prefilled_tokens_total": 0}
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "too long for this pool"
    assert span.attributes[A.ERROR_TYPE] == "invalid_request_error" and A.OUTCOME not in span.attributes
    assert not replica.started


async def test_closing_mid_stream_is_a_cancellation_that_reports_the_generated_tokens(envelope, exporter):
    replica = FakeReplica(stream())
    gen = envelope.generate(request(), replica.admit)
    assert (await gen.__anext__())["event"] == "start"
    assert (await gen.__anext__())["completion_tokens"] == 2
    # Its context (what attention reads per step) is its prompt and what it generated so far.
    assert totals(envelope)["context_tokens"] == 12 + 2 and totals(envelope)["prefilled_tokens_total"] == 12
    await gen.aclose()
    assert replica.closed  # the replica's events are closed with the envelope, before it returns
    assert totals(envelope) == {"queued_tokens": 0, "ongoing_requests": 0, "engine_prefill_tokens": 0, "completed": 0, "cancelled": 1,
                                "cancelled_completion_tokens": 2, "context_tokens": 0, "prefilled_tokens_total": 12}
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR and "cancelled" in span.status.description
    assert span.attributes[A.OUTCOME] == "cancelled" and span.attributes[A.OUTPUT_TOKENS] == 2


async def test_closing_at_the_start_event_is_a_cancellation_too(envelope, exporter):
    replica = FakeReplica(stream())
    gen = envelope.generate(request(), replica.admit)
    await gen.__anext__()
    await gen.aclose()
    assert totals(envelope)["cancelled"] == 1 and totals(envelope)["ongoing_requests"] == 0
    assert only_span(exporter).attributes[A.OUTPUT_TOKENS] == 0 and not replica.started


async def test_a_cancelled_task_is_a_cancellation_and_the_error_propagates(envelope, exporter):
    """Serve throws CancelledError into the generator when its caller goes away."""
    replica = FakeReplica(stream())
    gen = envelope.generate(request(), replica.admit)
    await gen.__anext__()
    await gen.__anext__()
    with pytest.raises(asyncio.CancelledError):
        await gen.athrow(asyncio.CancelledError())
    assert totals(envelope)["cancelled"] == 1 and totals(envelope)["cancelled_completion_tokens"] == 2
    assert only_span(exporter).attributes[A.OUTCOME] == "cancelled"


async def test_a_replica_that_does_not_count_reports_nothing_on_cancel(envelope, exporter):
    """The stub's way: no generated count, so 0 cancelled tokens and no output count on the span."""
    replica = FakeReplica(stream(), counts=False)
    gen = envelope.generate(request(), replica.admit)
    await gen.__anext__()
    await gen.__anext__()
    await gen.aclose()
    assert totals(envelope)["cancelled"] == 1 and totals(envelope)["cancelled_completion_tokens"] == 0
    assert A.OUTPUT_TOKENS not in only_span(exporter).attributes


async def test_a_producer_exception_fails_the_span_ends_the_load_and_is_reraised(envelope, exporter):
    replica = FakeReplica(stream(), fail_after=1)
    seen = []
    with pytest.raises(RuntimeError, match="engine died"):
        async for event in envelope.generate(request(), replica.admit):
            seen.append(event["event"])
    assert seen == ["start", "delta"]
    assert totals(envelope) == {"queued_tokens": 0, "ongoing_requests": 0, "engine_prefill_tokens": 0, "completed": 0, "cancelled": 1,
                                "cancelled_completion_tokens": 2, "context_tokens": 0, "prefilled_tokens_total": 12}
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "RuntimeError: engine died"
    assert span.attributes[A.ERROR_TYPE] == "RuntimeError" and A.OUTCOME not in span.attributes
    assert [e.name for e in span.events] == ["exception"]


async def test_an_error_event_mid_stream_ends_the_request_as_completed(envelope, exporter):
    """vLLM's engine can refuse after START: the error is streamed and the request is over."""
    failed = error_event(status=400, message="bad grammar", type="BadRequestError")
    replica = FakeReplica([stream()[0], failed])
    events = [event async for event in envelope.generate(request(), replica.admit)]
    assert [e["event"] for e in events] == ["start", "delta", "error"] and events[-1] == failed
    assert totals(envelope)["completed"] == 1 and totals(envelope)["cancelled"] == 0
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR and span.attributes[A.ERROR_TYPE] == "BadRequestError"


async def test_routing_stats_are_identity_load_and_engine_stats_and_feed_the_gauges(envelope, metrics):
    gen = envelope.generate(request(), FakeReplica(stream()).admit)
    await gen.__anext__()
    engine = {"engine_running": 1, "kv_cache_usage": 0.25, "ongoing_requests": 99}  # engine keys win
    before = time.time()
    routing = envelope.routing_stats(engine, base={"serve": 1, "pool": "overridden"})
    taken = routing["stats_time"]
    # Until its first token, the request's prompt is the prefill queued here.
    assert routing == {"serve": 1, **IDENTITY.as_dict(), "queued_tokens": WORK, "ongoing_requests": 99,
                       "engine_prefill_tokens": 12, "engine_running": 1, "kv_cache_usage": 0.25,
                       "context_tokens": 12, "prefilled_tokens_total": 0, "stats_time": taken}
    assert before <= taken <= time.time()
    assert metrics.updates == [routing]
    await gen.aclose()
    assert envelope.stats({"engine_running": 0}) == {
        **IDENTITY.as_dict(), "queued_tokens": 0, "ongoing_requests": 0, "engine_prefill_tokens": 0, "engine_running": 0,
        "context_tokens": 0, "prefilled_tokens_total": 0,
        "completed": 0, "cancelled": 1, "cancelled_completion_tokens": 0}
    assert len(metrics.updates) == 1  # stats() reads, the gauges are refreshed by routing stats only
    assert envelope.ready() == IDENTITY.as_dict()


class Callers:
    """caller_alive for the envelope: names listed in `dead` are gone."""

    def __init__(self) -> None:
        self.dead: set[str] = set()
        self.asked: list[str] = []

    def __call__(self, name: str) -> bool:
        self.asked.append(name)
        return name not in self.dead


def slow_stream(n: int) -> list[dict]:
    return [delta_event(content="x", completion_tokens=i + 1, reasoning_tokens=0) for i in range(n)] + [
        end_event(finish_reason="stop", prompt_tokens=12, completion_tokens=n, reasoning_tokens=0)]


async def test_a_request_whose_caller_died_is_stopped_and_its_usage_published(exporter, metrics):
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    callers = Callers()
    envelope = ReplicaEnvelope(IDENTITY, provider.get_tracer("test"), metrics, callers, probe_s=0.05)
    orphan, kept = FakeReplica(slow_stream(1000), delay_s=0.01), FakeReplica(slow_stream(1000), delay_s=0.01)
    seen: dict[str, list[dict]] = {"dead": [], "live": []}

    async def consume(who: str, replica: FakeReplica, key: str) -> None:
        # Nobody reads a dead ingress's stream in Ray either: the replica runs on until told.
        ledger = {"request_id": key, "tenant": "acme"}  # a lease-admitted request's row fields
        async for event in envelope.generate(request(caller=f"ingress-{who}", request_key=key, ledger=ledger),
                                             replica.admit):
            seen[who].append(event)

    dead_task = asyncio.create_task(consume("dead", orphan, "key-dead"))
    live_task = asyncio.create_task(consume("live", kept, "key-live"))
    await asyncio.sleep(0.2)
    assert set(callers.asked) == {"ingress-dead", "ingress-live"}
    callers.dead.add("ingress-dead")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(dead_task, 1.0)
    assert orphan.closed and not live_task.done()
    generated = orphan.generated
    assert 0 < generated < 1000
    orphans = envelope.routing_stats({})["orphans"]
    assert orphans == [{"request_key": "key-dead", "prompt_tokens": 12, "completion_tokens": generated,
                        "reasoning_tokens": 0, "finished": False, "ended_at": orphans[0]["ended_at"],
                        "ledger": {"request_id": "key-dead", "tenant": "acme"}}]
    assert totals(envelope)["cancelled"] == 1 and totals(envelope)["cancelled_completion_tokens"] == generated
    live_task.cancel()
    await asyncio.gather(live_task, return_exceptions=True)
    assert [o["request_key"] for o in envelope.routing_stats({})["orphans"]] == ["key-dead"]  # not the live one


async def test_without_a_caller_probe_nothing_is_watched(envelope):
    replica = FakeReplica(stream())
    _ = [event async for event in envelope.generate(request(caller="ingress-x"), replica.admit)]
    assert "orphans" not in envelope.routing_stats({}) and envelope.callers.callers(time.time()) == set()
