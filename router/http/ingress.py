"""The HTTP edge: FastAPI on Ray Serve. Routes, authentication and error rendering only.

Each generation route authenticates the tenant (router/http/auth.py, before the body is read), checks the model,
builds one RequestContext from its API's body and hands it to the transport-free pipeline
(router/pipeline/), then turns the pipeline's answer into a JSON or SSE response. What the pipeline
and tenancy refuse arrives as values (router.errors.APIError, router.tenancy.errors) and is
rendered here in the route's API shape (OpenAI's, or Anthropic's under /v1/messages).
"""

import asyncio
import logging
import uuid

import ray
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.config import AppConfig
from common.telemetry import attributes as A
from common.telemetry.otel_setup import configure_tracing
from common.tokens import TekkenCounter
from router import errors, fleet_stats
from router.http.auth import AuthMiddleware, tenant_of
from router.http.body_limit import BodyLimitMiddleware
from router.http.errors import (ANTHROPIC_ERRORS, GENERATION_ERRORS, AnthropicError, cost_header, documented,
                                from_tenancy, render)
from router.http.header_policy import HeaderPolicy
from router.http.openapi import without_422
from router.json_nesting import too_deep_message
from router.magistral_defaults import with_system_prompt
from router.pipeline.context import RequestContext
from router.pipeline.pipeline import Pipeline, StreamedAnswer, guard_prompt
from router.telemetry.asgi import IngressTelemetry, TelemetryMiddleware, request_trace, trace_id_header
from router.telemetry.metrics import IngressMetrics
from router.telemetry.request_record import queue_length_points
from router.telemetry.span_attributes import messages_attribute
from router.tenancy.directory import Tenant
from router.tenancy.errors import TenancyError
from router.tenancy.gate import TenancyGate, TenancySettings
from router.tenancy.usage_report import UsageQuery, report
from router.wire import anthropic
from router.wire.answer_formats import AnthropicAnswer, OpenAIAnswer
from router.wire.openai.models import ChatCompletionRequest, CompletionRequest
from router.wire.openai.writer import ResponseWriter

logger = logging.getLogger("ray.serve")

_HEALTH_TIMEOUT_S = 2.0

app = FastAPI(title="Magistral Small 2506 router", docs_url=None, redoc_url=None)
app.openapi = lambda: without_422(app)
# The last added runs first: telemetry, header policy, key, body size, then FastAPI reads the body.
app.add_middleware(BodyLimitMiddleware)  # 413 for bodies no prompt under the cap could need
app.add_middleware(AuthMiddleware)  # 401 before anything reads the body
app.add_middleware(HeaderPolicy)  # the rules Serve's proxy applies too (router/http/header_policy.py)
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
    return render(exc, path=errors.route_path(request.scope))


@app.exception_handler(TenancyError)
async def _tenancy_error(request: Request, exc: TenancyError) -> JSONResponse:
    return await _api_error(request, from_tenancy(exc))


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    return await _api_error(request, errors.validation_error(list(exc.errors())))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
    message = str(exc.detail)
    if isinstance(exc.__cause__, RecursionError):  # FastAPI's JSON parse of a body nested ~1000 deep
        message, code = f"Invalid request body: {too_deep_message()}.", "invalid_json"
    # Starlette's own headers stay (a 405's Allow, RFC 9110).
    return await _api_error(request, errors.APIError(exc.status_code, message, code=code,
                                                     headers=dict(exc.headers or {})))


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = _request_id(request)
    logger.exception("request %s failed", request_id)
    return render(errors.server_error(request_id), trace_id_header(request), path=errors.route_path(request.scope))


async def _tenant(request: Request) -> Tenant:
    """Route dependency: the tenant AuthMiddleware authenticated before the body was read."""
    tenant = tenant_of(request.state)
    if tenant is None:  # only when no gate is set up: AuthMiddleware answers 401 itself
        raise errors.unauthorized()
    return tenant


