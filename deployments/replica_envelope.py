"""The envelope of a replica's `generate`: the part of the replica protocol billing depends on,
written once for every replica (the stub and the vLLM replica).

A replica supplies only what differs: `admit(request, trace_carrier)` counts the request and
either refuses it (returns an error event) or takes it (returns an `Admission`: the start event's
counts, its delta / end events as a not-yet-started async iterator, and optionally how many tokens
it has generated so far); and its engine's stats. The envelope does the rest, in this order:
1. opens the replica's span (GenerationSpan), a child of the ingress's routing span;
2. a refusal is observed on the span, the span ended, the error event yielded; no load is booked;
3. books the request's work tokens on the load tracker and yields the start event (identity and
   the admission's prompt_tokens / max_tokens);
4. yields the replica's events, each observed on the span (an error event mid-stream ends the
   request like an end event does);
5. releases the load and ends the span. Closing the generator (GeneratorExit) or cancelling its
   task (CancelledError) before the events run out means cancelled; an exception from the events
   means failed (counted cancelled by the load, recorded on the span) and is re-raised. The tokens
   the admission says were generated go to the load's cancelled totals and, when cancelled, to
   the span.
Routing stats are identity + load + engine stats (+ the orphans of deployments/caller_watch.py),
and refresh the replica's gauges.

The envelope also watches each request's caller (the ingress replica named in the request):
every `probe_s` it asks `caller_alive` about each caller with requests here, and a dead caller's
requests are cancelled and their usage published as orphans, for a live ingress to bill.

No Ray API is called here (deployments/replica_load imports ray for ReplicaIdentity.current,
which only the replicas call): tests drive it with a local tracer and fakes, without a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace

from common.protocol import DELTA, END, STAT_ORPHANS, STAT_TIME, GenerateRequest, start_event
from common.telemetry.replica_span import GenerationSpan
from common.tokens import BYTES_PER_TOKEN_ESTIMATE
from deployments.caller_watch import CallerWatch, Usage
from deployments.replica_load import ReplicaIdentity, ReplicaLoadTracker

logger = logging.getLogger("ray.serve")

# caller_alive(name) -> True, False (gone for good), or None (cannot tell now: asked again later).
CallerAlive = Callable[[str], "bool | None"]


@dataclass
class Admission:
    """A request a replica takes."""

    prompt_tokens: int | None  # for the start event (None: the engine decides; END has the count)
    max_tokens: int | None
    events: AsyncIterator[dict]  # delta events then an end (or error) event; started after START
    # Tokens generated so far, read when the request ends (a cancelled request's count). None: the
    # replica does not say (nothing is added to the span, 0 to the load's cancelled tokens).
    generated: Callable[[], int] | None = None


# admit(request, trace_carrier) -> Admission, or the error event that refuses the request.
# trace_carrier: W3C headers whose parent is the replica's span (for an engine that traces).
Admit = Callable[[GenerateRequest, dict[str, str]], Admission | dict]


def prompt_estimate(request: GenerateRequest, admission: Admission) -> int:
    """The prompt's tokens as far as known here: the count, else the router's byte bound over
    common.tokens.BYTES_PER_TOKEN_ESTIMATE, for the prefill-queued estimate only."""
    if admission.prompt_tokens is not None:
        return admission.prompt_tokens
    if request.prompt_tokens is not None:
        return request.prompt_tokens
    return request.prompt_tokens_bound // BYTES_PER_TOKEN_ESTIMATE


class GaugeSink(Protocol):
    def update(self, stats: dict) -> None: ...  # common.telemetry.replica_metrics.ReplicaMetrics


class _Counts:
    """The usage the request's events reported so far (cumulative counts)."""

    def __init__(self, prompt_tokens: int | None):
        self.prompt, self.completion, self.reasoning, self.finished = prompt_tokens or 0, 0, 0, False

    def observe(self, event: dict) -> None:
        if event.get("prompt_tokens") is not None:
            self.prompt = event["prompt_tokens"]
        if event.get("completion_tokens") is not None:
            self.completion = event["completion_tokens"]
            self.reasoning = event.get("reasoning_tokens") or 0
        self.finished |= event["event"] == END


