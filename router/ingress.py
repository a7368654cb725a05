"""The OpenAI-compatible ingress: FastAPI on Ray Serve, a thin adapter around router.admission.

Per request: authenticate the tenant, validate the body, count prompt tokens (only when a decision
depends on the exact count), apply the 40 960 cap, choose a pool among the tenant's, reserve the
tenant's quota, stream from the pool's replica (chosen by TokenLoadRouter), settle the quota and
the ledger row from the real usage, and answer in OpenAI's shape with x-request-id, x-pool,
x-replica, x-cost-usd and x-ratelimit-*. A client that goes away cancels the replica's generator
and is billed the tokens delivered so far.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.protocol import DELTA, END, ERROR, START, GenerateRequest
from router import errors
from router.admission import Admission, admit
from router.body_limit import BodyLimitMiddleware
from router.api_models import ChatCompletionRequest, CompletionRequest
from common.config import AppConfig
from router.context_cap import ContextLengthExceeded
from router.routing.load_book import LoadBook
from router.magistral_defaults import with_default_sampling, with_system_prompt
from router.openai_format import Collected, ResponseWriter
from router.routing.pools import PoolLimits, pool_limits
from router.tenancy.directory import Tenant
from router.tenancy.gate import CANCELLED, FAILED, Meter, TenancyGate, TenancySettings, cost_header
from router.tenancy.store import RequestInfo
from common.telemetry import attributes as A
from router.telemetry.asgi import IngressTelemetry, TelemetryMiddleware, request_trace, trace_id_header
from router.telemetry.metrics import IngressMetrics
from common.telemetry.otel_setup import configure_tracing
from router.telemetry.request_trace import RequestTrace
from router.telemetry.span_attributes import (admission_attributes, messages_attribute, quota_attributes,
                                              routing_attributes)
from router.tenancy.usage_report import UsageQuery, report
from common.tokens import PromptInvalid, TekkenCounter, chat_upper_bound, text_upper_bound
from router.wire import anthropic
from router.wire.answer_formats import AnthropicAnswer, OpenAIAnswer

logger = logging.getLogger("ray.serve")

# Counting a long prompt takes ~1 ms per 1k tokens; past this bound (or with no bound), count off
# the event loop.
_COUNT_IN_THREAD_ABOVE_BYTES = 32_000
_HEALTH_TIMEOUT_S = 2.0

app = FastAPI(title="Magistral Small 2506 router", docs_url=None, redoc_url=None)


def _openapi() -> dict:
    """FastAPI documents a 422 on every route with a body or query; ours answers those 400."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operations in doc["paths"].values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema


app.openapi = _openapi
app.add_middleware(BodyLimitMiddleware)  # 413 for bodies no prompt under the cap could need
app.add_middleware(TelemetryMiddleware)  # outermost: spans, x-trace-id and metrics for every request


def _request_id(request: Request) -> str:
    """Serve's request id: the client's x-request-id, or one the proxy made; the proxy echoes it
    as x-request-id on every response, errors included."""
    return request.headers.get("x-request-id") or uuid.uuid4().hex


@app.exception_handler(errors.APIError)
async def _api_error(request: Request, exc: errors.APIError) -> JSONResponse:
    rt = request_trace(request)
    if rt is not None and exc.status < 500:  # a refusal, labelled by its code in metrics
        rt.record.refusal = exc.code or exc.type
    return exc.response(path=errors.route_path(request.scope))


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    return await _api_error(request, errors.validation_error(list(exc.errors())))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 413: "request_too_large"}.get(exc.status_code)
    return await _api_error(request, errors.APIError(exc.status_code, str(exc.detail), code=code))


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = _request_id(request)
    logger.exception("request %s failed", request_id)
    return errors.server_error(request_id).response(trace_id_header(request), path=errors.route_path(request.scope))


def _engine_error(event: dict) -> errors.APIError:
    """An engine refusal (vLLM's 4xx) reaches the client as is; its failures as a 5xx."""
    status = event["status"] if 400 <= event["status"] < 600 else 500
    return errors.APIError(status, event["message"], type=event["type"], param=event["param"])


def _bearer_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


async def _tenant(request: Request) -> Tenant:
    """Route dependency: FastAPI runs it before validating the body, so a keyless request gets
    401 whatever its body. The gate is the replica's (set in RouterIngress.__init__)."""
    tenant = request.app.state.gate.authenticate(_bearer_key(request))
    if tenant is None:
        raise errors.unauthorized()
    rt = request_trace(request)
    if rt is not None:
        rt.record.tenant = tenant.name
    return tenant