class _ReleasingStream(StreamingResponse):
    """Runs `on_close` however the response ends: a generator that never started (the client
    left before the first chunk) would never reach its own `finally`."""

    def __init__(self, content, *, on_close, **kwargs):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


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
            reservation_ttl_s=self._config.reservation_ttl_s, leases=self._config.quota_leases,
            pools=tuple(p.name for p in self._config.enabled_pools)),
            orphans=lambda: fleet_stats.orphans(pools))
        app.state.gate = self._gate  # one ingress replica per process
        self._pools = pools
        self._counter = TekkenCounter(self._config.tokenizer_path)
        self._model_ids = set(self._config.served_model_ids())
        # Made now, so each pool's RequestRouter starts receiving its replicas' stats before the
        # first request (the predicted placement reads them all: router/fleet_stats.py).
        streams = {name: handle.options(stream=True) for name, handle in pools.items()}
        metrics = self._telemetry.metrics
        self._pipeline = Pipeline(self._config, self._gate, self._counter,
                                  lambda pool, job: streams[pool].generate.remote(job),
                                  fleet_stats=lambda: fleet_stats.rows(pools),
                                  queue_lengths=lambda lengths: metrics.record(queue_length_points(lengths)),
                                  # Replicas watch this name: if this process dies, they stop its
                                  # requests and publish their usage for another ingress to bill.
                                  caller=ray.get_runtime_context().get_actor_name() or "")

    async def __del__(self) -> None:
        """Serve's graceful shutdown: the quota leases' free units go back now, not at their expiry."""
        gate = getattr(self, "_gate", None)
        if gate is not None:
            await gate.close_leases()

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

    @app.get("/v1/models", responses=documented(401))
    async def models(self, tenant: Tenant = Depends(_tenant)) -> dict:
        return {
            "object": "list",
            "data": [
                {"id": model_id, "object": "model", "created": 0, "owned_by": "mistralai",
                 "root": self._config.model_id, "max_model_len": self._config.context_cap}
                for model_id in self._config.served_model_ids()
            ],
        }

    @app.post("/v1/chat/completions", responses=GENERATION_ERRORS)
    async def chat_completions(self, body: ChatCompletionRequest, request: Request, tenant: Tenant = Depends(_tenant)):
        ctx = self._chat_context(request, tenant, body, body.message_dicts(), body.tools, body.tool_choice,
                                 response_format=body.response_format)
        # The id is the answer's own (the ledger row's key): a client's x-request-id may repeat.
        writer = ResponseWriter("chat", f"chatcmpl-{ctx.request_key}", body.model)
        return await self._answer(ctx, lambda admission: OpenAIAnswer(writer, body))

    @app.post("/v1/completions", responses=GENERATION_ERRORS)
    async def completions(self, body: CompletionRequest, request: Request, tenant: Tenant = Depends(_tenant)):
        prompt = body.prompt_text()
        ctx = self._context(request, tenant, body, "completion", prompt=prompt)
        if ctx.trace.capture_content:
            ctx.trace.set({A.INPUT_MESSAGES: messages_attribute(None, prompt)})
        writer = ResponseWriter("completion", f"cmpl-{ctx.request_key}", body.model)
        return await self._answer(ctx, lambda admission: OpenAIAnswer(writer, body))

    # ---- Anthropic's Messages API: a translation at the edge, the same pipeline behind it ----
    @app.post("/v1/messages", responses=ANTHROPIC_ERRORS)
    async def messages(self, body: anthropic.MessagesRequest, request: Request, tenant: Tenant = Depends(_tenant)):
        self._check_model(body.model)
        chat = anthropic.to_chat(body)
        # Counted exactly (exact=True): message_start states the input tokens billed.
        ctx = self._chat_context(request, tenant, body, chat.messages, chat.tools, chat.tool_choice, exact=True)
        message_id = anthropic.message_id(ctx.request_key)
        return await self._answer(ctx, lambda admission: AnthropicAnswer(message_id, body.model,
                                                                          admission.prompt_tokens))

    @app.post("/v1/messages/count_tokens", responses=documented(400, 401, 404, 413, model=AnthropicError))
    async def count_tokens(self, body: anthropic.CountTokensRequest, tenant: Tenant = Depends(_tenant)) -> dict:
        """Exactly the input tokens /v1/messages would bill for the same prompt (and what
        /v1/chat/completions reports as prompt_tokens for the same conversation)."""
        self._check_model(body.model)
        chat = anthropic.to_chat(body)
        messages = with_system_prompt(chat.messages, self._config.system_prompt)
        count = await asyncio.to_thread(guard_prompt, lambda: self._counter.count_chat(messages, chat.tools))
        return anthropic.count_tokens_body(count)

    @app.get("/v1/usage", responses=documented(400, 401, 403, 503))
    async def usage(self, request: Request, tenant: Tenant = Depends(_tenant)) -> dict:
        """The caller's usage from the ledger (admin keys: every tenant's, or ?tenant=)."""
        query = UsageQuery.parse(request.query_params, tenant)
        totals, rows = await self._gate.usage(query.tenant, query.start, query.end, query.pool, query.limit)
        return report(query, totals, rows)

    # ---- from a route to the pipeline and back --------------------------------------------
    def _context(self, request: Request, tenant: Tenant, body, kind: str, **prompt) -> RequestContext:
        """Checks every generation route makes first (after auth), and the request's context."""
        self._check_model(body.model)
        rt = request_trace(request)
        ctx = RequestContext.of(body, request_id=_request_id(request), kind=kind, tenant=tenant, trace=rt,
                                default_sampling=self._config.default_sampling, **prompt)
        if rt.span.is_recording():
            rt.set(ctx.span_attributes(self._config.model_id, body.sampling()))
        rt.record.stream, rt.record.tier = body.stream, ctx.tier.label
        return ctx

    def _chat_context(self, request: Request, tenant: Tenant, body, messages: list[dict], tools, tool_choice,
                      **extra) -> RequestContext:
        messages = with_system_prompt(messages, self._config.system_prompt)
        ctx = self._context(request, tenant, body, "chat", messages=messages, tools=tools, tool_choice=tool_choice,
                            **extra)
        if ctx.trace.capture_content:
            ctx.trace.set({A.INPUT_MESSAGES: messages_attribute(messages, None)})
        return ctx

    async def _answer(self, ctx: RequestContext, answer_for):
        answer = await self._pipeline.run(ctx, answer_for)
        if isinstance(answer, StreamedAnswer):
            return _ReleasingStream(answer.chunks, on_close=answer.on_close, media_type="text/event-stream",
                                    headers=answer.headers)
        return JSONResponse(answer.body, headers={**answer.headers, **cost_header(answer.cost)})

    def _check_model(self, model: str) -> None:
        if model not in self._model_ids:
            raise errors.model_not_found(model)
