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
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from common.config import AppConfig
from common.protocol import DELTA, END, ERROR, START, GenerateRequest
from common.telemetry import attributes as A
from common.tokens import PromptInvalid, TekkenCounter, chat_upper_bound, text_upper_bound
from router import errors
from router.admission import Admission, admit, needs_exact_count
from router.context_cap import ContextLengthExceeded
from router.pipeline.context import RequestContext
from router.routing.load_book import LoadBook
from router.routing.pools import allowed_pools, pool_limits
from router.telemetry.span_attributes import admission_attributes, quota_attributes, routing_attributes
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


class Pipeline:
    def __init__(self, config: AppConfig, gate: TenancyGate, counter: TekkenCounter, dispatch: Dispatch):
        self._config, self._gate, self._counter, self._dispatch = config, gate, counter, dispatch
        self._limits = pool_limits(config)
        self._pool_load = LoadBook()  # outstanding tokens this ingress sent to each pool

    async def run(self, ctx: RequestContext, answer_for: Callable[[Admission], Answer]) -> WholeAnswer | StreamedAnswer:
        with ctx.trace.step("admission") as span:
            admission = await self.admit(ctx)
            if span.is_recording():
                span.set_attributes(admission_attributes(admission, self._config.context_cap))
            account = await self.reserve(ctx, admission, span)
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
        outstanding = self._pool_load.snapshot_tokens()  # read on the loop, not in the thread

        def decide() -> Admission:
            return admit(upper_bound=bound, count_exact=lambda: self._count(ctx), max_tokens=ctx.requested_max_tokens,
                         pools=pools, outstanding_tokens=outstanding, cap=self._config.context_cap,
                         policy=self._config.overflow_policy)

        try:
            if bound is None or bound > COUNT_IN_THREAD_ABOVE_BYTES:
                admission = await asyncio.to_thread(guard_prompt, decide)
            else:
                admission = guard_prompt(decide)
        except ContextLengthExceeded as exc:
            raise errors.context_length_exceeded(str(exc)) from exc
        if admission.prompt_tokens is None and ctx.kind == "chat":
            # Not counted: still refuse what the chat template rejects, before any quota is held.
            guard_prompt(lambda: self._counter.validate_chat(ctx.messages, ctx.tools))
        ctx.trace.record.pool, ctx.trace.record.routing_reason = admission.pool, admission.choice.kind
        return admission

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
        job = ctx.job(admission, max_tokens, self._config.model_id, trace_context)
        self._pool_load.book(pool, key, job.work_tokens)
        events = None

        def release() -> None:
            self._pool_load.release(key)
            if events is not None:
                events.cancel()

        try:
            events = self._dispatch(pool, job)
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
