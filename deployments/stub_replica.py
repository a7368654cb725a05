"""STUB replica: behaves like a vLLM replica of one GPU class, for tests and local runs only.

It is not a model. It counts prompt tokens with the real Tekken tokenizer (only when the router did
not hand over a count), writes deterministic `<think>...</think>` text then an answer, one real
Tekken token at a time, and emulates the speed of a GPU class: `prefill_tokens_per_s` before the
first token and `decode_ms_per_token` between tokens. `max_tokens` and `stop` are honoured;
generation stops when the caller goes away (Serve cancels the generator). It publishes routing
stats (queued tokens, ongoing requests) through `record_routing_stats`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ray import serve

from deployments.protocol import GenerateRequest, delta_event, end_event, error_event, start_event
from deployments.reasoning_split import RawText, ThinkSplitter
from deployments.replica_load import ReplicaIdentity, ReplicaLoadTracker
from deployments.stop_strings import StopMatcher
from deployments.stub_text import last_user_text, stub_completion_text
from router.telemetry.metrics import ReplicaMetrics
from router.telemetry.otel_setup import configure_tracing
from router.telemetry.replica_span import GenerationSpan
from router.tokens import TekkenCounter


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=128)
class StubReplica:
    def __init__(
        self,
        pool: str,
        accelerator: str = "stub",
        prefill_tokens_per_s: float = 50_000.0,
        decode_ms_per_token: float = 5.0,
        tokenizer_path: str | None = None,
    ):
        self._id = ReplicaIdentity.current(pool, accelerator)
        self._prefill_rate = float(prefill_tokens_per_s)
        self._decode_s = float(decode_ms_per_token) / 1000.0
        self._counter = TekkenCounter(tokenizer_path)
        self._load = ReplicaLoadTracker()
        self._tracer = configure_tracing(f"replica:{pool}")
        self._metrics = ReplicaMetrics(pool, accelerator)

    def _count(self, request: GenerateRequest) -> int:
        if request.prompt_tokens is not None:
            return request.prompt_tokens  # the router counted; never count twice
        if request.kind == "chat":
            return self._counter.count_chat(request.messages or [], request.tools)
        return self._counter.count_text(request.prompt or "")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[dict]:
        span = GenerationSpan(self._tracer, request, self._id.as_dict())
        prompt_tokens = self._count(request)
        room = request.context_limit - prompt_tokens
        max_tokens = room if request.max_tokens is None else request.max_tokens
        if room < 1 or max_tokens > room:
            # Like an engine: refuse what does not fit rather than clamp (the router must have).
            event = error_event(status=400, message=f"{prompt_tokens} prompt + {max_tokens} completion tokens "
                                f"exceed this pool's context of {request.context_limit}", param="max_tokens")
            span.observe(event)
            span.end(cancelled=False)
            yield event
            return
        work = request.work_tokens
        self._load.begin(work)
        cancelled, error = True, None
        try:
            yield start_event(**self._id.as_dict(), prompt_tokens=prompt_tokens, max_tokens=max_tokens)
            await asyncio.sleep(prompt_tokens / self._prefill_rate)
            text = stub_completion_text(
                last_user_text(request.messages, request.prompt),
                self._id.pool,
                request.sampling.get("seed"),
            )
            split = request.kind == "chat"  # text completions return the raw text
            async for event in self._decode(text, max_tokens, request.stop, prompt_tokens, split):
                span.observe(event)
                yield event
            cancelled = False
        except Exception as exc:
            error = exc
            raise
        finally:
            self._load.end(work, cancelled=cancelled)
            span.end(cancelled=cancelled, error=error)

    async def _decode(
        self, text: str, max_tokens: int, stops: list[str], prompt_tokens: int, split: bool
    ) -> AsyncIterator[dict]:
        ids = self._counter.encode_text(text, bos=False)
        splitter = ThinkSplitter() if split else RawText()
        matcher = StopMatcher(stops)
        emitted, generated, reasoning_tokens = "", 0, 0
        finish_reason = "stop"
        for i in range(len(ids)):
            if generated >= max_tokens:
                finish_reason = "length"
                break
            await asyncio.sleep(self._decode_s)
            generated += 1
            if splitter.thinking:
                reasoning_tokens += 1
            decoded = self._counter.decode(ids[: i + 1])
            if decoded.endswith("\ufffd"):  # ends inside a UTF-8 character: wait for the rest
                continue
            piece, emitted = decoded[len(emitted):], decoded
            reasoning, content = splitter.feed(matcher.feed(piece))
            if reasoning or content:
                yield delta_event(reasoning=reasoning, content=content,
                                  completion_tokens=generated, reasoning_tokens=reasoning_tokens)
            if matcher.stopped:
                break
        reasoning, content = splitter.feed(matcher.finish())
        tail_r, tail_c = splitter.finish()
        if reasoning + tail_r or content + tail_c:
            yield delta_event(reasoning=reasoning + tail_r, content=content + tail_c,
                              completion_tokens=generated, reasoning_tokens=reasoning_tokens)
        yield end_event(
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=generated,
            reasoning_tokens=reasoning_tokens,
            stop_sequence=matcher.matched,
        )

    def record_routing_stats(self) -> dict:
        """Serve calls this every stats period: the load gauges are refreshed with it."""
        stats = {**self._id.as_dict(), **self._load.routing_stats()}
        self._metrics.update(stats)
        return stats

    def stats(self) -> dict:
        """For tests and operators: what this replica holds and has done."""
        return {**self.record_routing_stats(), **self._load.totals()}

    def ready(self) -> dict:
        return self._id.as_dict()
