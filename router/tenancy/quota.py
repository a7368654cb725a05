"""Quota arithmetic: may a request start, and with how many completion tokens? Pure; no I/O.

A request reserves its worst case (prompt tokens, or their byte bound, plus the completion tokens
it may generate, priced at the dearer completion price) against every limit of its tenant; when it
ends the reservation is replaced by the real usage (see store.py). `decide` sees the tenant's
state as one snapshot taken under the tenant's lock, so concurrent requests can never together
pass a limit. Minute limits are sliding windows over the last 60 s of admissions; day and month
budgets are UTC calendar periods, charged to the period in which a request started.

A request that did not set max_tokens (it would get the whole rest of the context) is clamped to
what its limits still allow instead of being refused; one that asked for more than that is
refused, as a context overflow under the `strict` policy would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

WINDOW_S = 60.0
RATE_LIMITED = "rate_limit_exceeded"
OUT_OF_BUDGET = "insufficient_quota"


@dataclass(frozen=True)
class Limits:
    """None: no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    usd_per_day: Decimal | None = None
    usd_per_month: Decimal | None = None

    @property
    def bounds_tokens(self) -> bool:
        """Some limit caps the tokens (or dollars) of one request: a decision needs exact counts."""
        return any(v is not None for v in (self.tokens_per_minute, self.tokens_per_day, self.tokens_per_month,
                                           self.usd_per_day, self.usd_per_month))


@dataclass(frozen=True)
class Spend:
    tokens: int = 0
    usd: Decimal = Decimal(0)

    def __add__(self, other: "Spend") -> "Spend":
        return Spend(self.tokens + other.tokens, self.usd + other.usd)


@dataclass(frozen=True)
class TenantState:
    """One tenant's usage at `now`: settled usage plus the worst case of requests in flight."""

    now: datetime
    in_flight: int
    window: tuple[tuple[datetime, int], ...]  # (admitted at, tokens) of admissions in the last minute
    day: Spend
    month: Spend
    # Instead of `window`, its sums (a store reads these cheaply): enough for every grant and
    # header; a minute-limit refusal then falls back to a conservative Retry-After, so a store
    # that wants the exact one decides again with the single entries (see `needs_window`).
    window_summary: "WindowSummary | None" = None


@dataclass(frozen=True)
class WindowSummary:
    requests: int
    tokens: int
    oldest: datetime | None
    newest: datetime | None


def needs_window(decision: "Grant | Refusal", state: TenantState) -> bool:
    """True when a decision made from a window summary is a minute-limit refusal, whose exact
    Retry-After needs the single admissions."""
    return (state.window_summary is not None and isinstance(decision, Refusal)
            and decision.limit in ("requests_per_minute", "tokens_per_minute"))


@dataclass(frozen=True)
class Ask:
    prompt_tokens: int  # exact, or the byte bound when the router did not count
    max_tokens: int  # completion tokens the request may generate
    clampable: bool  # the client left max_tokens unset: it may be lowered to fit the limits
    input_usd_per_token: Decimal
    completion_usd_per_token: Decimal  # the dearer of output and reasoning

    def worst_case(self, max_tokens: int | None = None) -> tuple[int, Decimal]:
        """Tokens and dollars the request may use with `max_tokens` (default: its own)."""
        completion = self.max_tokens if max_tokens is None else max_tokens
        return (self.prompt_tokens + completion,
                self.prompt_tokens * self.input_usd_per_token + completion * self.completion_usd_per_token)


