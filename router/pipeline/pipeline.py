"""The request pipeline, transport-free: admit -> reserve -> route -> stream or collect -> settle.

    admission = await pipeline.admit(ctx)                # count (only when needed), cap, pool
    account = await pipeline.reserve(ctx, admission)     # the tenant's quota, worst case
    placed = await pipeline.route(ctx, admission, account)   # the pool's replica starts it
    answer = pipeline.collect(...) or pipeline.stream(...)   # the wire format's answer, settled

`run` does exactly that. Each stage returns what the next needs; none writes into the context.
Every way a request ends goes through `TenancyGate.settle(account, ending)` (the billing rules of
router/tenancy/settlement.py). Errors are raised as values (router.errors.APIError, or tenancy's
refusals) for the HTTP edge to render; nothing here imports FastAPI. Replicas are reached through
`dispatch(pool, job)`, which returns the replica's event stream (a Serve handle call in the edge).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from common.config import AppConfig
from common.engine_model import profile_named
from common.protocol import DELTA, END, ERROR, START, GenerateRequest
from common.telemetry import attributes as A
from common.tokens import PromptInvalid, TekkenCounter, chat_upper_bound, text_upper_bound
from router import errors
from router.admission import Admission, admit, bound_decides, effective_cap, needs_exact_count
from router.context_cap import ContextLengthExceeded
from router.fairness.tiers import Tier
from router.pipeline.context import RequestContext
from router.pipeline.fair_turns import FairTurns, Shed, allowed_for_replacement
from router.routing.load_book import LoadBook
from common import prefix_keys
from router.routing.placer import Placement, Placer, pool_terms
from router.routing.pools import PREDICTED, PoolChoice, PoolLimits, allowed_pools, pool_limits
from router.telemetry.span_attributes import (admission_attributes, queue_attributes, quota_attributes,
                                              routing_attributes)
from router.tenancy.errors import QuotaRefused
from router.tenancy.gate import TenancyGate
from router.tenancy.settlement import Account, Ending
from router.tenancy.store import RequestInfo
from router.wire.openai.writer import Collected

logger = logging.getLogger("ray.serve")

# Counting a long prompt takes ~1 ms per 1k tokens; past this bound (or with no bound), count off
# the event loop.
COUNT_IN_THREAD_ABOVE_BYTES = 32_000


class EventStream(Protocol):
    """A replica's answer: START (or ERROR), DELTAs, END. cancel() stops the replica's work."""

    def __aiter__(self) -> AsyncIterator[dict]: ...

    async def __anext__(self) -> dict: ...

    def cancel(self) -> None: ...


Dispatch = Callable[[str, GenerateRequest], EventStream]


class Answer(Protocol):
    """A wire format's answer over replica events (router/wire/answer_formats.py)."""

    def full(self, collected: Collected, cost: Decimal | None) -> dict: ...
    def opening(self) -> list[bytes]: ...
    def delta(self, event: dict, usage: Callable[[], dict]) -> list[bytes]: ...
    def end(self, event: dict, cost: Decimal | None) -> list[bytes]: ...
    def error(self, error: errors.APIError) -> list[bytes]: ...
    def closing(self) -> list[bytes]: ...


@dataclass
class Placed:
    """A request a replica has started: its events, and the headers that name where it runs."""

    events: EventStream
    headers: dict[str, str]
    release: Callable[[], None]  # forget its load; stop the replica if it did not finish


@dataclass(frozen=True)
class WholeAnswer:
    body: dict
    headers: dict[str, str]
    cost: Decimal | None


@dataclass(frozen=True)
class StreamedAnswer:
    chunks: AsyncIterator[bytes]
    headers: dict[str, str]
    on_close: Callable[[], None]  # however the response ends (the client may leave before it starts)


def engine_error(event: dict) -> errors.APIError:
    """An engine refusal (vLLM's 4xx) reaches the client as is; its failures as a 5xx."""
    status = event["status"] if 400 <= event["status"] < 600 else 500
    return errors.APIError(status, event["message"], type=event["type"], param=event["param"])


