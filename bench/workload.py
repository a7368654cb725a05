"""A seeded synthetic workload for a reasoning model: Poisson arrivals, long-tailed prompts and outputs.

Pure: the same (rate, duration, seed, mix) always gives the same jobs. Numbers are assumptions
about chat/RAG/document traffic on Magistral Small 2506, not measurements; every knob is a field
of `WorkloadMix` so a sweep or a test can change one at a time.

A second, prefix-heavy workload (`ConversationMix`, PREFIX_HEAVY_MIX): many tenants, each with
its own long system prompt, holding multi-turn chats; each turn's prompt is the previous turn's
prompt, its answer and a new user message. Its jobs carry their prefix chain (see
common.prefix_cache.PrefixChain) so the engine model's prefix cache and the router's memory see
what is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTEXT_CAP = 40_960  # Magistral Small 2506's context: prompt + output never exceed it


@dataclass(frozen=True)
class Job:
    job_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_key: str | None
    prefix_tokens: int
    # Cumulative shareable prefixes, shortest first: (key, tokens). Entries past the prompt are its
    # prompt with its answer (a later turn reuses them). Empty: its prefix_key, if any, then its
    # whole prompt (cached too, as vLLM caches every block; no other job shares it).
    chain: tuple[tuple[str, int], ...] = ()
    # Who sent it and the priority tier it asks for (bench/fairness.py; "" for the default tier).
    tenant: str = ""
    tier: str = ""

    @property
    def prefix_chain(self) -> tuple[tuple[str, int], ...]:
        """What the engine caches of this job (its prompt, and for a conversation its answer)."""
        if self.chain:
            return self.chain
        shared = ((self.prefix_key, self.prefix_tokens),) if self.prefix_key and self.prefix_tokens else ()
        return shared + ((self.job_id, self.prompt_tokens),) if self.prompt_tokens > self.prefix_tokens else shared

    @property
    def prompt_chain(self) -> tuple[tuple[str, int], ...]:
        """What a router sees of it: the chain within its prompt (the answer does not exist yet)."""
        chain = self.prefix_chain
        if chain and chain[-1][1] > self.prompt_tokens:
            return tuple(e for e in chain if e[1] <= self.prompt_tokens)
        return chain


@dataclass(frozen=True)
class WorkloadMix:
    # Request classes: chat dominates traffic, RAG/doc questions are common, whole documents rare.
    chat_share: float = 0.72  # interactive chats: most traffic of a general assistant
    rag_share: float = 0.21  # retrieved passages or a pasted doc: a minority with mid-size prompts
    # the rest (~7 %) are long documents, the tail that only the full-context pool holds
    # Prompt lengths per class: lognormal (median, sigma), clipped to the class's range.
    chat_prompt_median: float = 700.0  # system prompt + a few turns
    chat_prompt_sigma: float = 0.6  # spreads chats over a few hundred to ~2k tokens
    chat_prompt_range: tuple[int, int] = (120, 2_048)  # longer than 2k is no longer a plain chat
    rag_prompt_median: float = 4_500.0  # a handful of retrieved chunks
    rag_prompt_sigma: float = 0.45  # 2k-10k tokens
    rag_prompt_range: tuple[int, int] = (2_048, 10_000)
    doc_prompt_median: float = 16_000.0  # a paper, a contract, a long log
    doc_prompt_sigma: float = 0.4  # 10k to ~30k tokens
    doc_prompt_range: tuple[int, int] = (10_000, 30_000)
    # Outputs: <think> reasoning then the answer; Magistral thinks for hundreds to thousands of tokens.
    output_median: float = 900.0  # typical reasoning trace plus answer
    output_sigma: float = 0.8  # p99 ~ 5.5k: hard problems think much longer
    output_range: tuple[int, int] = (16, 12_000)  # a floor for the shortest answers, a ceiling for runaway thinking
    # Shared system prompts (prefix cache): most products send one of a few fixed system prompts.
    prefix_share: float = 0.85  # share of requests that start with a shared system prompt
    prefix_sizes: tuple[int, ...] = (350, 600, 900, 1_200, 1_500)  # tokens of "sys-0".."sys-4"
    prefix_weights: tuple[float, ...] = (0.4, 0.25, 0.15, 0.12, 0.08)  # a few products dominate
    min_user_tokens: int = 32  # a prompt is never just the system prompt: the user says something


DEFAULT_MIX = WorkloadMix()
# Reasoning-length outputs (median 2.5k, p99 ~11k tokens): Magistral thinking through hard questions.
REASONING_MIX = WorkloadMix(output_median=2_500.0, output_sigma=0.65, output_range=(16, 20_000))


def _lognormal(rng: np.random.Generator, n: int, median: float, sigma: float, bounds: tuple[int, int]) -> np.ndarray:
    """Lognormal truncated to `bounds` (out-of-range draws are redrawn: no spikes at the bounds)."""
    low, high = bounds
    values = np.rint(rng.lognormal(np.log(median), sigma, n))
    outside = (values < low) | (values > high)
    while outside.any():
        values[outside] = np.rint(rng.lognormal(np.log(median), sigma, int(outside.sum())))
        outside = (values < low) | (values > high)
    return values.astype(np.int64)


def generate(rate_rps: float, duration_s: float, seed: int = 0,
             mix: WorkloadMix | ConversationMix = DEFAULT_MIX) -> list[Job]:
    """Jobs arriving as a Poisson process of `rate_rps` over [0, duration_s), in arrival order
    (a ConversationMix: generate_conversations)."""
    if isinstance(mix, ConversationMix):
        return generate_conversations(rate_rps, duration_s, seed, mix)
    if rate_rps <= 0 or duration_s <= 0:
        return []
    rng = np.random.default_rng(seed)
    # Draw gaps in one batch with margin, then cut at the duration (Poisson: exponential gaps).
    expected = rate_rps * duration_s
    gaps = rng.exponential(1.0 / rate_rps, int(expected + 6 * np.sqrt(expected) + 16))
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < duration_s]
    n = len(arrivals)

    kind = rng.choice(3, size=n, p=[mix.chat_share, mix.rag_share, 1.0 - mix.chat_share - mix.rag_share])
    prompts = np.select(
        [kind == 0, kind == 1],
        [_lognormal(rng, n, mix.chat_prompt_median, mix.chat_prompt_sigma, mix.chat_prompt_range),
         _lognormal(rng, n, mix.rag_prompt_median, mix.rag_prompt_sigma, mix.rag_prompt_range)],
        _lognormal(rng, n, mix.doc_prompt_median, mix.doc_prompt_sigma, mix.doc_prompt_range))

    weights = np.asarray(mix.prefix_weights, dtype=float)
    has_prefix = rng.random(n) < mix.prefix_share
    which = rng.choice(len(mix.prefix_sizes), size=n, p=weights / weights.sum())
    prefix = np.where(has_prefix, np.asarray(mix.prefix_sizes)[which], 0)
    prompts = np.maximum(prompts, prefix + mix.min_user_tokens)  # the prefix is part of the prompt

    outputs = _lognormal(rng, n, mix.output_median, mix.output_sigma, mix.output_range)
    outputs = np.minimum(outputs, CONTEXT_CAP - prompts)

    return [Job(f"j{i}", float(arrivals[i]), int(prompts[i]), int(outputs[i]),
                f"sys-{which[i]}" if has_prefix[i] else None, int(prefix[i]))
            for i in range(n)]


@dataclass(frozen=True)
class ConversationMix:
    """Multi-turn chats of many tenants, each with its own long system prompt. Turns of one
    conversation: the first user message, then after each answer (streamed at the TPOT objective
    after the TTFT objective: the answer is whole when it met them) and the user's think time, the
    next one. A tenant's share of conversations follows Zipf (a few big tenants, a long tail)."""

    tenants: int = 48
    tenant_zipf: float = 0.8  # share of tenant k ~ k^-s: the biggest ~16 % of traffic
    system_prompt_range: tuple[int, int] = (2_000, 6_000)  # uniform, tokens
    turns_mean: float = 3.0  # geometric (before the cap): most chats are short
    max_turns: int = 8
    first_user_median: float = 250.0  # the first message often pastes something
    first_user_sigma: float = 0.9
    first_user_range: tuple[int, int] = (16, 3_000)
    user_median: float = 120.0  # follow-ups are short
    user_sigma: float = 0.8
    user_range: tuple[int, int] = (8, 1_500)
    # Outputs: reasoning-ish but shorter than REASONING_MIX (chats: think briefly, answer).
    output_median: float = 700.0
    output_sigma: float = 0.6  # p99 ~2.8k
    output_range: tuple[int, int] = (32, 6_000)
    think_s: float = 15.0  # mean (exponential): reading the answer and typing the next message
    answer_tpot_s: float = 0.08  # the previous answer streams at most this slowly (the objective)
    answer_ttft_s: float = 1.6  # and starts at most this late

    @property
    def expected_turns(self) -> float:
        """Mean turns per conversation under the cap (the arrival rate of conversations is the
        request rate over this)."""
        p = 1.0 - 1.0 / self.turns_mean  # chance of one more turn
        return sum(p ** k for k in range(self.max_turns))


