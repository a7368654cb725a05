"""vLLM replica for a Magistral pool, built on ray.serve.llm's LLMServer.

`MagistralLLMServer` is an `LLMServer` (ray.serve.llm starts and owns the vLLM engine, with the
engine's own mistral tokenizer, reasoning parser and tool-call parser) that also speaks the
router's replica interface (common/protocol.py): `generate(GenerateRequest)` streams the same
start / delta / end events as the stub, so the router sends identical requests to both. The span,
load accounting, start event, cancellation and routing stats around the engine's tokens are the
envelope every replica shares (deployments/replica_envelope.py); this module turns the engine's
stream into delta / end events and keeps the usage a cancelled request is billed. It publishes
routing stats: queued tokens and ongoing requests (what the balancer ranks by) plus the engine's
running / waiting requests and KV-cache usage, pool, accelerator and node.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from ray.llm._internal.serve.core.protocol import RawRequestInfo  # private in ray 2.60 (pinned)
from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from common.protocol import (STAT_GPU_PROFILE, STAT_KV_USAGE, STAT_RUNNING, STAT_WAITING, GenerateRequest,
                             delta_event, end_event, error_event)
from deployments.replica_envelope import Admission, ReplicaEnvelope
from deployments.replica_load import ReplicaIdentity, caller_alive
from deployments.vllm_config import llm_config_kwargs
from common.config import AppConfig, PoolConfig
from common.telemetry.replica_metrics import ReplicaMetrics
from common.telemetry.otel_setup import configure_tracing, engine_traces_endpoint, otlp_protocol


class _LatestSchedulerStats:
    """A vLLM stat logger that keeps the last scheduler snapshot (pushed on every engine step)."""

    def __init__(self) -> None:
        self.running = self.waiting = 0
        self.kv_cache_usage = 0.0

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
        if scheduler_stats is not None:
            self.running = scheduler_stats.num_running_reqs
            self.waiting = scheduler_stats.num_waiting_reqs
            self.kv_cache_usage = scheduler_stats.kv_cache_usage

    def log(self) -> None:
        pass

    def log_engine_initialized(self) -> None:
        pass

    def record_sleep_state(self, *args, **kwargs) -> None:
        pass

    def record_admission_rejection(self, reason) -> None:
        pass


def _sse_payloads(batch) -> list[dict]:
    """LLMServer streams lists of 'data: {...}' strings (batched); parse them, skip [DONE]."""
    items = batch if isinstance(batch, list) else [batch]
    out = []
    for item in items:
        if not isinstance(item, str):  # an ErrorResponse object
            out.append(item.model_dump())
            continue
        for line in item.splitlines():
            if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                out.append(json.loads(line[6:]))
    return out


class _Usage:
    def __init__(self) -> None:
        self.prompt = self.completion = self.reasoning = 0
        self.finish_reason = "stop"
        self.stop_sequence: str | None = None

    def take(self, payload: dict) -> None:
        usage = payload.get("usage")
        if usage:
            self.prompt, self.completion = usage["prompt_tokens"], usage["completion_tokens"]
            self.reasoning = ((usage.get("completion_tokens_details") or {}).get("reasoning_tokens")) or 0
        for choice in payload.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if isinstance(choice.get("stop_reason"), str):  # vLLM: the stop string that matched
                self.stop_sequence = choice["stop_reason"]

    def end(self) -> dict:
        return end_event(finish_reason=self.finish_reason, prompt_tokens=self.prompt,
                         completion_tokens=self.completion, reasoning_tokens=self.reasoning,
                         stop_sequence=self.stop_sequence)


def _delta_from_choice(choice: dict) -> dict:
    """One event from a chat chunk's delta, a chat message, or a completion choice."""
    part = choice.get("delta") or choice.get("message") or {}
    if "text" in choice:  # text completion
        return delta_event(content=choice.get("text") or "")
    calls = part.get("tool_calls") or []
    if "message" in choice:  # whole tool calls: give them the delta shape (with index)
        calls = [{"index": i, **c} for i, c in enumerate(calls)]
    return delta_event(reasoning=part.get("reasoning") or part.get("reasoning_content") or "",
                       content=part.get("content") or "", tool_calls=calls)


def _error(payload: dict) -> dict | None:
    err = payload.get("error")
    if not err:
        return None
    return error_event(status=int(err.get("code") or 500), message=err.get("message", "engine error"),
                       type=err.get("type") or "invalid_request_error", param=err.get("param"))


def _summary(exc: Exception) -> str:
    """The first lines of an error (pydantic lists one per line; three say enough)."""
    lines = str(exc).strip().splitlines()
    return " ".join(lines[:3]) if lines else type(exc).__name__


