"""The one interface between the router and a model replica, whatever hosts the model.

The router calls `generate(GenerateRequest)` as a streaming method; the replica yields plain dicts
(cheap to pickle across Ray): one `start` event, `delta` events, one `end` event. Thinking text
arrives already split from the answer (`reasoning` vs `content`), so the router never parses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

START, DELTA, END, ERROR = "start", "delta", "end", "error"

# Routing stats every replica publishes through `record_routing_stats` (read by TokenLoadRouter).
STAT_QUEUED_TOKENS = "queued_tokens"  # prompt + expected completion tokens of requests it holds
STAT_ONGOING_REQUESTS = "ongoing_requests"
# What the latency predictor reads (router/routing/fleet_view.py): the engine's state, the GPU
# class whose engine model predicts it, and when the stats were taken (the router adds its own
# dispatches since then).
STAT_GPU_PROFILE = "gpu_profile"  # a common.engine_model.PROFILES name
STAT_TIME_SCALE = "gpu_time_scale"  # a stub running its profile this many times faster
STAT_RUNNING = "engine_running"
STAT_WAITING = "engine_waiting"
STAT_PREFILL_TOKENS = "engine_prefill_tokens"  # prompt tokens of held requests not yet computed
STAT_KV_USAGE = "kv_cache_usage"  # 0..1
# Prompt + generated tokens of every request it holds: what attention reads per step once they run
# (a shared prefix counts once per request there, though its KV is held once).
STAT_CONTEXT_TOKENS = "context_tokens"
# Prompt tokens prefilled since the replica started, a counter: its rate is the prefill flowing in,
# which stretches every decoding sequence's steps there.
STAT_PREFILLED_TOTAL = "prefilled_tokens_total"
STAT_TIME = "stats_time"  # time.time() when taken
# Usage of requests whose caller (an ingress replica) died, for a live ingress to bill
# (deployments/caller_watch.py): a list of dicts, present only when there are some.
STAT_ORPHANS = "orphans"

# Completion tokens a request is expected to generate, for load estimates only: max_tokens is
# often the whole remaining context, which says little about the work actually queued.
DEFAULT_DECODE_ESTIMATE = 256


@dataclass
class GenerateRequest:
    request_id: str
    kind: Literal["chat", "completion"]
    context_limit: int  # prompt + completion may not exceed this on the serving pool
    messages: list[dict] | None = None
    prompt: str | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None
    response_format: dict | None = None
    stream: bool = True  # the client streams; a replica may answer a non-stream request at once
    prompt_tokens: int | None = None  # exact count from the router; None: the replica counts
    prompt_tokens_bound: int = 0  # upper bound, for load estimates before the replica counts
    max_tokens: int | None = None  # None: context_limit - prompt_tokens
    stop: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, seed
    model: str = ""  # the served model id (span names and attributes)
    request_key: str = ""  # the ingress's unique key for this request (its ledger row)
    trace_context: dict[str, str] = field(default_factory=dict)  # W3C traceparent of the routing span
    # The pool's replicas best first, as the ingress predicted them (router/routing/placer.py);
    # the pool's RequestRouter ranks them so (empty: it ranks by load alone).
    preferred_replicas: list[str] = field(default_factory=list)
    # vLLM's request priority, lower first: the request's tier (router/fairness/tiers.py). Pools
    # whose engine schedules by priority honour it; others ignore it.
    priority: int = 0
    # The calling ingress replica's Ray actor name: the replica watches it, and bills the usage of
    # a request whose caller died through another ingress (deployments/caller_watch.py).
    caller: str = ""
    # The ledger row's fields (RequestInfo.as_report) of a request admitted out of a quota lease,
    # which has no reservation row: a replica whose caller died reports them with the usage, so
    # the row can be written by another ingress. None for a reserved request.
    ledger: dict | None = None

    @property
    def work_tokens(self) -> int:
        """Outstanding work this request puts on a replica, in tokens (used by the balancer)."""
        prompt = self.prompt_tokens if self.prompt_tokens is not None else self.prompt_tokens_bound
        return work_tokens(prompt, self.max_tokens)


def work_tokens(prompt_tokens: int, max_tokens: int | None, decode_estimate: int = DEFAULT_DECODE_ESTIMATE) -> int:
    decode = decode_estimate if max_tokens is None else min(max_tokens, decode_estimate)
    return prompt_tokens + decode


def start_event(
    *, replica: str, node_id: str, pool: str, accelerator: str, prompt_tokens: int | None, max_tokens: int | None
) -> dict:
    """prompt_tokens / max_tokens: None when the engine decides them (final figures are in END)."""
    return {
        "event": START,
        "replica": replica,
        "node_id": node_id,
        "pool": pool,
        "accelerator": accelerator,
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
    }


def delta_event(*, reasoning: str = "", content: str = "", tool_calls: list[dict] | None = None,
                completion_tokens: int | None = None, reasoning_tokens: int | None = None,
                prompt_tokens: int | None = None) -> dict:
    """tool_calls: OpenAI tool-call deltas (index, id, function.name, function.arguments piece).
    completion_tokens / reasoning_tokens: generated so far, this delta included (None: unknown);
    prompt_tokens: the engine's count when START could not give it. They are what a request
    cancelled mid-stream is billed for."""
    return {"event": DELTA, "reasoning": reasoning, "content": content, "tool_calls": tool_calls or [],
            "completion_tokens": completion_tokens, "reasoning_tokens": reasoning_tokens,
            "prompt_tokens": prompt_tokens}


def error_event(*, status: int, message: str, type: str = "invalid_request_error", param: str | None = None) -> dict:
    """The engine refused or failed the request (vLLM's ErrorResponse, carried over)."""
    return {"event": ERROR, "status": status, "message": message, "type": type, "param": param}


def end_event(*, finish_reason: str, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int,
              stop_sequence: str | None = None) -> dict:
    """stop_sequence: the stop string that ended the answer, if one did (Anthropic reports it)."""
    return {
        "event": END,
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "reasoning_tokens": reasoning_tokens,
        "stop_sequence": stop_sequence,
    }