def guard_prompt(step: Callable[[], Any]) -> Any:
    """Run a step that renders the prompt; a template refusal is the client's 400."""
    try:
        return step()
    except PromptInvalid as exc:
        raise errors.APIError(400, f"Invalid messages: {exc}", param="messages", code="invalid_messages") from exc


FleetStats = Callable[[], Iterable[tuple[str, str, Mapping]]]  # (pool, replica id, its routing stats)
QueueLengths = Callable[[Mapping[Tier, int]], None]  # the fair queue's held requests per tier, on change


class _Watched:
    """A replica's events, on their way telling the placer what it predicted for: where the
    request started, when its first token came (the TTFT correction; also on the routing span),
    and how long the answer was (the likely output)."""

    def __init__(self, events: EventStream, placer: Placer, placement: Placement, key: str, dispatched_at: float,
                 clock: Callable[[], float], span) -> None:
        self._events, self._placer, self._placement, self._key = events, placer, placement, key
        self._at, self._clock, self._span = dispatched_at, clock, span
        self._replica: str | None = None

    def __aiter__(self) -> "_Watched":
        return self

    async def __anext__(self) -> dict:
        event = await self._events.__anext__()
        kind = event["event"]
        if kind == START:
            self._replica = event.get("replica")
            if self._replica:
                self._placer.started(self._key, self._replica)
        elif kind == DELTA and self._at is not None:
            ttft = self._clock() - self._at
            self._at = None
            if self._replica:
                self._placer.first_token(self._placement, self._replica, ttft)
            self._span.set_attribute(A.ACTUAL_TTFT, round(ttft, 4))
        elif kind == END and event.get("completion_tokens") is not None:
            self._placer.finished(int(event["completion_tokens"]))
        return event

    def cancel(self) -> None:
        self._events.cancel()