class MagistralLLMServer(LLMServer):
    async def __init__(self, llm_config: LLMConfig, *, pool: str, accelerator: str, gpu_profile: str | None = None,
                       **kwargs: Any):
        self._model_id = llm_config.model_id
        # The engine model routing predicts this replica with (none: the router's length rule).
        self._profile = {STAT_GPU_PROFILE: gpu_profile} if gpu_profile else {}
        self._sched = _LatestSchedulerStats()
        # A pool whose engine schedules by priority gets each request's tier (vLLM refuses a
        # non-zero priority under its default "fcfs" policy).
        self._by_priority = llm_config.engine_kwargs.get("scheduling_policy") == "priority"
        # Ours first: vLLM then finds a global TracerProvider set and its llm_request spans go
        # through our exporter, as children of the span whose context we pass as trace headers.
        tracer = configure_tracing(f"replica:{pool}")
        metrics = ReplicaMetrics(pool, accelerator)
        endpoint = engine_traces_endpoint(os.environ)
        if endpoint and "otlp_traces_endpoint" not in llm_config.engine_kwargs:
            # The engine config was computed (and cached) when the deployment was built, in the
            # deployer's process: set the endpoint there too.
            for engine_kwargs in (llm_config.engine_kwargs, llm_config.get_engine_config().engine_kwargs):
                engine_kwargs["otlp_traces_endpoint"] = endpoint
            # vLLM picks its exporter by this variable alone (grpc when unset).
            os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", otlp_protocol(os.environ))
        await super().__init__(llm_config, **kwargs)  # starts the engine
        # `engine._engine_client` is vLLM's AsyncLLM (private in ray 2.60, which is pinned).
        self._client = self.engine._engine_client
        manager = getattr(self._client, "logger_manager", None)
        if manager is not None:
            manager.stat_loggers.append(self._sched)
        self._envelope = ReplicaEnvelope(ReplicaIdentity.current(pool, accelerator), tracer, metrics, caller_alive)

    def _engine_request(self, request: GenerateRequest):
        # Always stream from the engine, with usage on every chunk: a request cancelled mid-way
        # (streamed to the client or not) is then billed the tokens generated up to the abort.
        common = dict(model=self._model_id, max_tokens=request.max_tokens, stream=True,
                      stream_options={"include_usage": True, "continuous_usage_stats": True},
                      stop=request.stop or None, **request.sampling)
        if self._by_priority:
            common["priority"] = request.priority
        if request.kind == "chat":
            extra = {"tools": request.tools, "tool_choice": request.tool_choice} if request.tools else {}
            if request.response_format:
                extra["response_format"] = request.response_format
            return self.chat, ChatCompletionRequest(messages=request.messages, **extra, **common)
        return self.completions, CompletionRequest(prompt=request.prompt, **common)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[dict]:
        async with contextlib.aclosing(self._envelope.generate(request, self._admit)) as events:
            async for event in events:
                yield event

    def _admit(self, request: GenerateRequest, trace_carrier: dict[str, str]) -> Admission | dict:
        """The engine counts: START carries the router's figures. A cancelled request reports the
        completion tokens of the engine's last usage (billed up to the abort)."""
        try:
            method, engine_request = self._engine_request(request)
        except ValueError as exc:  # pydantic's ValidationError too: vLLM refuses a field's value
            return error_event(status=400, message=f"Invalid request: {_summary(exc)}")
        usage = _Usage()
        # vLLM reads W3C trace headers from the request: its llm_request span becomes our child.
        raw_request = RawRequestInfo(headers=trace_carrier)
        return Admission(request.prompt_tokens, request.max_tokens,
                         self._events(method, engine_request, raw_request, usage),
                         generated=lambda: usage.completion)

    async def _events(self, method, engine_request, raw_request: RawRequestInfo, usage: _Usage) -> AsyncIterator[dict]:
        # Cancelling this generator (the router does when its client goes away) cancels the
        # engine stream, and vLLM aborts the request.
        async for batch in await method(engine_request, raw_request):
            payloads = [batch.model_dump()] if hasattr(batch, "model_dump") else _sse_payloads(batch)
            for payload in payloads:
                error = _error(payload)
                if error is not None:
                    yield error
                    return
                usage.take(payload)
                for choice in payload.get("choices") or []:
                    event = _delta_from_choice(choice)
                    if event["reasoning"] or event["content"] or event["tool_calls"]:
                        event.update(completion_tokens=usage.completion, reasoning_tokens=usage.reasoning,
                                     prompt_tokens=usage.prompt or None)
                        yield event
        yield usage.end()

    async def record_routing_stats(self) -> dict[str, Any]:
        base = await super().record_routing_stats() or {}
        return self._envelope.routing_stats(self._engine_stats(), base)  # also refreshes the gauges

    def _engine_stats(self) -> dict[str, Any]:
        return {
            "engine_unfinished": self._client.get_num_unfinished_requests(),
            STAT_RUNNING: self._sched.running,
            STAT_WAITING: self._sched.waiting,
            STAT_KV_USAGE: self._sched.kv_cache_usage,
            **self._profile,
        }

    async def stats(self) -> dict[str, Any]:
        """For tests and operators: what this replica and its engine hold and have done."""
        return self._envelope.stats(self._engine_stats())

    async def ready(self) -> dict:
        await self.check_health()
        return self._envelope.ready()


def build_vllm_pool(pool: PoolConfig, config: AppConfig, serve_options: dict):
    """The pool's Serve deployment: ray.serve.llm's builder with our server class and options."""
    llm_config = LLMConfig(**llm_config_kwargs(pool, config))
    return build_llm_deployment(
        llm_config,
        deployment_cls=MagistralLLMServer,
        bind_kwargs={"pool": pool.name, "accelerator": pool.accelerator, "gpu_profile": pool.profile_name},
        override_serve_options=serve_options,
    )
