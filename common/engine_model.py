"""An engine model of one GPU replica of Magistral Small 2506: vLLM's continuous batching, step by step.

Pure and deterministic: no Ray, no asyncio, no wall clock, no randomness. `EngineModel.step()`
schedules one engine step the way vLLM's V1 scheduler does (policy "fcfs", chunked prefill on) and
says how long that step takes on the profiled hardware, so a caller can run it in real time (a
stub replica sleeping `duration_s`) or in virtual time (a fleet simulator adding it to a clock).

What it models, after vllm/v1/core/sched/scheduler.py (`Scheduler.schedule`):
- One token budget per step (`max_num_batched_tokens`) shared by prefill chunks and decodes.
- Running requests first, in admission order: a decoding request takes 1 token of the budget, a
  request still prefilling takes what it has left, up to the remaining budget (chunked prefill).
- Then waiting requests, first come first served, while budget, `max_num_seqs` and KV room allow;
  none are admitted in a step that preempted (as vLLM).
- KV holds every token computed so far; when a running request's new tokens do not fit, the most
  recently admitted running request is preempted: its KV is freed and it goes back to the front
  of the waiting queue, to prefill prompt and generated tokens again (recompute).
- The step that completes a request's prefill samples its first token; each decode step one more.
- Prefix caching: a request carries its prefix chain, the cumulative prefixes of its tokens that
  other requests may share (a tenant's system prompt, then each earlier turn of its conversation,
  then its own prompt, then its prompt with its answer). As vLLM's block hashes chain each block
  to its parent, a request reuses the longest run of its chain cached from the start (a later
  turn reuses the earlier turn's prompt AND its generated answer: vLLM caches the blocks of
  generated tokens too); a prefix is cached as soon as the request has computed it.
- KV sharing, as vLLM's block pool (common/prefix_cache.py SharedKV): running requests that use
  the same cached segment hold it once (reference counts); a segment no request uses stays cached
  in the free part of the pool and is evicted, least recently used first, only when new KV needs
  the room. So a tenant's system prompt costs its replica's KV once however many of its chats run.

Simplifications (deliberate): KV counted in tokens, not 16-token blocks, and shared in chain
segments (a prefix shared by two requests that both computed it before either finished stays two
private copies, as vLLM keeps a block computed twice); no speculative decoding, no
`long_prefill_token_threshold`, no async scheduling.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field, replace

from common import protocol as P
from common.prefix_cache import PrefixChain, SharedKV, check_chain


@dataclass(frozen=True)
class GPUProfile:
    """One replica's hardware as the engine sees it, and a linear model of one step's duration.

    step_s = base_s
             + prefill_s_per_token * prefill_tokens
             + decode_s_per_seq * decoding_seqs
             + attention_s_per_kv_token * kv_tokens_in_batch
    """

    name: str
    max_num_batched_tokens: int  # token budget of one step, shared by prefill chunks and decodes
    max_num_seqs: int  # most requests running (holding KV, scheduled) at once
    kv_capacity_tokens: int  # tokens the KV cache holds, all requests together
    # Fixed cost of any step: reading all weights once from HBM (decode is memory-bound at small
    # batch), plus scheduling, sampling and kernel launches. The batch-1 decode step.
    base_s: float
    # Compute of one prompt token through the model (~2 x 23.6 GFLOP, plus the all-reduce of its
    # activations under tensor parallelism): prefill is compute-bound.
    prefill_s_per_token: float
    # Marginal cost of one more decoding sequence: its share of matmul compute and sampling beyond
    # the weight read already paid in base_s.
    decode_s_per_seq: float
    # Reading one cached token's K and V (160 KiB in bf16, split across TP ranks) for attention, per
    # token of context of every request in the batch; grows with batch x context length.
    attention_s_per_kv_token: float

    def step_s(self, prefill_tokens: int, decoding_seqs: int, kv_tokens_in_batch: int) -> float:
        return (self.base_s + self.prefill_s_per_token * prefill_tokens
                + self.decode_s_per_seq * decoding_seqs
                + self.attention_s_per_kv_token * kv_tokens_in_batch)

    def scaled(self, time_scale: float) -> "GPUProfile":
        """The same engine run `time_scale` times faster (a stub's time_scale): every time divided."""
        if time_scale == 1.0:
            return self
        return replace(self, base_s=self.base_s / time_scale, prefill_s_per_token=self.prefill_s_per_token / time_scale,
                       decode_s_per_seq=self.decode_s_per_seq / time_scale,
                       attention_s_per_kv_token=self.attention_s_per_kv_token / time_scale)


# Calibration. ESTIMATES from public specifications and roofline arithmetic, not measurements:
# replace them with fits to real vLLM step timings once the pools run.
# Model (Magistral Small 2506 = Mistral Small 3.1 architecture, HF config.json / model card):
# 23.6B parameters, 40 layers, 32 query heads, 8 KV heads, head_dim 128, hidden 5120, vocab 131072.
#   bf16 weights: 23.6e9 x 2 B = 47.1 GB (43.9 GiB). FP8 (linear layers FP8, embedding and lm_head
#   bf16): ~22.2e9 x 1 B + 1.34e9 x 2 B = ~24.9 GB (23.2 GiB).
#   KV per token (bf16 KV cache; `quantization: fp8` quantizes weights only):
#   40 layers x 8 KV heads x 128 dim x 2 (K, V) x 2 B = 163,840 B = 160 KiB; under TP 2 each rank
#   holds 4 KV heads: 80 KiB per token per GPU.
#   FLOPs per token ~ 2 x 23.6e9 = 47 GFLOP (plus attention, lumped into the attention term).
# Engine settings: max_num_seqs and gpu_memory_utilization from configs/production.yaml (pools
# long, short, rtx4090); max_num_batched_tokens = vLLM 0.32's default for an OpenAI server
# (vllm/engine/arg_utils.py: 8192 on GPUs with >= 70 GiB other than A100, else 2048).

# H100 80 GB SXM5 (AWS p5.4xlarge, pool "long"), TP 1, bf16. NVIDIA H100 datasheet: 3.35 TB/s
# HBM3, 989 TFLOPS dense bf16. Decode: 47.1 GB / (3.35 TB/s x ~0.7 achieved) = ~20 ms + ~1-2 ms
# scheduling/sampling -> base 21 ms (~47 tok/s single stream). (An H100 PCIe at 2.0 TB/s would be
# ~28-30 ms.) Prefill at ~55 % of peak: 47 GFLOP / 545 TFLOPS = ~85 us/token (~12k tok/s).
# KV: 80 GB card = 79.6 GiB; x 0.90 = 71.7 GiB - 43.9 GiB weights - ~3 GiB activations, CUDA
# graphs, non-torch memory = ~24.8 GiB / 160 KiB = ~162k tokens -> 160,000.
# Attention: 160 KiB / (3.35 TB/s x 0.7) = ~70 ns per context token per step.
H100_TP1 = GPUProfile(
    name="H100-80GB-TP1-bf16",
    max_num_batched_tokens=8192,
    max_num_seqs=48,
    kv_capacity_tokens=160_000,
    base_s=0.021,
    prefill_s_per_token=85e-6,
    decode_s_per_seq=60e-6,
    attention_s_per_kv_token=70e-9,
)

# 2x L40S 48 GB (pool "short"), TP 2 over PCIe (no NVLink), bf16. NVIDIA L40S datasheet: 864 GB/s
# GDDR6, 362 TFLOPS dense bf16 per GPU. Decode: each GPU reads half the weights, 23.6 GB /
# (864 GB/s x ~0.8) = ~34 ms, + 80 all-reduces per step over PCIe (~25 us each) = ~2 ms, + ~2 ms
# scheduling/sampling -> base 38 ms (slower than one H100: GDDR6, not HBM). Prefill: 47 GFLOP /
# (2 x 362 TFLOPS x ~0.5) = ~130 us + all-reduce of 80 x 10 KiB activations per token at ~25 GB/s
# = ~33 us -> ~165 us/token (~6k tok/s). KV per GPU: 44.99 GiB x 0.90 = 40.5 GiB - 21.95 GiB
# weights - ~2.5 GiB overhead = ~16 GiB / 80 KiB = ~210k tokens -> 200,000 (more room than one
# H100: two cards, each holding half the weights). Attention: 80 KiB / (864 GB/s x 0.75) = ~125 ns.
L40S_TP2 = GPUProfile(
    name="L40S-48GB-x2-TP2-bf16",
    max_num_batched_tokens=2048,
    max_num_seqs=64,
    kv_capacity_tokens=200_000,
    base_s=0.038,
    prefill_s_per_token=165e-6,
    decode_s_per_seq=100e-6,
    attention_s_per_kv_token=125e-9,
)

# 2x RTX 4090 24 GB (pool "rtx4090", BYO hosts), TP 2, FP8 weights. NVIDIA Ada (AD102) whitepaper:
# 1008 GB/s GDDR6X, 330 TFLOPS dense FP8 (FP32 accumulate) per GPU; GeForce cards have no P2P, so
# NCCL all-reduces go through host memory. Decode: 12.45 GB per GPU / (1008 GB/s x ~0.8) = ~15.5
# ms, + 80 all-reduces through the host (~60 us each) = ~5 ms, + ~2 ms -> base 23 ms. Prefill:
# 47 GFLOP / (2 x 330 TFLOPS x ~0.4) = ~180 us + activations through the host at ~10 GB/s = ~80 us
# -> ~260 us/token (~3.8k tok/s). KV per GPU: 23.99 GiB x 0.92 = 22.1 GiB - 11.6 GiB weights -
# ~2 GiB overhead = ~8.5 GiB / 80 KiB = ~111k tokens -> 100,000. Attention: 80 KiB / (1008 GB/s x
# 0.75) = ~110 ns.
RTX4090_FP8_TP2 = GPUProfile(
    name="RTX4090-24GB-x2-TP2-fp8",
    max_num_batched_tokens=2048,
    max_num_seqs=32,
    kv_capacity_tokens=100_000,
    base_s=0.023,
    prefill_s_per_token=260e-6,
    decode_s_per_seq=120e-6,
    attention_s_per_kv_token=110e-9,
)

PROFILES: dict[str, GPUProfile] = {"H100_TP1": H100_TP1, "L40S_TP2": L40S_TP2, "RTX4090_FP8_TP2": RTX4090_FP8_TP2}


def profile_named(name: object) -> GPUProfile | None:
    """A profile by its PROFILES key or its own name (None: unknown)."""
    if name in PROFILES:
        return PROFILES[name]
    return next((p for p in PROFILES.values() if p.name == name), None)


@dataclass(frozen=True)
class RequestStep:
    """What one step did for one request."""

    tokens: int  # tokens emitted this step: 0 while prefilling, else 1
    first_token: bool  # this step emitted the request's first token
    finished: bool  # the request emitted its last token this step and left the engine
    scheduled_tokens: int = 0  # tokens the step computed for it (prefill chunk, or 1 decoding)


@dataclass(frozen=True)
class StepResult:
    duration_s: float  # 0.0 when nothing was scheduled (an idle engine takes no step)
    requests: dict[str, RequestStep]  # every request scheduled this step
    preempted: tuple[str, ...] = ()  # requests whose KV was freed this step (back to waiting)
    prefill_tokens: int = 0
    decoding_seqs: int = 0
    kv_tokens_in_batch: int = 0


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_usage: float  # 0..1 of kv_capacity_tokens
    queued_tokens: int  # prompt tokens not yet in KV + completion tokens not yet generated
    prefill_tokens: int = 0  # prefill still to do: prompt (and, after a preemption, generated) tokens not in KV
    context_tokens: int = 0  # prompt + generated tokens of every request held (attention reads them per step)
    prefilled_total: int = 0  # prefill tokens computed since the engine started (a counter)


def published_stats(stats: EngineStats, profile: str, time_scale: float = 1.0) -> dict:
    """What a replica running this engine publishes with its routing stats (common.protocol)."""
    return {P.STAT_RUNNING: stats.running, P.STAT_WAITING: stats.waiting, P.STAT_KV_USAGE: stats.kv_usage,
            P.STAT_PREFILL_TOKENS: stats.prefill_tokens, P.STAT_CONTEXT_TOKENS: stats.context_tokens,
            P.STAT_PREFILLED_TOTAL: stats.prefilled_total,
            P.STAT_GPU_PROFILE: profile, P.STAT_TIME_SCALE: time_scale}


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    chain: PrefixChain
    computed: int = 0  # tokens whose KV is cached (prompt, then generated ones)
    generated: int = 0
    filled: int = 0  # entries of `chain` this request has reached (held, or computed as its own copy)
    next_fill: float = float("inf")  # tokens the next entry of its chain needs computed
    held: list = field(default_factory=list)  # keys of the shared segments it uses, in chain order
    private: int = 0  # KV tokens only it holds (computed, not in a shared segment it holds)
    priority: int = 0  # vLLM's: lower is served first (scheduling "priority" only)
    seq: int = 0  # arrival order

    @property
    def rank(self) -> tuple[int, int]:
        return self.priority, self.seq

    @property
    def known(self) -> int:
        """Tokens that exist: the prompt and what was generated. KV must cover them all to sample."""
        return self.prompt_tokens + self.generated

    @property
    def decoding(self) -> bool:
        return self.generated > 0 and self.computed == self.known - 1


@dataclass
class EngineModel:
    profile: GPUProfile
    # vLLM's scheduling_policy: "fcfs", or "priority" (the waiting queue ordered by (priority,
    # arrival), and the victim of a preemption the running request of the lowest priority, latest
    # arrival: vllm/v1/core/sched/scheduler.py, request_queue.py).
    scheduling: str = "fcfs"
    _running: list[_Request] = field(default_factory=list)  # admission order
    _waiting: deque[_Request] = field(default_factory=deque)
    _requests: dict[str, _Request] = field(default_factory=dict)
    _kv: SharedKV = field(init=False)
    _prefilled_total: int = 0
    _arrivals: int = 0

    def __post_init__(self) -> None:
        if self.scheduling not in ("fcfs", "priority"):
            raise ValueError(f"scheduling must be 'fcfs' or 'priority', not {self.scheduling!r}")
        self._kv = SharedKV(self.profile.kv_capacity_tokens)

    def add(self, request_id: str, prompt_tokens: int, output_tokens: int,
            prefix_key: str | None = None, prefix_tokens: int = 0, chain: PrefixChain = (),
            priority: int = 0) -> None:
        """Queue a request that will generate `output_tokens` tokens (>= 1) after its prompt.

        Its shareable prefixes: `chain` (see PrefixChain; entries past the prompt are its prompt
        plus part or all of its answer), or one shared prefix, `prefix_key` of `prefix_tokens`.
        `priority`: lower first, under scheduling "priority" (ignored under "fcfs", as vLLM's)."""
        if request_id in self._requests:
            raise ValueError(f"request {request_id!r} already in the engine")
        if prompt_tokens < 1 or output_tokens < 1:
            raise ValueError("prompt_tokens and output_tokens must be >= 1")
        if not 0 <= prefix_tokens <= prompt_tokens:
            raise ValueError("prefix_tokens must be within 0..prompt_tokens")
        if prompt_tokens + output_tokens > self.profile.kv_capacity_tokens:
            # vLLM refuses such a request (max_model_len must fit in the KV cache at startup).
            raise ValueError(f"{prompt_tokens} + {output_tokens} tokens exceed the KV capacity "
                             f"{self.profile.kv_capacity_tokens} of {self.profile.name}")
        if not chain and prefix_key is not None and prefix_tokens:
            chain = ((prefix_key, prefix_tokens),)
        check_chain(chain)
        self._arrivals += 1
        request = _Request(request_id, prompt_tokens, output_tokens, tuple(chain),
                           priority=priority if self.scheduling == "priority" else 0, seq=self._arrivals)
        request.next_fill = chain[0][1] if chain else float("inf")
        self._requests[request_id] = request
        self._enqueue(request, front=False)

    def cancel(self, request_id: str) -> bool:
        """Drop a request, freeing its KV. False if the engine does not hold it."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        if request in self._waiting:
            self._waiting.remove(request)
        else:
            self._running.remove(request)
        self._free(request)
        return True

    @property
    def idle(self) -> bool:
        return not self._requests

    def stats(self) -> EngineStats:
        queued = prefill = context = 0
        for r in self._requests.values():
            queued += max(0, r.prompt_tokens - r.computed) + r.output_tokens - r.generated
            context += r.known
            if not r.decoding:
                prefill += r.known - r.computed
        return EngineStats(running=len(self._running), waiting=len(self._waiting),
                           kv_usage=self._kv.in_use / self.profile.kv_capacity_tokens, queued_tokens=queued,
                           prefill_tokens=prefill, context_tokens=context, prefilled_total=self._prefilled_total)

    @property
    def kv_used_tokens(self) -> int:
        """KV in use by running requests (shared segments once); cached free segments excluded."""
        return self._kv.in_use

    @property
    def kv_cached_free_tokens(self) -> int:
        """KV holding cached segments no running request uses (free, evicted as needed)."""
        return self._kv.cached_free_tokens

    def prefix_cached(self, prefix_key: Hashable) -> int:
        """Tokens of the prefix `prefix_key` in the prefix cache (0: not cached). Does not touch
        the LRU order."""
        return self._kv.tokens(prefix_key)

    def prefix_match(self, chain: PrefixChain) -> int:
        """Tokens of `chain` the prefix cache holds from its start. Does not touch the LRU order."""
        return self._kv.match(chain)[1]

    def step(self) -> StepResult:
        """Schedule and run one engine step; return what it did and how long it took."""
        p = self.profile
        budget = p.max_num_batched_tokens
        scheduled: dict[str, int] = {}
        preempted: list[str] = []

        # Running requests first, in admission order.
        index = 0
        while index < len(self._running) and budget > 0:
            request = self._running[index]
            new = min(request.known - request.computed, budget)
            preempted_itself = False
            while self._kv.in_use + new > p.kv_capacity_tokens:
                victim = self._victim()
                at = self._running.index(victim)
                del self._running[at]
                if victim.request_id in scheduled:  # already given tokens this step: taken back
                    budget += scheduled.pop(victim.request_id)
                if at < index:
                    index -= 1
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    preempted_itself = True
                    break
            if preempted_itself:
                break  # nothing left to preempt: it waits, and so does everything after it
            self._allocate(request, new, scheduled)
            budget -= new
            index += 1

        # Then waiting requests, FIFO, unless this step had to preempt.
        while not preempted and self._waiting and budget > 0 and len(self._running) < p.max_num_seqs:
            request = self._waiting[0]
            entries, hit, revived = self._prefix_hit(request)
            new = min(request.known - hit, budget)
            if self._kv.in_use + revived + new > p.kv_capacity_tokens:
                break
            self._waiting.popleft()
            self._running.append(request)
            if hit:
                request.held = [key for key, _ in request.chain[:entries]]
                self._kv.hold(request.held)  # shared with whoever else runs with them; counted once
                request.computed = hit
                request.filled = entries
                request.next_fill = request.chain[entries][1] if entries < len(request.chain) else float("inf")
            self._allocate(request, new, scheduled)
            budget -= new

        if not scheduled:
            return StepResult(0.0, {}, tuple(preempted))

        prefill_tokens = decoding_seqs = kv_in_batch = 0
        for request_id, new in scheduled.items():
            request = self._requests[request_id]
            if request.decoding:
                decoding_seqs += 1
            else:
                prefill_tokens += new
            kv_in_batch += request.computed + new
        duration = p.step_s(prefill_tokens, decoding_seqs, kv_in_batch)
        self._prefilled_total += prefill_tokens

        results: dict[str, RequestStep] = {}
        for request_id, new in scheduled.items():
            request = self._requests[request_id]
            request.computed += new
            emitted = request.computed == request.known
            if emitted:
                request.generated += 1
            finished = request.generated == request.output_tokens
            # What it computed is cached (the last token's KV never is: a finished answer counts whole).
            reach = request.known if finished else request.computed
            if reach >= request.next_fill:
                self._fill_prefix_cache(request, reach)
            if finished:
                self._running.remove(request)
                del self._requests[request_id]
                self._free(request)
            results[request_id] = RequestStep(tokens=int(emitted), first_token=emitted and request.generated == 1,
                                              finished=finished, scheduled_tokens=new)
        return StepResult(duration, results, tuple(preempted), prefill_tokens, decoding_seqs, kv_in_batch)

    def _allocate(self, request: _Request, new: int, scheduled: dict[str, int]) -> None:
        self._kv.grow(new)  # KV grows by the tokens this step computes
        request.private += new
        scheduled[request.request_id] = new

    def _free(self, request: _Request) -> None:
        """Its private KV is freed; the shared segments it held stay cached while others use them
        or until new KV needs their room."""
        self._kv.shrink(request.private)
        self._kv.release(request.held)
        request.private, request.held = 0, []

    def _preempt(self, request: _Request) -> None:
        """vLLM's recompute preemption: free all its KV; it prefills prompt + generated again
        (reusing what of its chain is still cached when it is admitted again)."""
        self._free(request)
        request.computed = request.filled = 0
        request.next_fill = request.chain[0][1] if request.chain else float("inf")
        self._enqueue(request, front=True)

    def _victim(self) -> _Request:
        """Whom a preemption frees: the most recently admitted (fcfs), or the running request of
        the lowest priority, latest arrival (priority)."""
        if self.scheduling == "priority":
            return max(self._running, key=lambda r: r.rank)
        return self._running[-1]

    def _enqueue(self, request: _Request, front: bool) -> None:
        """fcfs: arrivals at the back, preempted requests at the front. priority: both by
        (priority, arrival)."""
        if self.scheduling == "fcfs":
            self._waiting.appendleft(request) if front else self._waiting.append(request)
            return
        at = next((i for i, r in enumerate(self._waiting) if r.rank > request.rank), len(self._waiting))
        self._waiting.insert(at, request)

    def _prefix_hit(self, request: _Request) -> tuple[int, int, int]:
        """(chain entries, tokens, revived tokens) the prefix cache saves this request now; revived:
        cached tokens no running request holds (holding them takes KV room back)."""
        if not request.chain:
            return 0, 0, 0
        entries, cached, revived = self._kv.match(request.chain, request.known)
        # vLLM always computes at least the last known token: its logits give the next token.
        return entries, min(cached, request.known - 1), revived

    def _fill_prefix_cache(self, request: _Request, reach: int) -> None:
        """Share the request's chain entries it has computed (`reach` tokens) since the last fill:
        each becomes a segment it holds, its tokens moved out of its private KV (an entry already
        cached by another request stays its own private copy)."""
        chain, filled = request.chain, request.filled
        while filled < len(chain) and chain[filled][1] <= reach:
            key, cumulative = chain[filled]
            size = cumulative - (chain[filled - 1][1] if filled else 0)
            if self._kv.publish(key, size, cumulative):
                request.held.append(key)
                moved = min(size, request.private)  # a finished answer's last token was never computed
                request.private -= moved
                if moved < size:
                    self._kv.grow(size - moved)
            filled += 1
        request.filled = filled
        request.next_fill = chain[filled][1] if filled < len(chain) else float("inf")
