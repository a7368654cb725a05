"""Predicted latency of a request on each candidate replica, from the engine model of its GPU class.

Pure: no Ray, no clock. A candidate is what a replica looks like now (`ReplicaView`: its GPU
profile, what its engine holds, its price); the request is its prompt, the output it will likely
generate and the prefix it shares. `predict` follows common/engine_model.py's scheduler: each
step's token budget goes to the running sequences' decodes first, the rest to prefill in arrival
order, so the request's first token waits for the prefill queued ahead of it plus its own uncached
prompt, at what the budget leaves after decodes; every step also pays the fixed cost and the
attention over the KV in the batch. Its time per output token is the step time with one more
sequence. When the engine is out of sequence slots or KV, the request waits for running ones to
finish (a crude drain estimate: the prediction says so in `waits_for_room`).

`pick` then orders candidates: those predicted to meet the request's objectives (with headroom)
first, cheapest in dollars for this request's GPU-seconds, then the rest by how far they miss.
There is no pool preference and no spill threshold: a cheap replica is used while it keeps the
objectives, and not past that. A replica predicted to hold the request's prefix
(`prefix_cached_tokens`, from the router's memory, router/routing/prefix_memory.py) prefills
less: a shorter TTFT, and among replicas meeting the objectives a lighter load (see `rank`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from common.engine_model import GPUProfile


@dataclass(frozen=True)
class ReplicaView:
    replica_id: str
    pool: str
    profile: GPUProfile
    usd_per_hour: float
    max_model_len: int  # what the pool's engine holds (prompt + output)
    running: int = 0  # sequences in the engine's batch
    waiting: int = 0  # requests queued in the engine, not yet admitted
    queued_prefill_tokens: int = 0  # prompt tokens not yet computed, of requests already there
    kv_tokens: int = 0  # KV in use (a prefix shared by running requests once)
    context_tokens: int = 0  # prompt + generated tokens of the requests held (0: not published)
    prefill_tokens_per_s: float = 0.0  # prompts flowing in lately (router/routing/inflow.py)
    prefix_cached_tokens: int = 0  # of this request's prefix, already in this replica's cache
    # Observed / predicted TTFT of this GPU class lately (router/routing/correction.py): a
    # mis-specified profile is corrected by what its replicas really do.
    ttft_correction: float = 1.0


@dataclass(frozen=True)
class RequestShape:
    prompt_tokens: int
    likely_output_tokens: int
    ttft_limit_s: float
    tpot_limit_s: float


@dataclass(frozen=True)
class Prediction:
    replica_id: str
    ttft_s: float
    tpot_s: float
    usd: float  # GPU-seconds this request costs there, priced
    waits_for_room: bool  # out of sequence slots or KV: the TTFT includes a drain estimate
    miss: float  # max(ttft / limit, tpot / limit): <= 1 meets both objectives
    class_fit: float = 0.0  # the miss on an idle replica of the same GPU class: what the hardware allows
    ttft_ratio: float = 0.0  # predicted / objective
    tpot_ratio: float = 0.0
    harm: float = 0.0  # what its prefill adds to the miss ratios of the sequences running there, summed
    fullness: float = 0.0  # with this request: the larger share of the engine's KV and sequence slots
    pool: str = ""
    profile: str = ""  # the GPU class's engine model
    ttft_model_s: float = 0.0  # the engine model's TTFT before the observed correction and any drain wait
    prefix_cached_tokens: int = 0  # of its prompt, predicted cached there (not prefilled again)
    prefill_share: float = 0.0  # its prefill there (the uncached prompt) as a share of its GPU-seconds
    cached_share: float = 0.0  # of its prompt, the share predicted cached there
    idle_ttft_s: float = 0.0  # on an idle replica of its class (the fair queue's bounded wait)

    @property
    def meets(self) -> bool:
        return self.miss <= 1.0


def holds(view: ReplicaView, request: RequestShape) -> bool:
    """Filter: the pool's context and the engine's KV hold the prompt and at least one token."""
    need = request.prompt_tokens + 1
    return need <= view.max_model_len and need <= view.profile.kv_capacity_tokens


def predict(view: ReplicaView, request: RequestShape) -> Prediction:
    p = view.profile
    out = max(1, request.likely_output_tokens)
    # The engine computes at least the prompt's last token (its logits give the first output).
    cached = max(0, min(view.prefix_cached_tokens, request.prompt_tokens - 1))
    uncached = max(1, request.prompt_tokens - cached)
    decoding = view.running
    # Attention reads every sequence's whole context each step, a shared prefix once per sequence.
    batch_context = max(view.kv_tokens, view.context_tokens)
    prefill_per_step = max(1, p.max_num_batched_tokens - decoding)
    prefill_ahead = view.queued_prefill_tokens + uncached
    steps = math.ceil(prefill_ahead / prefill_per_step)
    step_fixed = p.base_s + p.decode_s_per_seq * decoding + p.attention_s_per_kv_token * batch_context
    model_ttft = steps * step_fixed + p.prefill_s_per_token * prefill_ahead
    ttft = model_ttft * view.ttft_correction

    # One more decoding sequence, its context growing over its output; the requests queued ahead
    # of it decode beside it once admitted (a queue makes a replica slower per token too, however
    # little prefill a cached prefix leaves them); their prefill is spread over the output's steps
    # (chunks share the steps it decodes in).
    # And the prompts that keep arriving while it decodes take their share of every step.
    context = batch_context + request.prompt_tokens + out / 2
    inflow_share = min(MAX_INFLOW_SHARE, view.prefill_tokens_per_s * p.prefill_s_per_token)
    tpot = (p.base_s + p.decode_s_per_seq * (decoding + 1) + p.attention_s_per_kv_token * context
            + p.prefill_s_per_token * view.queued_prefill_tokens / out) / (1.0 - inflow_share)

    # Room: sequence slots and KV for the prompt plus the likely output, beside what is there (a
    # cached prefix is shared, not held again).
    kv_needed = view.kv_tokens + view.queued_prefill_tokens + uncached + out
    over_slots = view.running + view.waiting + 1 - p.max_num_seqs
    over_kv = kv_needed - p.kv_capacity_tokens
    waits = over_slots > 0 or over_kv > 0
    if waits:
        # Running sequences finish at about one per (their remaining output x step time / batch);
        # wait until enough have, a coarse but monotone estimate.
        per_finish = out * tpot / max(1, decoding)
        finishes = max(over_slots, math.ceil(max(0, over_kv) / max(1, (view.kv_tokens / max(1, decoding)))))
        ttft += finishes * per_finish

    # The GPU class's price of this request at a reference batch, not at this replica's current one:
    # a busier replica of the same class is not cheaper (that would pile work on it).
    gpu_s = gpu_seconds(p, request.prompt_tokens, out)
    miss = max(ttft / request.ttft_limit_s, tpot / request.tpot_limit_s)
    # Harm: each running sequence stalls for this request's prefill; spread over a typical answer's
    # time budget (the likely output at the TPOT objective), summed over the batch.
    harm = decoding * (p.prefill_s_per_token * uncached) / (out * request.tpot_limit_s)
    fullness = max(kv_needed / p.kv_capacity_tokens, (view.running + view.waiting + 1) / p.max_num_seqs)
    return Prediction(view.replica_id, ttft, tpot, gpu_s * view.usd_per_hour / 3600, waits, miss,
                      idle_miss(p, request), ttft / request.ttft_limit_s, tpot / request.tpot_limit_s, harm, fullness,
                      view.pool, p.name, model_ttft, cached, p.prefill_s_per_token * uncached / gpu_s,
                      cached / request.prompt_tokens, idle_ttft_s(p, request.prompt_tokens))


def gpu_seconds(p: GPUProfile, prompt_tokens: int, output_tokens: int) -> float:
    """GPU-seconds of one request on class `p`: its prefill, then each output token's share of a
    step at REFERENCE_BATCH, its decode and the attention over its growing context. The price the
    ranking uses, and the currency of fair share (router/fairness/cost.py)."""
    out = max(1, output_tokens)
    return (p.prefill_s_per_token * prompt_tokens
            + out * (p.base_s / REFERENCE_BATCH + p.decode_s_per_seq
                     + p.attention_s_per_kv_token * (prompt_tokens + out / 2)))


def idle_ttft_s(p: GPUProfile, prompt_tokens: int) -> float:
    """Time to first token on a free replica of class `p`: the prompt in chunks of the step
    budget, nothing else in the batch. The best a request can hope for there, which also bounds
    how long the fair queue may hold it and still meet its objective (router/fairness/)."""
    steps = max(1, math.ceil(prompt_tokens / p.max_num_batched_tokens))
    return steps * p.base_s + p.prefill_s_per_token * prompt_tokens


def idle_miss(p: GPUProfile, request: RequestShape) -> float:
    """The request's miss ratio on an idle replica of this class (its best case there)."""
    out = max(1, request.likely_output_tokens)
    ttft = idle_ttft_s(p, request.prompt_tokens)
    tpot = p.base_s + p.decode_s_per_seq + p.attention_s_per_kv_token * (request.prompt_tokens + out / 2)
    return max(ttft / request.ttft_limit_s, tpot / request.tpot_limit_s)


