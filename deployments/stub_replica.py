"""STUB replica: behaves like a vLLM replica of one GPU class, for tests, local runs and benchmarks.

It is not a model. It counts prompt tokens with the real Tekken tokenizer (only when the router did
not hand over a count) and writes deterministic `<think>...</think>` text then an answer, in real
Tekken tokens. Its speed comes from one of two engines:
- `gpu` (an engine model profile, deployments/engine_model.py): one step loop per replica runs
  the model of a loaded GPU in real time (continuous batching, a token budget per step, KV
  capacity, prefix cache), so a replica holding 40 requests is slower than an idle one;
- fixed rates (`prefill_tokens_per_s`, `decode_ms_per_token`): every request sleeps on its own, at
  the same speed however many the replica holds. For functional tests, and zero-delay replicas.
`max_tokens`, `stop` and `ignore_eos` are honoured; generation stops when the caller goes away
(Serve cancels the generator). The span, load accounting, start event, cancellation and routing
stats around its tokens are the envelope every replica shares (deployments/replica_envelope.py); it
publishes the engine stats (running, waiting, KV usage) that the vLLM replica publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

from ray import serve

from deployments.engine_loop import EngineLoop
from common import prefix_keys
from common.engine_model import PROFILES, published_stats
from common.protocol import STAT_KV_USAGE, STAT_RUNNING, STAT_WAITING, GenerateRequest, delta_event, end_event, error_event
from deployments.reasoning_split import RawText, ThinkSplitter
from deployments.replica_envelope import Admission, ReplicaEnvelope
from deployments.replica_load import ReplicaIdentity, caller_alive
from deployments.stop_strings import StopMatcher
from deployments.stub_text import FILLER_TEXT, last_user_text, stub_completion_text
from common.telemetry.replica_metrics import ReplicaMetrics
from common.telemetry.otel_setup import configure_tracing
from common.tokens import TekkenCounter

# Tokens never held back by emit_interval_ms: the first visible text may take a few (the stub's
# `<think>` tag is split out before any reasoning shows), and time to first token must be exact.
EAGER_TOKENS = 8


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=128)
class StubReplica:
    def __init__(
        self,
        pool: str,
        accelerator: str = "stub",
        prefill_tokens_per_s: float = 50_000.0,
        decode_ms_per_token: float = 5.0,
        tokenizer_path: str | None = None,
        gpu: str | list[str] | None = None,
        time_scale: float = 1.0,
        emit_interval_ms: float = 0.0,
        scheduling_policy: str = "fcfs",
    ):
        if isinstance(gpu, list):  # one deployment over mixed GPUs: this replica's is its rank's
            gpu = gpu[serve.get_replica_context().rank.rank % len(gpu)]
            accelerator = f"{gpu}-emulated"
        self._prefill_rate = float(prefill_tokens_per_s)
        self._decode_s = float(decode_ms_per_token) / 1000.0
        self._engine = EngineLoop(PROFILES[gpu], time_scale, scheduling=scheduling_policy) if gpu else None
        self._gpu, self._time_scale = gpu, time_scale
        self._emit_interval_s = float(emit_interval_ms) / 1000.0
        self._counter = TekkenCounter(tokenizer_path)
        self._filler = self._counter.encode_text(FILLER_TEXT, bos=False)
        self._seq = itertools.count()
        self._envelope = ReplicaEnvelope(ReplicaIdentity.current(pool, accelerator),
                                         configure_tracing(f"replica:{pool}"), ReplicaMetrics(pool, accelerator),
                                         caller_alive)

    def _count(self, request: GenerateRequest) -> int:
        if request.prompt_tokens is not None:
            return request.prompt_tokens  # the router counted; never count twice
        if request.kind == "chat":
            return self._counter.count_chat(request.messages or [], request.tools)
        return self._counter.count_text(request.prompt or "")

    def _refusal(self, request: GenerateRequest, prompt_tokens: int) -> tuple[int, dict | None]:
        """max_tokens, or the error an engine would give for a request that does not fit."""
        room = request.context_limit - prompt_tokens
        max_tokens = room if request.max_tokens is None else request.max_tokens
        if room < 1 or max_tokens > room:
            # Like an engine: refuse what does not fit rather than clamp (the router must have).
            return max_tokens, error_event(
                status=400, message=f"{prompt_tokens} prompt + {max_tokens} completion tokens "
                f"exceed this pool's context of {request.context_limit}", param="max_tokens")
        if self._engine and prompt_tokens + max_tokens > self._engine.profile.kv_capacity_tokens:
            return max_tokens, error_event(
                status=400, message=f"{prompt_tokens + max_tokens} tokens exceed the KV cache of "
                f"{self._engine.profile.kv_capacity_tokens} tokens", param="max_tokens")
        return max_tokens, None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[dict]:
        async with contextlib.aclosing(self._envelope.generate(request, self._admit)) as events:
            async for event in events:
                yield event

    def _admit(self, request: GenerateRequest, trace_carrier: dict[str, str]) -> Admission | dict:
        """The request counted and taken, or refused (the stub has no engine to pass a trace to).
        Nothing it generates is reported on cancel: the load's cancelled tokens stay 0."""
        prompt_tokens = self._count(request)
        max_tokens, refusal = self._refusal(request, prompt_tokens)
        if refusal is not None:
            return refusal
        return Admission(prompt_tokens, max_tokens, self._events(request, prompt_tokens, max_tokens))

    async def _events(self, request: GenerateRequest, prompt_tokens: int, max_tokens: int) -> AsyncIterator[dict]:
        text = stub_completion_text(
            last_user_text(request.messages, request.prompt),
            self._envelope.identity.pool,
            request.sampling.get("seed"),
        )
        ids, finish_reason = self._completion_ids(text, max_tokens, bool(request.sampling.get("ignore_eos")))
        if self._engine:
            ticks = self._engine_ticks(request, prompt_tokens, len(ids))
        else:
            ticks = self._fixed_ticks(prompt_tokens, len(ids))
        split = request.kind == "chat"  # text completions return the raw text
        async with contextlib.aclosing(ticks):
            async for event in self._decode(ids, ticks, finish_reason, request.stop, prompt_tokens, split):
                yield event

    def _completion_ids(self, text: str, max_tokens: int, ignore_eos: bool) -> tuple[list[int], str]:
        """The tokens to generate and the finish reason if nothing stops them earlier. With
        `ignore_eos` (as vLLM's benchmarks use it) the answer runs on to exactly max_tokens."""
        ids = self._counter.encode_text(text, bos=False)
        if ignore_eos and len(ids) < max_tokens:
            repeats = -(-(max_tokens - len(ids)) // len(self._filler))
            ids = ids + self._filler * repeats
        if len(ids) >= max_tokens:
            return ids[:max_tokens], "length" if (ignore_eos or len(ids) > max_tokens) else "stop"
        return ids, "stop"

    async def _fixed_ticks(self, prompt_tokens: int, n: int) -> AsyncIterator[int]:
        """Tokens generated so far, at fixed rates: every request sleeps on its own."""
        await asyncio.sleep(prompt_tokens / self._prefill_rate)
        for generated in range(1, n + 1):
            await asyncio.sleep(self._decode_s)
            yield generated

    async def _engine_ticks(self, request: GenerateRequest, prompt_tokens: int, n: int) -> AsyncIterator[int]:
        """Tokens generated so far, as the replica's engine loop produces them (coalesced when
        this reader is slower than the steps, or by `emit_interval_ms`)."""
        engine_id = f"{request.request_id}#{next(self._seq)}"
        # The prefixes vLLM's cache would share, keyed as the router's memory keys them.
        chain = prefix_keys.fit(prefix_keys.request_chain(request.kind, request.messages, request.prompt), prompt_tokens)
        progress = self._engine.submit(engine_id, prompt_tokens, n, chain=chain, priority=request.priority)
        try:
            while True:
                await progress.changed.wait()
                progress.changed.clear()
                if progress.generated:
                    yield progress.generated
                if progress.finished:
                    return
                if self._emit_interval_s and progress.generated >= EAGER_TOKENS:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(progress.done.wait(), self._emit_interval_s)
        finally:
            if not progress.finished:
                self._engine.cancel(engine_id)  # the client left or a stop string ended it

    async def _decode(self, ids: list[int], ticks: AsyncIterator[int], finish_reason: str,
                      stops: list[str], prompt_tokens: int, split: bool) -> AsyncIterator[dict]:
        splitter = ThinkSplitter() if split else RawText()
        matcher = StopMatcher(stops)
        think_tokens = self._think_tokens(ids)
        decoded_upto, generated = 0, 0  # ids[:decoded_upto] are text already fed on
        async for generated in ticks:
            piece = self._counter.decode(ids[decoded_upto:generated])
            if piece.endswith("\ufffd"):  # ends inside a UTF-8 character: wait for the rest
                continue
            decoded_upto = generated
            reasoning, content = splitter.feed(matcher.feed(piece))
            if reasoning or content:
                yield delta_event(reasoning=reasoning, content=content, completion_tokens=generated,
                                  reasoning_tokens=min(generated, think_tokens))
            if matcher.stopped:
                finish_reason = "stop"
                break
        reasoning_tokens = min(generated, think_tokens)
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

    def _think_tokens(self, ids: list[int]) -> int:
        """Tokens up to and including the one that closes `</think>` (the stub text is short
        there, so decoding prefixes costs little)."""
        for k in range(1, min(len(ids), 256) + 1):
            if "</think>" in self._counter.decode(ids[:k]):
                return k
        return len(ids)

    def record_routing_stats(self) -> dict:
        """Serve calls this every stats period: the load gauges are refreshed with it."""
        return self._envelope.routing_stats(self._engine_stats())

    def _engine_stats(self) -> dict:
        """The keys the vLLM replica publishes; a fixed-rate stub runs everything it holds."""
        if self._engine is None:
            ongoing = self._envelope.load.ongoing_requests
            return {STAT_RUNNING: ongoing, STAT_WAITING: 0, STAT_KV_USAGE: 0.0}
        return {**published_stats(self._engine.stats(), self._gpu, self._time_scale), "engine_steps": self._engine.steps}

    def stats(self) -> dict:
        """For tests and operators: what this replica holds and has done."""
        return self._envelope.stats(self._engine_stats())

    def ready(self) -> dict:
        return self._envelope.ready()