@dataclass(frozen=True)
class RateHeaders:
    """OpenAI's x-ratelimit-* figures after the decision (None where the tenant has no limit)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    def as_headers(self) -> dict[str, str]:
        out = {}
        for name, value in (("limit-requests", self.limit_requests), ("remaining-requests", self.remaining_requests),
                            ("limit-tokens", self.limit_tokens), ("remaining-tokens", self.remaining_tokens)):
            if value is not None:
                out[f"x-ratelimit-{name}"] = str(max(0, value))
        for name, seconds in (("reset-requests", self.reset_requests_s), ("reset-tokens", self.reset_tokens_s)):
            if seconds is not None:
                out[f"x-ratelimit-{name}"] = f"{max(0.0, seconds):.3f}s"
        return out


@dataclass(frozen=True)
class Grant:
    max_tokens: int
    tokens: int  # reserved: prompt + max_tokens
    usd: Decimal  # reserved: worst-case price
    clamped_from: int | None
    headers: RateHeaders


@dataclass(frozen=True)
class Refusal:
    code: str  # RATE_LIMITED or OUT_OF_BUDGET
    limit: str  # the Limits field that refused
    message: str
    retry_after_s: int
    headers: RateHeaders


def day_key(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d")


def month_key(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m")


def _seconds_to_next_day(t: datetime) -> float:
    t = t.astimezone(timezone.utc)
    midnight = datetime(t.year, t.month, t.day, tzinfo=timezone.utc) + timedelta(days=1)
    return (midnight - t).total_seconds()


def _seconds_to_next_month(t: datetime) -> float:
    t = t.astimezone(timezone.utc)
    first = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=timezone.utc)
    return (first - t).total_seconds()


def _recent(state: TenantState) -> list[tuple[float, int]]:
    """(seconds until the entry leaves the window, tokens), soonest first. From a summary: the
    oldest entry, then the newest carrying the rest (the count is kept apart, in _usage)."""
    summary = state.window_summary
    if summary is not None:
        if not summary.requests and not summary.tokens:  # (leases may hold tokens but no admission)
            return []
        oldest = WINDOW_S - (state.now - summary.oldest).total_seconds()
        newest = WINDOW_S - (state.now - summary.newest).total_seconds()
        return [(oldest, 0), (newest, summary.tokens)]
    out = []
    for at, tokens in state.window:
        left = WINDOW_S - (state.now - at).total_seconds()
        if left > 0:
            out.append((left, tokens))
    return sorted(out)


def _wait_until_fits(recent: list[tuple[float, int]], used: int, need: int, limit: int) -> float | None:
    """Seconds until `need` more fits under `limit` as entries leave the window; None: never."""
    if need > limit:
        return None
    for left, tokens in recent:
        used -= tokens
        if used + need <= limit:
            return left
    return 0.0


def _retry(seconds: float | None, fallback: float = WINDOW_S) -> int:
    return max(1, math.ceil(fallback if seconds is None else seconds))


def after_grant(state: TenantState, grant: Grant) -> TenantState:
    """The tenant's state once `grant` is reserved at `state.now`: what a store would read back,
    so that several requests are decided in order on one read (a group commit)."""
    summary = state.window_summary
    if summary is not None:
        summary = WindowSummary(summary.requests + 1, summary.tokens + grant.tokens, summary.oldest or state.now,
                                state.now)
    spend = Spend(grant.tokens, grant.usd)
    return replace(state, in_flight=state.in_flight + 1, day=state.day + spend, month=state.month + spend,
                   window=state.window if summary is not None else state.window + ((state.now, grant.tokens),),
                   window_summary=summary)


def decide(limits: Limits, state: TenantState, ask: Ask) -> Grant | Refusal:
    recent = _recent(state)
    summary = state.window_summary
    requests_used = summary.requests if summary is not None else len(recent)
    tokens_used = sum(t for _, t in recent)

    def headers(extra_requests: int, extra_tokens: int) -> RateHeaders:
        """Remaining after this decision. reset-requests: seconds until a request slot frees (the
        oldest admission leaves the window); reset-tokens: until the window is empty again. Both
        count a request just admitted (it leaves in WINDOW_S)."""
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        leaving = [left for left, _ in recent] + ([WINDOW_S] if extra_requests else [])
        return RateHeaders(
            limit_requests=rpm,
            remaining_requests=None if rpm is None else rpm - requests_used - extra_requests,
            reset_requests_s=None if rpm is None else min(leaving, default=0.0),
            limit_tokens=tpm,
            remaining_tokens=None if tpm is None else tpm - tokens_used - extra_tokens,
            reset_tokens_s=None if tpm is None else max(leaving, default=0.0),
        )

    def refuse(code: str, limit: str, message: str, retry_s: float | None) -> Refusal:
        return Refusal(code, limit, message, _retry(retry_s), headers(0, 0))

    if limits.max_concurrent_requests is not None and state.in_flight >= limits.max_concurrent_requests:
        return refuse(RATE_LIMITED, "max_concurrent_requests",
                      f"Too many concurrent requests: limit {limits.max_concurrent_requests}, "
                      f"in flight {state.in_flight}. Retry when one finishes.", 1)
    if limits.requests_per_minute is not None and requests_used >= limits.requests_per_minute:
        if limits.requests_per_minute == 0:
            return refuse(RATE_LIMITED, "requests_per_minute",
                          "This key may not make requests (requests_per_minute is 0).", None)
        # The oldest admissions leave first; a summary knows only the oldest and the newest.
        index = requests_used - limits.requests_per_minute
        wait = recent[index][0] if summary is None else (recent[0][0] if index == 0 else recent[-1][0])
        return refuse(RATE_LIMITED, "requests_per_minute",
                      f"Rate limit reached for requests per minute: limit {limits.requests_per_minute}, "
                      f"used {requests_used}. Retry in {_retry(wait)} s.", wait)

    # Completion tokens each limit still allows after this request's prompt (None: unlimited).
    room: list[tuple[int, str]] = []
    prompt = ask.prompt_tokens
    if limits.tokens_per_minute is not None:
        room.append((limits.tokens_per_minute - tokens_used - prompt, "tokens_per_minute"))
    if limits.tokens_per_day is not None:
        room.append((limits.tokens_per_day - state.day.tokens - prompt, "tokens_per_day"))
    if limits.tokens_per_month is not None:
        room.append((limits.tokens_per_month - state.month.tokens - prompt, "tokens_per_month"))
    for budget, spent, name in ((limits.usd_per_day, state.day.usd, "usd_per_day"),
                                (limits.usd_per_month, state.month.usd, "usd_per_month")):
        if budget is not None:
            left = budget - spent - prompt * ask.input_usd_per_token
            if ask.completion_usd_per_token == 0:
                room.append((ask.max_tokens if left >= 0 else -1, name))
            else:
                room.append((math.floor(left / ask.completion_usd_per_token), name))

    allowed = min((r for r, _ in room), default=ask.max_tokens)
    max_tokens, clamped_from = ask.max_tokens, None
    if allowed < ask.max_tokens:
        if ask.clampable and allowed >= 1:
            max_tokens, clamped_from = allowed, ask.max_tokens
        else:
            # Name the failing limit that frees up last, so a retry when told meets no other.
            need = 1 if ask.clampable else ask.max_tokens
            failing = {name for r, name in room if r < need}
            binding = next(name for name in _LONGEST_FIRST if name in failing)
            return _refuse_for(binding, limits, state, ask, recent, tokens_used, refuse)
    tokens, usd = ask.worst_case(max_tokens)
    return Grant(max_tokens, tokens, usd, clamped_from, headers(1, tokens))


_LONGEST_FIRST = ("usd_per_month", "tokens_per_month", "usd_per_day", "tokens_per_day", "tokens_per_minute")


def _refuse_for(binding: str, limits: Limits, state: TenantState, ask: Ask,
                recent: list[tuple[float, int]], tokens_used: int, refuse) -> Refusal:
    need = ask.prompt_tokens + (1 if ask.clampable else ask.max_tokens)
    wanted = f"{ask.prompt_tokens} prompt + {ask.max_tokens if not ask.clampable else 1} completion tokens"
    if binding == "tokens_per_minute":
        tpm = limits.tokens_per_minute
        wait = _wait_until_fits(recent, tokens_used, need, tpm)
        if wait is None:
            return refuse(RATE_LIMITED, binding, f"Request too large for tokens per minute: it needs {wanted}, "
                          f"the limit is {tpm}. Lower max_tokens or shorten the prompt.", None)
        return refuse(RATE_LIMITED, binding, f"Rate limit reached for tokens per minute: limit {tpm}, "
                      f"used {tokens_used}, this request needs {wanted}. Retry in {_retry(wait)} s.", wait)
    period_end = _seconds_to_next_day(state.now) if binding.endswith("_day") else _seconds_to_next_month(state.now)
    spend = state.day if binding.endswith("_day") else state.month
    limit = getattr(limits, binding)
    if binding.startswith("usd"):
        used = f"${spend.usd} of ${limit} spent or reserved"
    else:
        used = f"{spend.tokens} of {limit} tokens spent or reserved"
    period = "today (UTC)" if binding.endswith("_day") else "this month (UTC)"
    return refuse(OUT_OF_BUDGET, binding, f"You exceeded your current quota: {used} {period}; "
                  f"this request needs {wanted}.", period_end)