MAX_INFLOW_SHARE = 0.9  # of a GPU's time going to prefill: beyond it the estimate means nothing more
REFERENCE_BATCH = 16  # sequences sharing a step's fixed cost when a request is priced

# Predictions are estimates: a candidate counts as meeting the objectives only with headroom. The
# first token waits behind a queue that later arrivals do not change but the prediction may misjudge;
# the time per token is bounded by the engine's batch limits, so it needs less.
HEADROOM = 0.7  # on TTFT
TPOT_HEADROOM = 0.95
# A replica predicted to hold at least this share of a request's prompt keeps it while it meets the
# objectives, before the GPU class that fits the request best: moving a conversation re-prefills
# all of it and holds its KV twice.
AFFINITY_SHARE = 0.5


def rank(predictions: Iterable[Prediction], headroom: float = HEADROOM) -> list[Prediction]:
    """Best first: candidates meeting the objectives with headroom, then the rest, least missing
    first (ties on id keep the order fixed). Among those meeting them: replicas holding at least
    AFFINITY_SHARE of the prompt first (a conversation stays where its context is cached, until
    that replica is predicted to miss: affinity yields to the prediction, so a hot prefix spreads
    once its holder's queue would make it late; on the prefix-heavy workload, tuning seed 101,
    goodput at 5.5 req/s went 0.93 -> 0.96 and at 6.5 req/s 0.44 -> 0.59). Then the GPU class
    that fits the request most tightly first (a chat goes to the class that just holds its objectives, leaving
    faster classes to what only they can serve), the least loaded replica of it first, then the
    cheapest. The load of a replica for a request is its fullness (KV and sequence slots) plus
    the share of the request's GPU-seconds its uncached prefill is there: prefix-cache affinity
    that yields once the holder is fuller than the prefill it saves is worth, or misses the
    objectives (a hot prefix spreads: every replica it goes to then holds it too). Measured on
    seeds 101-103 against a weight on the prefill share: 1 (none) served the prefix-heavy workload
    best and left REASONING_MIX as it was; a share of KV instead of work (x4-16) did worse on one
    or the other. (Cheapest class first was measured and lost: at $7/h per H100 vs $5.2/h per L40S
    pair the H100 is cheaper per token for every request shape, so everything went there.)"""

    def key(q: Prediction):
        if q.ttft_ratio > headroom or q.tpot_ratio > TPOT_HEADROOM:
            # Missing anyway: last go classes that could not meet the objectives even idle (a long
            # prompt on a slow-prefill class stalls and preempts everything there), then replicas
            # out of room (it would preempt running sequences), then the least missing.
            return (1, q.class_fit > 1.0, q.waits_for_room, q.miss + q.harm, q.usd, q.replica_id)
        # The same load measure for every request (its own miss would sort requests by kind:
        # chats away from long contexts, long prompts to the emptiest batch, and segregate them),
        # plus the share of the request's own work its prefill is there: a replica holding its
        # prefix wins while it is not fuller by more than the prefill that prefix saves.
        return (0, q.cached_share < AFFINITY_SHARE, -round(q.class_fit, 2), q.fullness + q.prefill_share, q.usd,
                q.replica_id)

    return sorted(predictions, key=key)


def pick(views: Iterable[ReplicaView], request: RequestShape, headroom: float = HEADROOM) -> list[Prediction]:
    """Filters, then predictions, then the order: the candidates best first (empty: none holds it)."""
    return rank((predict(v, request) for v in views if holds(v, request)), headroom)
