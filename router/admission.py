"""Admission: count (only when needed), apply the cap, choose the pool. Pure; no Ray, no FastAPI.

The exact count is skipped when the byte-length upper bound already proves the decision: the bound
fits the cap without clamping, and every pool that would hold a zero-token prompt also holds the
bound. Pool fit only shrinks as the prompt grows, so every count between 0 and the bound leads to
the same pools, the same choice and no clamp. The replica (or engine) then counts the prompt once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from common.tokens import BYTES_PER_TOKEN_ESTIMATE
from router.context_cap import OverflowPolicy, apply_cap
from router.routing.placer import Placement
from router.routing.pools import PoolChoice, PoolLimits, choose_pool, largest_context, pools_that_hold

# A prediction from an uncounted prompt uses the byte bound over this. The replica counts exactly.
BOUND_BYTES_PER_TOKEN = BYTES_PER_TOKEN_ESTIMATE


@dataclass(frozen=True)
class Admission:
    choice: PoolChoice
    prompt_tokens: int | None  # exact count, or None when the bound made it unnecessary
    prompt_tokens_bound: int  # upper bound (equals the exact count when counted)
    max_tokens: int | None  # None: the replica fills in context_limit - prompt_tokens
    context_limit: int  # prompt + completion may not exceed this on the chosen pool
    clamped_from: int | None = None
    pool_load: Mapping[str, int] = field(default_factory=dict)  # the outstanding tokens per pool the choice saw (the caller's snapshot)

    @property
    def pool(self) -> str:
        return self.choice.pool.name

    def worst_case_completion(self) -> int:
        """What the quota reserves for the completion: max_tokens, or all the pool's context
        leaves after the prompt (its exact count when counted, else its bound)."""
        if self.max_tokens is not None:
            return self.max_tokens
        return self.context_limit - self.prompt_tokens_bound


def needs_exact_count(max_tokens: int | None, tenant_bounds_tokens: bool) -> bool:
    """A request that leaves max_tokens to the context may be clamped to what the tenant's token
    or money limits allow: that needs the exact prompt, not its byte bound."""
    return max_tokens is None and tenant_bounds_tokens


def bound_decides(upper_bound: int | None, max_tokens: int | None, pools: Sequence[PoolLimits], cap: int) -> bool:
    """True when any prompt of 0..upper_bound tokens gets the same cap and pool decision."""
    if upper_bound is None or upper_bound >= cap:
        return False
    if max_tokens is not None and upper_bound + max_tokens > cap:
        return False
    return pools_that_hold(upper_bound, max_tokens, pools, cap) == pools_that_hold(
        0, max_tokens, pools, cap
    )


def effective_cap(pools: Sequence[PoolLimits], cap: int) -> int:
    """The cap, or less when no pool holds that much: clamping aims at what can be served."""
    return min(cap, largest_context(pools, cap))


def admit(
    *,
    upper_bound: int | None,
    count_exact: Callable[[], int],
    max_tokens: int | None,
    pools: Sequence[PoolLimits],
    outstanding_tokens: Mapping[str, int],
    cap: int,
    policy: OverflowPolicy,
    place: Callable[[int, Sequence[PoolLimits]], Placement | None] | None = None,
) -> Admission:
    """Decide a request. Raises ContextLengthExceeded (-> HTTP 400) with the real counts.

    upper_bound: from common.tokens, None when there is no cheap bound (always count then).
    place: the predicted placement (router/routing/placer.py), given the prompt's likely tokens
    and the pools that hold it.
    """
    cap = effective_cap(pools, cap)
    if bound_decides(upper_bound, max_tokens, pools, cap):
        likely = max(1, upper_bound // BOUND_BYTES_PER_TOKEN)
        choice = choose_pool(upper_bound, max_tokens, pools, outstanding_tokens, cap,
                             None if place is None else lambda fitting: place(likely, fitting))
        return Admission(choice, None, upper_bound, max_tokens, choice.pool.context_limit(cap),
                         pool_load=outstanding_tokens)

    exact = count_exact()
    budget = apply_cap(exact, max_tokens, cap, policy)
    choice = choose_pool(exact, budget.max_tokens, pools, outstanding_tokens, cap,
                         None if place is None else lambda fitting: place(exact, fitting))
    limit = choice.pool.context_limit(cap)
    granted = budget.max_tokens if budget.max_tokens is not None else limit - exact
    return Admission(choice, exact, exact, granted, limit, budget.clamped_from, pool_load=outstanding_tokens)