class ReplicaEnvelope:
    def __init__(self, identity: ReplicaIdentity, tracer: trace.Tracer, metrics: GaugeSink,
                 caller_alive: CallerAlive | None = None, probe_s: float = 2.0):
        self.identity = identity
        self.load = ReplicaLoadTracker()
        self._tracer = tracer
        self._metrics = metrics
        self.callers = CallerWatch()
        self._caller_alive, self._probe_s = caller_alive, probe_s
        self._prober: asyncio.Task | None = None

    async def generate(self, request: GenerateRequest, admit: Admit) -> AsyncIterator[dict]:
        span = GenerationSpan(self._tracer, request, self.identity.as_dict())
        admission = admit(request, span.child_carrier())
        if not isinstance(admission, Admission):  # an error event: refused before any work
            span.observe(admission)
            span.end(cancelled=False)
            yield admission
            return
        work = request.work_tokens
        prefill = prompt_estimate(request, admission)
        self.load.begin(work, prefill)
        self.load.hold(id(admission), prefill, admission.generated)
        self._watch(id(admission), request.caller)
        counts = _Counts(admission.prompt_tokens if admission.prompt_tokens is not None else request.prompt_tokens)
        cancelled, failure = True, None
        try:
            yield start_event(**self.identity.as_dict(), prompt_tokens=admission.prompt_tokens,
                              max_tokens=admission.max_tokens)
            async with contextlib.aclosing(admission.events) as events:  # closed with us
                async for event in events:
                    if prefill and event["event"] in (DELTA, END):
                        self.load.prefilled(prefill)
                        prefill = 0
                    span.observe(event)
                    counts.observe(event)
                    yield event
            cancelled = False
        except Exception as exc:
            failure = exc
            raise
        finally:
            generated = admission.generated() if admission.generated is not None else None
            self.load.end(work, cancelled=cancelled, generated=generated or 0, unprefilled_tokens=prefill)
            self.load.release(id(admission))
            self.callers.end(id(admission), Usage(
                request.request_key, counts.prompt, max(counts.completion, generated or 0), counts.reasoning,
                finished=counts.finished, ended_at=time.time(), ledger=request.ledger))
            span.end(cancelled=cancelled, generated=generated if cancelled else None, error=failure)

    def _watch(self, key: int, caller: str) -> None:
        """Watch the request's caller: cancelling this task ends the request as a client leaving
        does (Serve cancels it the same way)."""
        task = asyncio.current_task()
        if not caller or self._caller_alive is None or task is None:
            return
        self.callers.begin(key, caller, task.cancel)
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe_callers())

    async def _probe_callers(self) -> None:
        while True:
            await asyncio.sleep(self._probe_s)
            for caller in self.callers.callers(time.time()):
                try:
                    alive = await asyncio.to_thread(self._caller_alive, caller)
                except Exception as exc:  # noqa: BLE001 - cannot tell now: ask again next round
                    logger.warning("probing caller %s failed: %s", caller, type(exc).__name__)
                    continue
                if alive is False:
                    cut = self.callers.caller_dead(caller, time.time())
                    logger.warning("caller %s is gone: %d of its requests cancelled, their usage published "
                                   "for billing", caller, cut)

    def routing_stats(self, engine_stats: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
        """What record_routing_stats returns (Serve calls it every stats period, so the gauges are
        refreshed with it). base: stats the replica's base class publishes, overridden by ours."""
        now = time.time()
        stats = {**(base or {}), **self.identity.as_dict(), **self.load.routing_stats(), **engine_stats, STAT_TIME: now}
        orphans = self.callers.orphans(now)
        if orphans:
            stats[STAT_ORPHANS] = orphans
        self._metrics.update(stats)
        return stats

    def stats(self, engine_stats: dict[str, Any]) -> dict[str, Any]:
        """For tests and operators: what the replica holds and has done (the gauges are left alone)."""
        return {**self.identity.as_dict(), **self.load.routing_stats(), **engine_stats, **self.load.totals()}

    def ready(self) -> dict[str, str]:
        """What a replica answers once it can serve: its identity."""
        return self.identity.as_dict()