class Pipeline:
    def __init__(self, config: AppConfig, gate: TenancyGate, counter: TekkenCounter, dispatch: Dispatch,
                 fleet_stats: FleetStats = tuple, clock: Callable[[], float] = time.time,
                 queue_lengths: QueueLengths | None = None, caller: str = ""):
        self._config, self._gate, self._counter, self._dispatch = config, gate, counter, dispatch
        self._caller = caller  # this ingress's actor name, on every job (deployments/caller_watch.py)
        self._limits = pool_limits(config)
        self._pool_load = LoadBook()  # outstanding tokens this ingress sent to each pool
        # Predicted placement over every replica that publishes its engine's state (the length
        # rule decides while none has, and under routing: length_spill).
        terms = pool_terms(config)
        self.placer = Placer(terms, config.objectives) if config.routing == "predicted" else None
        self._fleet_stats, self._clock = fleet_stats, clock
        # The fair admission queue (fairness.enabled; config validation asks for routing: predicted).
        self.turns = None
        if config.fairness.enabled and self.placer is not None:
            fallback = next((t.profile for t in terms.values() if t.profile is not None), None) or \
                profile_named("l40s-pair")
            self.turns = FairTurns(config.fairness, self.placer,
                                   lambda: self.placer.views(self._fleet_stats(), self._clock()),
                                   fallback, clock, queue_lengths)

    async def run(self, ctx: RequestContext, answer_for: Callable[[Admission], Answer]) -> WholeAnswer | StreamedAnswer:
        with ctx.trace.step("admission") as span:
            admission = await self.admit(ctx)
            if span.is_recording():
                span.set_attributes(admission_attributes(admission, self._config.context_cap))
            try:
                admission = await self.take_turn(ctx, admission, span)
                account = await self.reserve(ctx, admission, span)
            except BaseException:
                if self.placer is not None:
                    self.placer.forget(ctx.request_key)
                if self.turns is not None:  # dispatched by the queue, then refused: not charged
                    self.turns.finished(ctx.request_key, None)
                raise
        placed = await self.route(ctx, admission, account)
        answer = answer_for(admission)
        if ctx.stream:
            return self.stream(ctx, placed, account, answer)
        return await self.collect(ctx, placed, account, answer)

    # ---- admit -----------------------------------------------------------------------------
    async def admit(self, ctx: RequestContext) -> Admission:
        """Exact count (only when a decision depends on it), the cap, the pool."""
        pools = allowed_pools(self._limits, ctx.tenant.may_use)
        if not pools:
            raise errors.APIError(403, "Your API key may not use any pool this endpoint serves.",
                                  type="permission_denied", code="no_allowed_pool")
        exact = needs_exact_count(ctx.requested_max_tokens, ctx.tenant.limits.bounds_tokens)
        bound = None if exact else self._upper_bound(ctx)
        cap, max_tokens = self._config.context_cap, ctx.requested_max_tokens
        counted: int | None = None
        if (bound is None or bound > COUNT_IN_THREAD_ABOVE_BYTES) and not bound_decides(
                bound, max_tokens, pools, effective_cap(pools, cap)):
            counted = await asyncio.to_thread(guard_prompt, lambda: self._count(ctx))
        # From here to the placement's booking nothing awaits: a burst's requests each see the
        # ones placed before them.
        place = self._place_over_snapshot(ctx)
        try:
            admission = guard_prompt(lambda: admit(
                upper_bound=bound, count_exact=lambda: self._count(ctx) if counted is None else counted,
                max_tokens=max_tokens, pools=pools, outstanding_tokens=self._pool_load.snapshot_tokens(), cap=cap,
                policy=self._config.overflow_policy, place=place))
        except ContextLengthExceeded as exc:
            raise errors.context_length_exceeded(str(exc)) from exc
        if admission.choice.placement is not None:
            self.placer.dispatched(admission.choice.placement, ctx.request_key, self._clock())
        if admission.prompt_tokens is None and ctx.kind == "chat":
            # Not counted: still refuse what the chat template rejects, before any quota is held.
            guard_prompt(lambda: self._counter.validate_chat(ctx.messages, ctx.tools))
        ctx.trace.record.pool, ctx.trace.record.routing_reason = admission.pool, admission.choice.kind
        return admission

    def _place_over_snapshot(self, ctx: RequestContext
                             ) -> Callable[[int, Sequence[PoolLimits]], Placement | None] | None:
        """The placement over the replicas' stats as they are now, with the request's prefix
        chain (its estimated token counts scaled to the count the placement predicts with)."""
        if self.placer is None:
            return None
        views = self.placer.views(self._fleet_stats(), self._clock())
        if not views:
            return None
        placer = self.placer
        chain = prefix_keys.request_chain(ctx.kind, ctx.messages, ctx.prompt)
        return lambda tokens, fitting: placer.place(views, tokens, {p.name for p in fitting},
                                                    prefix_keys.fit(chain, tokens))

    def _upper_bound(self, ctx: RequestContext) -> int | None:
        if ctx.exact:
            return None
        if ctx.kind == "chat":
            return chat_upper_bound(ctx.messages, ctx.tools)
        return text_upper_bound(ctx.prompt)

    def _count(self, ctx: RequestContext) -> int:
        if ctx.kind == "chat":
            return self._counter.count_chat(ctx.messages, ctx.tools)
        return self._counter.count_text(ctx.prompt)

    # ---- the fair queue's turn ---------------------------------------------------------------
    async def take_turn(self, ctx: RequestContext, admission: Admission, span) -> Admission:
        """With fairness on: dispatch now, wait in the fair queue, or be shed (router/pipeline/
        fair_turns.py). Before the quota: a held request holds none of it. A request placed
        anew after waiting may go to another pool that holds it."""
        placement = admission.choice.placement
        if self.turns is None:
            return admission
        record = ctx.trace.record
        record.queue_decision = "bypass"
        if placement is None:  # no replica has published its state yet: the length rule decided
            span.set_attribute(A.QUEUE_DECISION, "bypass")
            return admission
        candidates = [p for p in self._limits if p.name in admission.choice.candidates]
        pools = allowed_for_replacement(candidates, admission.context_limit, self._config.context_cap)
        try:
            turn = await self.turns.turn(ctx.request_key, ctx.tenant.name, ctx.tier, placement, pools,
                                         admission.max_tokens)
        except Shed as shed:
            record.queue_decision, record.queue_wait_s, record.shed_status = "shed", shed.waited_s, shed.status
            if span.is_recording():
                span.set_attributes(queue_attributes("shed", shed.waited_s, shed.decision))
            raise
        record.queue_decision, record.queue_wait_s = turn.decision, turn.waited_s
        if span.is_recording():
            span.set_attributes(queue_attributes(turn.decision, turn.waited_s, turn))
        if turn.placement is placement:
            return admission
        pool = next(p for p in self._limits if p.name == turn.placement.pool)
        record.pool = pool.name
        return dataclasses.replace(admission, choice=PoolChoice(pool, turn.placement.reason(),
                                                                admission.choice.candidates, PREDICTED,
                                                                turn.placement))

    # ---- reserve ---------------------------------------------------------------------------
    async def reserve(self, ctx: RequestContext, admission: Admission, span=None) -> Account:
        """Reserve the request's worst case; a clamp by the tenant's limits lowers max_tokens."""
        info = RequestInfo(ctx.request_key, ctx.tenant.name, client_request_id=ctx.request_id, route=ctx.kind,
                           model=ctx.model, pool=admission.pool, trace_id=ctx.trace.trace_id)
        try:
            account = await self._gate.reserve(ctx.tenant, info, prompt_tokens=admission.prompt_tokens_bound,
                                               max_tokens=admission.worst_case_completion(),
                                               clampable=ctx.requested_max_tokens is None)
        except Exception as exc:
            if span is not None:
                refused = isinstance(exc, QuotaRefused)
                span.set_attributes({A.QUOTA_DECISION: "refuse" if refused else "unavailable",
                                     **({A.QUOTA_LIMIT: exc.refusal.limit} if refused and exc.refusal.limit else {})})
            raise
        ctx.trace.account = account
        if span is not None and span.is_recording():
            span.set_attributes(quota_attributes(account.grant))
        return account

    # ---- route -----------------------------------------------------------------------------
    async def route(self, ctx: RequestContext, admission: Admission, account: Account) -> Placed:
        """Send the request to its pool (Serve's RequestRouter picks the replica) and wait for the
        replica to start it."""
        pool, key, rt = admission.pool, ctx.request_key, ctx.trace
        max_tokens = account.max_tokens if account.grant.clamped_from is not None else admission.max_tokens
        route_span, trace_context = rt.start_routing(
            key, routing_attributes(admission, admission.pool_load) if rt.span.is_recording() else {})
        placement = admission.choice.placement
        job = ctx.job(admission, max_tokens, self._config.model_id, trace_context,
                      placement.replicas if placement else (), self._caller,
                      account.info.as_report() if account.lease is not None else None)
        self._pool_load.book(pool, key, job.work_tokens)
        events = None
        dispatched_at = self._clock()

        def release() -> None:
            self._pool_load.release(key)
            if self.turns is not None:  # its tenant's fair share is charged what it really cost
                self.turns.finished(key, (placement, account.prompt_tokens, account.completion_tokens)
                                    if placement is not None and account.started else None)
            if events is not None:
                events.cancel()

        try:
            events = self._dispatch(pool, job)
            if placement is not None:
                events = _Watched(events, self.placer, placement, key, dispatched_at, self._clock, rt.span)
            start = await events.__anext__()
        except Exception as exc:
            rt.routed(key, route_span, None, exc)
            release()
            self._gate.settle(account, Ending.NOT_STARTED, f"pool {pool} could not take the request")
            logger.exception("pool %s failed to start request %s", pool, ctx.request_id)
            raise errors.unavailable(f"Pool '{pool}' could not take the request; retry shortly.") from exc
        except BaseException as exc:  # cancelled: the client went away
            rt.routed(key, route_span, None, exc)
            release()
            self._gate.settle(account, Ending.NOT_STARTED, client_left=True)
            raise
        rt.routed(key, route_span, start)
        if start["event"] == ERROR:
            release()
            self._gate.settle(account, Ending.NOT_STARTED, start["message"])
            raise engine_error(start)
        assert start["event"] == START, start
        account.observe(start)
        rt.placed(start)
        # x-request-id is added to every response by Serve's proxy.
        return Placed(events, {"x-pool": pool, "x-replica": start["replica"], **account.rate_headers}, release)

    # ---- answer ----------------------------------------------------------------------------
    async def collect(self, ctx: RequestContext, placed: Placed, account: Account, answer: Answer) -> WholeAnswer:
        """A non-streamed answer: gather every event, settle, then answer with the cost."""
        collected = Collected()
        try:
            async for event in placed.events:
                if event["event"] == ERROR:
                    self._gate.settle(account, Ending.FAILED, event["message"])
                    raise engine_error(event)
                account.observe(event)
                if event["event"] == DELTA:
                    ctx.trace.delta(event)
                collected.add(event)
        except errors.APIError:
            raise
        except Exception as exc:  # the replica died: the client gets nothing, so nothing is billed
            self._gate.settle(account, Ending.FAILED, f"replica failed: {type(exc).__name__}")
            logger.exception("replica failed during request %s", ctx.request_id)
            raise errors.unavailable("The replica serving this request failed; retry shortly.") from exc
        except BaseException:  # the client went away: billed what was generated up to now
            self._gate.settle(account, Ending.CANCELLED)
            raise
        finally:
            placed.release()
        cost = await self._gate.settle(account, Ending.COMPLETED)
        return WholeAnswer(answer.full(collected, cost), placed.headers, cost)

    def stream(self, ctx: RequestContext, placed: Placed, account: Account, answer: Answer) -> StreamedAnswer:
        def on_close() -> None:  # however the response ends; a no-op for an account already settled
            placed.release()
            self._gate.settle(account, Ending.CANCELLED)

        return StreamedAnswer(self._sse(ctx, placed.events, account, answer),
                              {**placed.headers, "cache-control": "no-cache"}, on_close)

    async def _sse(self, ctx: RequestContext, events: EventStream, account: Account,
                   answer: Answer) -> AsyncIterator[bytes]:
        """The streamed body. A delta counts as delivered once the client has taken it (the
        generator resumes after the send)."""
        rt = ctx.trace
        try:
            for chunk in answer.opening():
                yield chunk
            async for event in events:
                if event["event"] == ERROR:  # headers are out: report in-band and stop
                    await self._gate.settle(account, Ending.FAILED, event["message"])
                    rt.in_band_error(engine_error(event).status)
                    for chunk in answer.error(engine_error(event)):
                        yield chunk
                    break
                if event["event"] == END:
                    account.observe(event)
                    cost = await self._gate.settle(account, Ending.COMPLETED)
                    for chunk in answer.end(event, cost):
                        yield chunk
                    continue
                for chunk in answer.delta(event, lambda: account.usage_with(event)):  # noqa: B023 - called now
                    yield chunk
                account.observe(event, delivered=True)
                rt.delta(event)
            for chunk in answer.closing():
                yield chunk
        except Exception:  # headers are sent: report in-band, as OpenAI does, and end the stream
            logger.exception("stream %s failed", ctx.request_id)
            await self._gate.settle(account, Ending.FAILED, "replica failed mid-stream")
            rt.in_band_error(500)
            for chunk in answer.error(errors.server_error(ctx.request_id)):
                yield chunk
