"""Pool choice: a filter (can this pool hold the prompt and the completion it asks for?), then
the predicted placement over every replica of the survivors (router/routing/placer.py) when
replicas have published what it needs, else the length rule.

The length rule (the router's policy before prediction, and its fallback until stats arrive): the
preferred pool is the first survivor in config order (pools are listed cheapest first). When
that pool is saturated the request spills to the next survivor that is not; when every survivor
is saturated it queues at the preferred one. A pool that cannot hold the context is never chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from common.config import AppConfig, PoolConfig
from router.context_cap import ContextLengthExceeded
from router.routing.placer import Placement


PREFERRED, SPILLED, ALL_SATURATED, PREDICTED = "preferred", "spilled", "all_saturated", "predicted"


@dataclass(frozen=True)
class PoolLimits:
    name: str
    max_model_len: int  # prompt + completion the engine holds
    max_prompt_tokens: int  # longest prompt the pool takes
    spill_at_outstanding_tokens: int  # saturated at or above this much outstanding work

    def context_limit(self, cap: int) -> int:
        return min(cap, self.max_model_len)

    def holds(self, prompt_tokens: int, max_tokens: int | None, cap: int) -> bool:
        wanted = 1 if max_tokens is None else max_tokens  # at least one completion token
        return (
            prompt_tokens <= self.max_prompt_tokens
            and prompt_tokens + wanted <= self.context_limit(cap)
        )


def limits_of(pool: PoolConfig) -> PoolLimits:
    return PoolLimits(
        name=pool.name,
        max_model_len=pool.max_model_len,
        max_prompt_tokens=pool.max_prompt_tokens or pool.max_model_len - 1,
        spill_at_outstanding_tokens=pool.spill_at_outstanding_tokens,
    )


def pool_limits(config: AppConfig) -> list[PoolLimits]:
    """The enabled pools' limits, in config order."""
    return [limits_of(p) for p in config.enabled_pools]


@dataclass(frozen=True)
class PoolChoice:
    pool: PoolLimits
    reason: str  # one line for logs and trace spans
    candidates: tuple[str, ...]  # pools that could hold the request, preferred first
    kind: str = PREFERRED  # PREFERRED | SPILLED | ALL_SATURATED | PREDICTED (a metric label)
    placement: Placement | None = None  # PREDICTED: the replicas best first, and every prediction


def allowed_pools(pools: Sequence[PoolLimits], may_use: Callable[[str], bool]) -> list[PoolLimits]:
    """The tenant's pools among those served, in config order (may be empty: the edge says 403)."""
    return [p for p in pools if may_use(p.name)]


def largest_context(pools: Sequence[PoolLimits], cap: int) -> int:
    return max(p.context_limit(cap) for p in pools)


def pools_that_hold(
    prompt_tokens: int, max_tokens: int | None, pools: Sequence[PoolLimits], cap: int
) -> tuple[PoolLimits, ...]:
    return tuple(p for p in pools if p.holds(prompt_tokens, max_tokens, cap))


def choose_pool(
    prompt_tokens: int,
    max_tokens: int | None,
    pools: Sequence[PoolLimits],
    outstanding_tokens: Mapping[str, int],
    cap: int,
    place: Callable[[Sequence[PoolLimits]], Placement | None] | None = None,
) -> PoolChoice:
    """Pick the pool for a request whose max_tokens already passed the cap (see context_cap).
    `place` predicts over the pools that hold it; without it (or when it has no view of them)
    the length rule decides."""
    fitting = pools_that_hold(prompt_tokens, max_tokens, pools, cap)
    if not fitting:
        biggest = largest_context(pools, cap)
        raise ContextLengthExceeded(
            f"No pool can hold this request: {prompt_tokens} prompt tokens"
            + ("" if max_tokens is None else f" + {max_tokens} completion tokens")
            + f"; the largest pool holds {biggest} tokens.",
            prompt_tokens=prompt_tokens,
            limit=biggest,
        )
    names = tuple(p.name for p in fitting)
    placement = place(fitting) if place is not None else None
    if placement is not None:
        chosen = next(p for p in fitting if p.name == placement.pool)
        return PoolChoice(chosen, placement.reason(), names, PREDICTED, placement)
    preferred = fitting[0]

    def saturated(pool: PoolLimits) -> bool:
        return outstanding_tokens.get(pool.name, 0) >= pool.spill_at_outstanding_tokens

    if not saturated(preferred):
        return PoolChoice(preferred, f"{preferred.name}: cheapest pool that holds the request", names)
    for pool in fitting[1:]:
        if not saturated(pool):
            return PoolChoice(
                pool,
                f"{pool.name}: spilled, {preferred.name} saturated "
                f"({outstanding_tokens.get(preferred.name, 0)} >= "
                f"{preferred.spill_at_outstanding_tokens} outstanding tokens)",
                names,
                SPILLED,
            )
    return PoolChoice(preferred, f"{preferred.name}: every pool that holds it is saturated", names, ALL_SATURATED)
