"""A seeded synthetic workload for a reasoning model: Poisson arrivals, long-tailed prompts and outputs.

Pure: the same (rate, duration, seed, mix) always gives the same jobs. Numbers are assumptions
about chat/RAG/document traffic on Magistral Small 2506, not measurements; every knob is a field
of `WorkloadMix` so a sweep or a test can change one at a time.
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


def generate(rate_rps: float, duration_s: float, seed: int = 0, mix: WorkloadMix = DEFAULT_MIX) -> list[Job]:
    """Jobs arriving as a Poisson process of `rate_rps` over [0, duration_s), in arrival order."""
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