class _ReleasingStream(StreamingResponse):
    """Runs `release` however the response ends: a generator that never started (the client
    left before the first chunk) would never reach its own `finally`."""

    def __init__(self, content, *, release, **kwargs):
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


_OPERATIONS = {"chat": "chat", "completion": "text_completion"}


def _job(request_id: str, kind: str, admission: Admission, body, sampling_defaults, **prompt) -> GenerateRequest:
    """The replica's request: the prompt plus what admission decided."""
    return GenerateRequest(
        request_id=request_id, kind=kind, context_limit=admission.context_limit, stream=body.stream,
        prompt_tokens=admission.prompt_tokens, prompt_tokens_bound=admission.prompt_tokens_bound,
        max_tokens=admission.max_tokens, stop=body.stop_list(),
        sampling=with_default_sampling(body.sampling(), sampling_defaults), **prompt,
    )


def _request_attributes(kind: str, request_id: str, body, model_id: str) -> dict:
    attributes = {A.OPERATION: _OPERATIONS[kind], A.PROVIDER: A.PROVIDER_MISTRAL, A.REQUEST_MODEL: body.model,
                  A.RESPONSE_MODEL: model_id, A.REQUEST_STREAM: body.stream, A.REQUEST_ID: request_id}
    if body.requested_max_tokens() is not None:
        attributes[A.REQUEST_MAX_TOKENS] = body.requested_max_tokens()
    for name, value in body.sampling().items():
        if name == "temperature":
            attributes[A.REQUEST_TEMPERATURE] = value
        elif name == "top_p":
            attributes[A.REQUEST_TOP_P] = value
    return attributes


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
@serve.ingress(app)
class RouterIngress:
    def __init__(self, config: dict, pools: dict[str, DeploymentHandle]):
        self._config = AppConfig.model_validate(config)
        self._telemetry = IngressTelemetry(configure_tracing("ingress"), IngressMetrics(),
                                           self._config.trace_content)
        app.state.telemetry = self._telemetry  # read by TelemetryMiddleware
        app.state.max_body_bytes = self._config.max_body_bytes  # read by BodyLimitMiddleware
        self._gate = TenancyGate(TenancySettings(
            tenants_file=self._config.tenants_file, prices_file=self._config.prices_file,
            ledger_url=self._config.ledger_url, reload_s=self._config.tenants_reload_s,
            reservation_ttl_s=self._config.reservation_ttl_s,
            pools=tuple(p.name for p in self._config.enabled_pools)))
        app.state.gate = self._gate  # one ingress replica per process
        self._pools = pools
        self._limits = pool_limits(self._config)
        self._counter = TekkenCounter(self._config.tokenizer_path)
        self._model_ids = set(self._config.served_model_ids())
        self._pool_load = LoadBook()  # outstanding tokens this ingress sent to each pool

    # ---- routes -------------------------------------------------------------------------
    @app.get("/health", responses={503: {"description": "A pool has no ready replica."}})
    async def health(self) -> JSONResponse:
        async def ready(name: str, handle: DeploymentHandle) -> tuple[str, bool]:
            try:
                await asyncio.wait_for(handle.ready.remote(), _HEALTH_TIMEOUT_S)
                return name, True
            except Exception:  # noqa: BLE001 - any failure means not ready
                return name, False

        results = dict(await asyncio.gather(*(ready(n, h) for n, h in self._pools.items())))
        ok = all(results.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "pools": results}, status_code=200 if ok else 503)

    @app.get("/v1/models", responses=errors.documented(401))
    async def models(self, tenant: Tenant = Depends(_tenant)) -> dict:
        return {
            "object": "list",
            "data": [
                {"id": model_id, "object": "model", "created": 0, "owned_by": "mistralai",
                 "root": self._config.model_id, "max_model_len": self._config.context_cap}
                for model_id in self._config.served_model_ids()
            ],
        }

    @app.post("/v1/chat/completions", responses=errors.GENERATION_ERRORS)
    async def chat_completions(self, body: ChatCompletionRequest, request: Request, tenant: Tenant = Depends(_tenant)):
        request_id, rt = self._begin(request, body, "chat")
        writer = ResponseWriter("chat", f"chatcmpl-{request_id}", body.model)
        return await self._chat(request_id, rt, tenant, body, body.message_dicts(), body.tools, body.tool_choice,
                                lambda admission: OpenAIAnswer(writer, body))

    async def _chat(self, request_id: str, rt: RequestTrace, tenant: Tenant, body, messages: list[dict],
                    tools: list[dict] | None, tool_choice, answer_for, exact: bool = False):
        """A chat request of either API: the same admission, quota, routing and billing.
        `answer_for(admission)` makes the API's answer adapter (router/wire/answer_formats.py);
        exact=True always counts the prompt (an answer that states it up front needs it)."""
        messages = with_system_prompt(messages, self._config.system_prompt)
        if rt.capture_content:
            rt.set({A.INPUT_MESSAGES: messages_attribute(messages, None)})

        def job(admission: Admission) -> GenerateRequest:
            if admission.prompt_tokens is None:  # not counted: still refuse what the template rejects
                self._guard_prompt(lambda: self._counter.validate_chat(messages, tools))
            return _job(request_id, "chat", admission, body, self._config.default_sampling,
                        messages=messages, tools=tools, tool_choice=tool_choice,
                        response_format=getattr(body, "response_format", None))

        bound = None if exact else chat_upper_bound(messages, tools)
        job_, admission, meter = await self._admit(rt, tenant, body, bound,
                                                   lambda: self._counter.count_chat(messages, tools), job)
        return await self._serve(job_, admission, meter, answer_for(admission), body, rt)

    @app.post("/v1/completions", responses=errors.GENERATION_ERRORS)
    async def completions(self, body: CompletionRequest, request: Request, tenant: Tenant = Depends(_tenant)):
        request_id, rt = self._begin(request, body, "completion")
        prompt = body.prompt_text()
        if rt.capture_content:
            rt.set({A.INPUT_MESSAGES: messages_attribute(None, prompt)})

        def job(admission: Admission) -> GenerateRequest:
            return _job(request_id, "completion", admission, body, self._config.default_sampling, prompt=prompt)

        job_, admission, meter = await self._admit(rt, tenant, body, text_upper_bound(prompt),
                                                   lambda: self._counter.count_text(prompt), job)
        answer = OpenAIAnswer(ResponseWriter("completion", f"cmpl-{request_id}", body.model), body)
        return await self._serve(job_, admission, meter, answer, body, rt)

    # ---- Anthropic's Messages API: a translation at the edge, the same pipeline behind it ----
    @app.post("/v1/messages", responses=errors.ANTHROPIC_ERRORS)
    async def messages(self, body: anthropic.MessagesRequest, request: Request, tenant: Tenant = Depends(_tenant)):
        request_id, rt = self._begin(request, body, "chat")
        chat = anthropic.to_chat(body)

        def answer(admission: Admission) -> AnthropicAnswer:
            # Counted exactly (exact=True): message_start states the input tokens billed.
            return AnthropicAnswer(anthropic.message_id(request_id), body.model, admission.prompt_tokens)

        return await self._chat(request_id, rt, tenant, body, chat.messages, chat.tools, chat.tool_choice,
                                answer, exact=True)

    @app.post("/v1/messages/count_tokens", responses=errors.documented(400, 401, 404, 413, model=errors.AnthropicError))
    async def count_tokens(self, body: anthropic.CountTokensRequest, tenant: Tenant = Depends(_tenant)) -> dict:
        """Exactly the input tokens /v1/messages would bill for the same prompt (and what
        /v1/chat/completions reports as prompt_tokens for the same conversation)."""
        self._check_model(body.model)
        chat = anthropic.to_chat(body)
        messages = with_system_prompt(chat.messages, self._config.system_prompt)
        count = await asyncio.to_thread(self._guard_prompt, lambda: self._counter.count_chat(messages, chat.tools))
        return anthropic.count_tokens_body(count)

    @app.get("/v1/usage", responses=errors.documented(400, 401, 403, 503))
    async def usage(self, request: Request, tenant: Tenant = Depends(_tenant)) -> dict:
        """The caller's usage from the ledger (admin keys: every tenant's, or ?tenant=)."""
        query = UsageQuery.parse(request.query_params, tenant)
        totals, rows = await self._gate.usage(query.tenant, query.start, query.end, query.pool, query.limit)
        return report(query, totals, rows)

    # ---- steps --------------------------------------------------------------------------
    def _begin(self, request: Request, body, kind: str) -> tuple[str, RequestTrace]:
        """Checks every generation route makes first (after auth); returns the request id and
        the request's trace (opened by TelemetryMiddleware)."""
        self._check_model(body.model)
        request_id = _request_id(request)
        rt = request_trace(request)
        if rt.span.is_recording():
            rt.set(_request_attributes(kind, request_id, body, self._config.model_id))
        rt.record.stream = body.stream
        return request_id, rt

    def _check_model(self, model: str) -> None:
        if model not in self._model_ids:
            raise errors.model_not_found(model)

    def _pools_for(self, tenant: Tenant) -> list[PoolLimits]:
        pools = [p for p in self._limits if tenant.may_use(p.name)]
        if not pools:
            raise errors.APIError(403, "Your API key may not use any pool this endpoint serves.",
                                  type="permission_denied", code="no_allowed_pool")
        return pools

    async def _admit(self, rt: RequestTrace, tenant: Tenant, body, bound: int | None, count, make_job):
        """Admission, in one span: exact count (when needed), cap, pool choice, then the tenant's
        quota. Returns the replica request, the decision and the quota meter."""
        with rt.step("admission") as span:
            admission = await self._decide(tenant, bound, count, body.requested_max_tokens(), rt)
            rt.record.pool, rt.record.routing_reason = admission.pool, admission.choice.kind
            if span.is_recording():
                span.set_attributes(admission_attributes(admission, self._config.context_cap))
            job = make_job(admission)
            try:
                meter = await self._reserve(job, admission, tenant, body.model, body.requested_max_tokens(), rt)
            except errors.APIError as exc:
                span.set_attributes({A.QUOTA_DECISION: "refuse" if exc.status == 429 else "unavailable",
                                     **({A.QUOTA_LIMIT: exc.limit} if exc.limit else {})})
                raise
            rt.meter = meter
            if span.is_recording():
                span.set_attributes(quota_attributes(meter.grant))
        return job, admission, meter

    async def _decide(self, tenant: Tenant, bound: int | None, count, max_tokens: int | None,
                      rt: RequestTrace) -> Admission:
        pools = self._pools_for(tenant)
        outstanding = self._pool_load.snapshot_tokens()  # read on the loop, not in the thread
        rt.pool_load = outstanding
        # A request that leaves max_tokens to the context may be clamped to what the tenant's
        # token or money limits allow: that needs the exact prompt, not its byte bound.
        if max_tokens is None and tenant.limits.bounds_tokens:
            bound = None

        def decide() -> Admission:
            return admit(
                upper_bound=bound, count_exact=count, max_tokens=max_tokens, pools=pools,
                outstanding_tokens=outstanding, cap=self._config.context_cap,
                policy=self._config.overflow_policy,
            )

        try:
            if bound is None or bound > _COUNT_IN_THREAD_ABOVE_BYTES:
                return await asyncio.to_thread(self._guard_prompt, decide)
            return self._guard_prompt(decide)
        except ContextLengthExceeded as exc:
            raise errors.context_length_exceeded(str(exc)) from exc

    @staticmethod
    def _guard_prompt(step):
        """Run a step that renders the prompt; a template refusal is the client's 400."""
        try:
            return step()
        except PromptInvalid as exc:
            raise errors.APIError(400, f"Invalid messages: {exc}", param="messages", code="invalid_messages") from exc

    async def _reserve(self, job: GenerateRequest, admission: Admission, tenant: Tenant, model: str,
                       requested_max_tokens: int | None, rt: RequestTrace) -> Meter:
        """Reserve the request's worst case; a clamp by the tenant's limits lowers max_tokens."""
        job.request_key = uuid.uuid4().hex  # client-chosen request ids may repeat; this may not
        job.model = self._config.model_id
        info = RequestInfo(job.request_key, tenant.name, client_request_id=job.request_id, route=job.kind,
                           model=model, pool=admission.pool, trace_id=rt.trace_id)
        prompt = admission.prompt_tokens_bound  # the exact count when it was counted
        worst = admission.max_tokens if admission.max_tokens is not None else admission.context_limit - prompt
        meter = await self._gate.reserve(tenant, info, prompt_tokens=prompt, max_tokens=worst,
                                         clampable=requested_max_tokens is None)
        if meter.grant.clamped_from is not None:
            job.max_tokens = meter.max_tokens
        return meter

    async def _serve(self, job: GenerateRequest, admission: Admission, meter: Meter, answer, body,
                     rt: RequestTrace):
        """Dispatch to the pool and answer through `answer` (router/wire/answer_formats.py)."""
        pool, request_key = admission.pool, job.request_key
        self._pool_load.book(pool, request_key, job.work_tokens)
        route_span, job.trace_context = rt.start_routing(
            request_key, routing_attributes(admission, rt.pool_load) if rt.span.is_recording() else {})
        events = None
        release = lambda: self._release(request_key, events)  # noqa: E731 - sees `events` once set
        try:
            events = self._pools[pool].options(stream=True).generate.remote(job)
            start = await events.__anext__()
        except Exception as exc:
            rt.routed(request_key, route_span, None, exc)
            release()
            self._gate.settle_soon(meter, FAILED, f"pool {pool} could not take the request", generated=False)
            logger.exception("pool %s failed to start request %s", pool, job.request_id)
            raise errors.unavailable(f"Pool '{pool}' could not take the request; retry shortly.") from exc
        except BaseException as exc:  # cancelled: the client went away
            rt.routed(request_key, route_span, None, exc)
            release()
            self._gate.settle_soon(meter, CANCELLED, generated=False)
            raise
        rt.routed(request_key, route_span, start)
        if start["event"] == ERROR:
            release()
            self._gate.settle_soon(meter, FAILED, start["message"], generated=False)
            raise _engine_error(start)
        assert start["event"] == START, start
        meter.observe(start)
        rt.placed(start)
        # x-request-id is added to every response by Serve's proxy (see _request_id).
        headers = {"x-pool": pool, "x-replica": start["replica"], **meter.rate_headers}
        if not body.stream:
            return await self._whole(events, release, meter, answer, headers, rt)
        return _ReleasingStream(
            self._sse(job, events, answer, meter, rt),
            release=lambda: (release(), self._gate.settle_soon(meter, CANCELLED)),
            media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"},
        )

    async def _whole(self, events, release, meter: Meter, answer, headers: dict,
                     rt: RequestTrace) -> JSONResponse:
        """A non-streamed answer: gather every event, settle, then answer with the cost."""
        collected = Collected()
        try:
            async for event in events:
                if event["event"] == ERROR:
                    self._gate.settle_soon(meter, FAILED, event["message"], generated=False)
                    raise _engine_error(event)
                meter.observe(event)
                if event["event"] == DELTA:
                    rt.delta(event)
                collected.add(event)
        except errors.APIError:
            raise
        except Exception as exc:  # the replica died: the client gets nothing, so nothing is billed
            self._gate.settle_soon(meter, FAILED, f"replica failed: {type(exc).__name__}", generated=False)
            logger.exception("replica failed during request %s", meter.info.client_request_id)
            raise errors.unavailable("The replica serving this request failed; retry shortly.") from exc
        except BaseException:  # the client went away: billed what was generated up to now
            self._gate.settle_soon(meter, CANCELLED)
            raise
        finally:
            release()
        cost = await self._gate.settle(meter)
        return JSONResponse(answer.full(collected, cost), headers={**headers, **cost_header(cost)})

    async def _sse(self, job: GenerateRequest, events, answer, meter: Meter, rt: RequestTrace) -> AsyncIterator[bytes]:
        """The SSE body; _ReleasingStream releases the request however the stream ends. A delta is
        counted once the client has taken it (the generator resumes after the send)."""
        try:
            for chunk in answer.opening():
                yield chunk
            async for event in events:
                if event["event"] == ERROR:  # headers are out: report in-band and stop
                    # Billed only if some of the answer was delivered (plus its prompt).
                    await self._gate.settle(meter, FAILED, event["message"], generated=meter.completion_tokens > 0)
                    rt.in_band_error(_engine_error(event).status)
                    for chunk in answer.error(_engine_error(event)):
                        yield chunk
                    break
                if event["event"] == END:
                    meter.observe(event)
                    cost = await self._gate.settle(meter)
                    for chunk in answer.end(event, cost):
                        yield chunk
                    continue
                for chunk in answer.delta(event, lambda: meter.usage_with(event)):  # noqa: B023 - called now
                    yield chunk
                meter.observe(event)
                rt.delta(event)
            for chunk in answer.closing():
                yield chunk
        except Exception:  # headers are sent: report in-band, as OpenAI does, and end the stream
            logger.exception("stream %s failed", job.request_id)
            await self._gate.settle(meter, FAILED, "replica failed mid-stream", generated=meter.completion_tokens > 0)
            rt.in_band_error(500)
            for chunk in answer.error(errors.server_error(job.request_id)):
                yield chunk

    def _release(self, load_key: str, events) -> None:
        """Forget the request's load; if the stream did not finish, stop the replica's work."""
        self._pool_load.release(load_key)
        if events is not None:
            events.cancel()