PREFIX_HEAVY_MIX = ConversationMix()


def generate_conversations(rate_rps: float, duration_s: float, seed: int = 0,
                           mix: ConversationMix = PREFIX_HEAVY_MIX) -> list[Job]:
    """Turns of conversations starting as a Poisson process over [0, duration_s), every turn
    arriving before duration_s, in arrival order; `rate_rps` requests per second in steady state
    (reached once the conversations started at 0 have ended: leave a warm-up of a few
    conversation lifetimes, ~2-4 min)."""
    if rate_rps <= 0 or duration_s <= 0:
        return []
    rng = np.random.default_rng(seed)
    weights = np.arange(1, mix.tenants + 1, dtype=float) ** -mix.tenant_zipf
    systems = rng.integers(mix.system_prompt_range[0], mix.system_prompt_range[1] + 1, mix.tenants)
    starts_rate = rate_rps / mix.expected_turns
    expected = starts_rate * duration_s
    starts = np.cumsum(rng.exponential(1.0 / starts_rate, int(expected + 6 * np.sqrt(expected) + 16)))
    starts = starts[starts < duration_s]
    n = len(starts)
    tenant = rng.choice(mix.tenants, size=n, p=weights / weights.sum())
    turns = np.minimum(rng.geometric(1.0 / mix.turns_mean, n), mix.max_turns)
    total = int(turns.sum())
    firsts = _lognormal(rng, n, mix.first_user_median, mix.first_user_sigma, mix.first_user_range)
    users = _lognormal(rng, total, mix.user_median, mix.user_sigma, mix.user_range)
    outputs = _lognormal(rng, total, mix.output_median, mix.output_sigma, mix.output_range)
    thinks = rng.exponential(mix.think_s, total)

    jobs: list[Job] = []
    at = 0  # index into the per-turn draws
    for c in range(n):
        t, system = int(tenant[c]), int(systems[tenant[c]])
        chain: list[tuple[str, int]] = [(f"s{t}", system)]
        arrival, context = float(starts[c]), system
        for k in range(int(turns[c])):
            user = int(firsts[c]) if k == 0 else int(users[at])
            output = int(outputs[at])
            prompt = context + user
            if arrival >= duration_s or prompt + output > CONTEXT_CAP:
                at += int(turns[c]) - k
                break
            chain.append((f"c{c}u{k}", prompt))
            jobs.append(Job(f"c{c}t{k}", arrival, prompt, output, f"s{t}", system,
                            tuple(chain) + ((f"c{c}a{k}", prompt + output),)))
            chain.append((f"c{c}a{k}", prompt + output))
            context = prompt + output
            arrival += mix.answer_ttft_s + output * mix.answer_tpot_s + float(thinks[at])
            at += 1
    jobs.sort(key=lambda j: j.arrival_s)
    return jobs


def describe(jobs: list[Job]) -> dict:
    """Count, prompt/output percentiles and the share of jobs with a shared prefix."""
    if not jobs:
        return {"count": 0}
    prompts = np.array([j.prompt_tokens for j in jobs])
    outputs = np.array([j.output_tokens for j in jobs])
    quantiles = (50, 90, 99)

    def pct(values: np.ndarray) -> dict:
        return {f"p{q}": int(np.percentile(values, q)) for q in quantiles} | {
            "mean": round(float(values.mean()), 1), "max": int(values.max())}

    span = jobs[-1].arrival_s - jobs[0].arrival_s
    return {
        "count": len(jobs),
        "rate_rps": round(len(jobs) / span, 3) if span > 0 else None,
        "prompt_tokens": pct(prompts),
        "output_tokens": pct(outputs),
        "prefix_share": round(sum(j.prefix_key is not None for j in jobs) / len(jobs), 4),
        "prompt_over_8192_share": round(float((prompts > 8192).mean()), 4),
    }
