"""router/tenancy/quota.py: the pure admission arithmetic (no store, no Ray).

Expectations are derived from the rules in the module's docstring (sliding 60 s windows, UTC
calendar periods, worst case = prompt + max_tokens at the dearer completion price, clamp an unset
max_tokens, refuse an explicit one), not copied from the implementation.
"""

import math
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from router.tenancy.pricing import Prices
from router.tenancy.quota import (OUT_OF_BUDGET, RATE_LIMITED, WINDOW_S, Ask, Grant, Limits, RateHeaders, Refusal,
                                  Spend, TenantState, day_key, decide, month_key)

UTC = timezone.utc
NOW = datetime(2026, 3, 14, 12, 0, 0, tzinfo=UTC)  # noon UTC: 12 h to the next UTC midnight
ZERO = Decimal(0)


def state(now=NOW, in_flight=0, window=(), day=Spend(), month=Spend()) -> TenantState:
    return TenantState(now=now, in_flight=in_flight, window=tuple(window), day=day, month=month)


def ago(seconds: float, tokens: int = 0, now=NOW) -> tuple[datetime, int]:
    return (now - timedelta(seconds=seconds), tokens)


def ask(prompt: int, max_tokens: int, clampable: bool = False, input_usd=ZERO, completion_usd=ZERO) -> Ask:
    return Ask(prompt, max_tokens, clampable, input_usd, completion_usd)


def priced_ask(prices: Prices, prompt: int, max_tokens: int, clampable: bool = False) -> Ask:
    """As the gate builds it: per-token prices, completion at the dearer of output and reasoning."""
    return Ask(prompt, max_tokens, clampable, prices.input / 1_000_000, prices.completion_max / 1_000_000)


def granted(decision) -> Grant:
    assert isinstance(decision, Grant), decision
    return decision


def refused(decision) -> Refusal:
    assert isinstance(decision, Refusal), decision
    return decision


def seconds_to_utc_midnight(t: datetime) -> float:
    t = t.astimezone(UTC)
    nxt = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (nxt - t).total_seconds()


# ---- no limits, keys, small types -----------------------------------------------------------

def test_no_limits_grants_what_was_asked_and_sends_no_rate_headers():
    g = granted(decide(Limits(), state(in_flight=10_000, window=[ago(1, 10**9)] * 50,
                                      day=Spend(10**12, Decimal(10**6))), ask(300, 700, clampable=True)))
    assert (g.max_tokens, g.tokens, g.clamped_from) == (700, 1_000, None)
    assert g.headers.as_headers() == {}


def test_grant_reserves_the_worst_case_price():
    prices = Prices(Decimal("0.5"), Decimal("1.5"), Decimal("4"))
    g = granted(decide(Limits(), state(), priced_ask(prices, 1_000, 2_000)))
    # every completion token at the dearer (reasoning) price: 1000*0.5 + 2000*4 per million
    assert g.usd == Decimal("0.0085")
    assert g.usd == prices.worst_case(1_000, 2_000)


def test_bounds_tokens_only_for_token_or_money_limits():
    assert not Limits().bounds_tokens
    assert not Limits(requests_per_minute=5, max_concurrent_requests=2).bounds_tokens
    for field in ("tokens_per_minute", "tokens_per_day", "tokens_per_month"):
        assert Limits(**{field: 1}).bounds_tokens, field
    for field in ("usd_per_day", "usd_per_month"):
        assert Limits(**{field: Decimal(1)}).bounds_tokens, field


def test_spend_adds_tokens_and_dollars_exactly():
    total = Spend(3, Decimal("0.1")) + Spend(4, Decimal("0.2"))
    assert total == Spend(7, Decimal("0.3"))


def test_day_and_month_keys_are_utc():
    plus_two = timezone(timedelta(hours=2))
    t = datetime(2026, 1, 1, 1, 30, tzinfo=plus_two)  # 2025-12-31 23:30 UTC
    assert day_key(t) == "2025-12-31"
    assert month_key(t) == "2025-12"
    minus_five = timezone(timedelta(hours=-5))
    t = datetime(2026, 2, 28, 20, 0, tzinfo=minus_five)  # 2026-03-01 01:00 UTC
    assert (day_key(t), month_key(t)) == ("2026-03-01", "2026-03")
    assert (day_key(NOW), month_key(NOW)) == ("2026-03-14", "2026-03")


# ---- concurrency -----------------------------------------------------------------------------

def test_concurrency_limit():
    limits = Limits(max_concurrent_requests=3)
    granted(decide(limits, state(in_flight=2), ask(10, 10)))
    r = refused(decide(limits, state(in_flight=3), ask(10, 10)))
    assert (r.code, r.limit) == (RATE_LIMITED, "max_concurrent_requests")
    assert r.retry_after_s >= 1
    r = refused(decide(limits, state(in_flight=7), ask(10, 10)))  # limit lowered below the load
    assert r.limit == "max_concurrent_requests"


# ---- requests per minute ---------------------------------------------------------------------

def test_rpm_sixth_request_is_refused_until_the_oldest_leaves_the_window():
    limits = Limits(requests_per_minute=5)
    window = [ago(50.5), ago(40), ago(30), ago(20), ago(10)]
    granted(decide(limits, state(window=window[1:]), ask(1, 1)))  # 4 in the window: the 5th fits
    r = refused(decide(limits, state(window=window), ask(1, 1)))
    assert (r.code, r.limit) == (RATE_LIMITED, "requests_per_minute")
    # the oldest was admitted 50.5 s ago: it leaves the window in 9.5 s, rounded up
    assert r.retry_after_s == 10
    assert r.headers.limit_requests == 5
    assert r.headers.remaining_requests == 0
    assert r.headers.as_headers()["x-ratelimit-remaining-requests"] == "0"


def test_rpm_retry_after_does_not_depend_on_window_order():
    limits = Limits(requests_per_minute=3)
    window = [ago(5), ago(42.25), ago(20)]
    for seed in range(5):
        shuffled = list(window)
        random.Random(seed).shuffle(shuffled)
        r = refused(decide(limits, state(window=shuffled), ask(1, 1)))
        assert r.retry_after_s == math.ceil(60 - 42.25)


def test_rpm_admissions_older_than_the_window_do_not_count():
    limits = Limits(requests_per_minute=2)
    old = [ago(60), ago(61), ago(3600)]  # exactly 60 s ago has left the window
    g = granted(decide(limits, state(window=old + [ago(59.9)]), ask(1, 1)))
    assert g.headers.remaining_requests == 0  # 2 - (one in the window) - (this one)


def test_rpm_over_a_lowered_limit_waits_until_enough_have_left():
    # 7 admissions in the window but the limit is now 5: one more fits only when 3 have left.
    limits = Limits(requests_per_minute=5)
    ages = [55, 50, 45, 30, 20, 10, 1]
    r = refused(decide(limits, state(window=[ago(a) for a in ages]), ask(1, 1)))
    third_to_leave = sorted(60 - a for a in ages)[2]
    assert r.retry_after_s == math.ceil(third_to_leave)
    # and indeed, that much later, it is admitted
    later = NOW + timedelta(seconds=r.retry_after_s)
    granted(decide(limits, state(now=later, window=[ago(a) for a in ages]), ask(1, 1)))


def test_rpm_request_exactly_at_the_limit_is_granted():
    limits = Limits(requests_per_minute=1)
    g = granted(decide(limits, state(), ask(1, 1)))
    assert g.headers.limit_requests == 1
    assert g.headers.remaining_requests == 0


def test_rpm_zero_refuses_every_request():
    r = refused(decide(Limits(requests_per_minute=0), state(), ask(1, 1)))
    assert (r.code, r.limit) == (RATE_LIMITED, "requests_per_minute")


# ---- tokens per minute -----------------------------------------------------------------------

def test_tpm_request_alone_over_the_limit_can_never_fit():
    limits = Limits(tokens_per_minute=1_000)
    r = refused(decide(limits, state(), ask(600, 500)))  # 1 100 > 1 000 even with an empty window
    assert (r.code, r.limit) == (RATE_LIMITED, "tokens_per_minute")
    assert "too large" in r.message.lower()
    assert r.retry_after_s >= 1
    # a prompt that alone exceeds tpm cannot be rescued by clamping either
    r = refused(decide(limits, state(), ask(1_000, 5_000, clampable=True)))
    assert r.limit == "tokens_per_minute" and "too large" in r.message.lower()


def test_tpm_retry_after_is_when_enough_tokens_have_left_the_window():
    limits = Limits(tokens_per_minute=1_000)
    window = [ago(50, 400), ago(30, 300), ago(10, 200)]  # 900 used
    # needs 400: once the 400 admitted 50 s ago leaves (in 10 s), 500 + 400 <= 1000
    r = refused(decide(limits, state(window=window), ask(100, 300)))
    assert (r.code, r.limit, r.retry_after_s) == (RATE_LIMITED, "tokens_per_minute", 10)
    assert "too large" not in r.message.lower()
    # needs 700: 500 + 700 > 1000 after the first leaves; 200 + 700 fits after the second (30 s)
    r = refused(decide(limits, state(window=window), ask(200, 500)))
    assert r.retry_after_s == 30
    # check by replaying the window that late
    later = NOW + timedelta(seconds=30)
    granted(decide(limits, state(now=later, window=window), ask(200, 500)))
    too_early = NOW + timedelta(seconds=29)
    refused(decide(limits, state(now=too_early, window=window), ask(200, 500)))


def test_tpm_clamps_an_unset_max_tokens_to_what_is_left():
    limits = Limits(tokens_per_minute=1_000)
    g = granted(decide(limits, state(window=[ago(5, 900)]), ask(50, 16_000, clampable=True)))
    assert (g.max_tokens, g.clamped_from, g.tokens) == (50, 16_000, 100)
    assert g.headers.remaining_tokens == 0


def test_tpm_exactly_at_the_limit_is_granted():
    limits = Limits(tokens_per_minute=1_000)
    g = granted(decide(limits, state(window=[ago(5, 400)]), ask(100, 500)))
    assert g.tokens == 600 and g.clamped_from is None
    assert g.headers.remaining_tokens == 0
    refused(decide(limits, state(window=[ago(5, 400)]), ask(100, 501)))


# ---- token budgets per UTC day and month -----------------------------------------------------

def test_day_budget_clamps_an_unset_max_tokens():
    limits = Limits(tokens_per_day=2_000)
    g = granted(decide(limits, state(), ask(100, 16_000, clampable=True)))
    assert (g.max_tokens, g.clamped_from, g.tokens) == (1_900, 16_000, 2_000)
    g = granted(decide(limits, state(day=Spend(500)), ask(100, 16_000, clampable=True)))
    assert g.max_tokens == 1_400


def test_unset_max_tokens_that_fits_is_not_clamped():
    g = granted(decide(Limits(tokens_per_day=2_000), state(), ask(100, 1_900, clampable=True)))
    assert (g.max_tokens, g.clamped_from) == (1_900, None)


def test_day_budget_refuses_an_explicit_max_tokens_that_does_not_fit():
    limits = Limits(tokens_per_day=2_000)
    r = refused(decide(limits, state(), ask(100, 1_901)))
    assert (r.code, r.limit) == (OUT_OF_BUDGET, "tokens_per_day")
    assert r.retry_after_s == seconds_to_utc_midnight(NOW) == 12 * 3600
    g = granted(decide(limits, state(), ask(100, 1_900)))  # exactly at the limit
    assert g.tokens == 2_000


def test_clampable_request_with_no_room_left_is_refused():
    limits = Limits(tokens_per_day=2_000)
    r = refused(decide(limits, state(day=Spend(1_900)), ask(100, 16_000, clampable=True)))
    assert (r.code, r.limit) == (OUT_OF_BUDGET, "tokens_per_day")
    g = granted(decide(limits, state(day=Spend(1_899)), ask(100, 16_000, clampable=True)))
    assert (g.max_tokens, g.tokens) == (1, 101)  # one completion token is still worth serving


def test_day_refusal_retry_after_runs_to_the_next_utc_midnight_whatever_the_clock_zone():
    limits = Limits(tokens_per_day=10)
    late = datetime(2026, 3, 14, 23, 59, 30, tzinfo=UTC)
    assert refused(decide(limits, state(now=late), ask(5, 10))).retry_after_s == 30
    nearly = datetime(2026, 3, 14, 23, 59, 59, 500_000, tzinfo=UTC)
    assert refused(decide(limits, state(now=nearly), ask(5, 10))).retry_after_s == 1
    # 03:00 at UTC+5 is 22:00 UTC: two hours to UTC midnight (not 21 h to local midnight)
    local = datetime(2026, 3, 15, 3, 0, tzinfo=timezone(timedelta(hours=5)))
    assert refused(decide(limits, state(now=local), ask(5, 10))).retry_after_s == 2 * 3600
    at_midnight = datetime(2026, 3, 15, tzinfo=UTC)
    assert refused(decide(limits, state(now=at_midnight), ask(5, 10))).retry_after_s == 24 * 3600


@pytest.mark.parametrize("now, expected", [
    (datetime(2026, 3, 14, 12, tzinfo=UTC), (datetime(2026, 4, 1, tzinfo=UTC) - datetime(2026, 3, 14, 12, tzinfo=UTC))),
    (datetime(2026, 12, 31, 23, tzinfo=UTC), timedelta(hours=1)),  # December rolls into next year
    (datetime(2028, 2, 28, 12, tzinfo=UTC), timedelta(days=1, hours=12)),  # leap February
    (datetime(2027, 2, 28, 12, tzinfo=UTC), timedelta(hours=12)),
    (datetime(2026, 4, 1, 1, tzinfo=timezone(timedelta(hours=3))), timedelta(hours=2)),  # 22:00 UTC on 31 March
])
def test_month_budget_refusal_retry_after_runs_to_the_next_utc_month(now, expected):
    r = refused(decide(Limits(tokens_per_month=100), state(now=now, month=Spend(100)), ask(1, 1)))
    assert (r.code, r.limit) == (OUT_OF_BUDGET, "tokens_per_month")
    assert r.retry_after_s == math.ceil(expected.total_seconds())


def test_the_tightest_limit_binds():
    limits = Limits(tokens_per_day=5_000, tokens_per_month=100_000)
    g = granted(decide(limits, state(day=Spend(1_000), month=Spend(99_000)), ask(100, 16_000, clampable=True)))
    assert g.max_tokens == 100_000 - 99_000 - 100  # month leaves 900, the day 3 900
    r = refused(decide(limits, state(day=Spend(1_000), month=Spend(99_000)), ask(100, 901)))
    assert (r.code, r.limit) == (OUT_OF_BUDGET, "tokens_per_month")


# ---- money budgets ---------------------------------------------------------------------------

def test_money_budget_clamps_at_the_dearer_completion_price():
    prices = Prices(input=Decimal("1"), output=Decimal("4"), reasoning=Decimal("10"))  # $ per million
    budget, spent, prompt = Decimal("1"), Decimal("0.5"), 1_000
    limits = Limits(usd_per_day=budget)
    g = granted(decide(limits, state(day=Spend(0, spent)), priced_ask(prices, prompt, 1_000_000, clampable=True)))
    assert g.clamped_from == 1_000_000
    assert g.usd == prices.worst_case(prompt, g.max_tokens)
    assert spent + g.usd <= budget  # the worst case fits ...
    assert spent + prices.worst_case(prompt, g.max_tokens + 1) > budget  # ... and is the most that does
    # priced at output only, more would have been allowed: the reasoning price was the one used
    assert spent + prices.cost(prompt, g.max_tokens + 1) <= budget
    assert g.max_tokens == 49_900  # $0.499 left after the prompt's $0.001, at $10 per million


def test_money_budget_uses_output_price_when_it_is_the_dearer():
    prices = Prices(input=Decimal("0.3"), output=Decimal("2.5"), reasoning=Decimal("0.1"))
    limits = Limits(usd_per_month=Decimal("0.01"))
    g = granted(decide(limits, state(), priced_ask(prices, 2_000, 10**6, clampable=True)))
    assert g.usd <= Decimal("0.01") < prices.worst_case(2_000, g.max_tokens + 1)
    assert g.usd == prices.worst_case(2_000, g.max_tokens)


def test_money_budget_refuses_an_explicit_max_tokens_that_does_not_fit():
    prices = Prices(Decimal("1"), Decimal("2"), Decimal("2"))
    limits = Limits(usd_per_day=Decimal("0.01"))  # 1000 prompt ($0.001) + 4500 completion ($0.009)
    g = granted(decide(limits, state(), priced_ask(prices, 1_000, 4_500)))
    assert g.usd == Decimal("0.01")  # exactly the budget: granted
    r = refused(decide(limits, state(), priced_ask(prices, 1_000, 4_501)))
    assert (r.code, r.limit) == (OUT_OF_BUDGET, "usd_per_day")
    assert r.retry_after_s == seconds_to_utc_midnight(NOW)
    r = refused(decide(Limits(usd_per_month=Decimal("0.01")), state(month=Spend(0, Decimal("0.005"))),
                       priced_ask(prices, 1_000, 4_500)))
    assert (r.code, r.limit) == (OUT_OF_BUDGET, "usd_per_month")


def test_money_budget_with_free_completions():
    free_output = Prices(Decimal("1"), ZERO, ZERO)
    limits = Limits(usd_per_day=Decimal("0.001"))
    g = granted(decide(limits, state(), priced_ask(free_output, 1_000, 30_000, clampable=True)))
    assert (g.max_tokens, g.clamped_from, g.usd) == (30_000, None, Decimal("0.001"))
    r = refused(decide(limits, state(), priced_ask(free_output, 1_001, 30_000, clampable=True)))
    assert (r.code, r.limit) == (OUT_OF_BUDGET, "usd_per_day")  # the prompt alone is over budget
    free = Prices(ZERO, ZERO, ZERO)
    g = granted(decide(Limits(usd_per_day=ZERO), state(), priced_ask(free, 10**6, 10**6)))
    assert g.usd == 0


def test_money_budget_already_overspent_refuses_even_a_one_token_answer():
    prices = Prices(Decimal("1"), Decimal("1"), Decimal("1"))
    limits = Limits(usd_per_day=Decimal("1"))
    r = refused(decide(limits, state(day=Spend(0, Decimal("1.2"))), priced_ask(prices, 1, 100, clampable=True)))
    assert (r.code, r.limit) == (OUT_OF_BUDGET, "usd_per_day")


# ---- rate headers ----------------------------------------------------------------------------

def test_grant_headers_count_this_request():
    limits = Limits(requests_per_minute=10, tokens_per_minute=10_000)
    window = [ago(45, 1_000), ago(30, 2_000), ago(12.5, 500)]
    g = granted(decide(limits, state(window=window), ask(300, 700)))
    h = g.headers
    assert (h.limit_requests, h.remaining_requests) == (10, 10 - 3 - 1)
    assert (h.limit_tokens, h.remaining_tokens) == (10_000, 10_000 - 3_500 - 1_000)
    assert h.reset_requests_s == pytest.approx(15.0)  # a request slot frees when the oldest leaves
    assert h.reset_tokens_s >= 60 - 12.5  # the window is not back to full before the newest leaves
    out = h.as_headers()
    assert out["x-ratelimit-limit-requests"] == "10"
    assert out["x-ratelimit-remaining-requests"] == "6"
    assert out["x-ratelimit-limit-tokens"] == "10000"
    assert out["x-ratelimit-remaining-tokens"] == "5500"
    assert out["x-ratelimit-reset-requests"] == "15.000s"
    assert set(out) == {f"x-ratelimit-{k}" for k in ("limit-requests", "remaining-requests", "reset-requests",
                                                      "limit-tokens", "remaining-tokens", "reset-tokens")}


def test_headers_only_for_the_limits_the_tenant_has():
    g = granted(decide(Limits(requests_per_minute=3, tokens_per_day=10_000), state(), ask(1, 1)))
    assert set(g.headers.as_headers()) == {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                                           "x-ratelimit-reset-requests"}
    g = granted(decide(Limits(tokens_per_minute=100), state(), ask(1, 1)))
    assert set(g.headers.as_headers()) == {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                                           "x-ratelimit-reset-tokens"}


def test_refusal_headers_do_not_count_the_refused_request():
    limits = Limits(requests_per_minute=10, tokens_per_minute=1_000)
    r = refused(decide(limits, state(window=[ago(20, 900)]), ask(100, 100)))
    assert (r.headers.remaining_requests, r.headers.remaining_tokens) == (9, 100)


def test_rate_headers_format():
    h = RateHeaders(limit_requests=5, remaining_requests=-2, reset_requests_s=1.23456,
                    limit_tokens=100, remaining_tokens=40, reset_tokens_s=-0.5)
    assert h.as_headers() == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",  # never negative (a lowered limit)
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",
        "x-ratelimit-reset-requests": "1.235s",
        "x-ratelimit-reset-tokens": "0.000s",
    }
    assert RateHeaders().as_headers() == {}


def test_reset_requests_after_a_grant_counts_the_request_just_admitted():
    g = granted(decide(Limits(requests_per_minute=1), state(), ask(1, 1)))
    assert g.headers.remaining_requests == 0
    # no request slot is free again until this one leaves the window
    assert g.headers.reset_requests_s == pytest.approx(WINDOW_S)


def test_reset_tokens_after_a_grant_counts_the_request_just_admitted():
    g = granted(decide(Limits(tokens_per_minute=1_000), state(), ask(100, 100)))
    assert g.headers.remaining_tokens == 800
    assert g.headers.reset_tokens_s == pytest.approx(WINDOW_S)


# ---- which limit a refusal names ---------------------------------------------------------------

def test_refusal_names_the_limit_that_keeps_refusing():
    limits = Limits(tokens_per_minute=1_000, tokens_per_day=10_000)
    window = [ago(55, 900)]  # leaves the window in 5 s
    day = Spend(9_500)  # 500 tokens left today
    a = ask(100, 600)  # 700 tokens: fits the minute window in 5 s, never fits today
    r = refused(decide(limits, state(window=window, day=day), a))
    retry_at = NOW + timedelta(seconds=r.retry_after_s)
    # Retrying when told must not meet a limit that was already failing at the first attempt.
    again = decide(limits, state(now=retry_at, window=window, day=day), a)
    assert isinstance(again, Grant) or again.limit == r.limit
    assert (r.code, r.limit) == (OUT_OF_BUDGET, "tokens_per_day")


# ---- property-style simulations ---------------------------------------------------------------

class Model:
    """What the store would hand decide: reservations count at their worst case until settled,
    then at their real usage; day and month totals belong to the period a request started in;
    the minute window holds every admission of the last 60 s."""

    def __init__(self):
        self.records: list[dict] = []  # in start order; used/used_usd None while in flight
        self.in_flight = 0
        self.periods: dict[str, Spend] = {}  # UTC day or month key -> tokens and dollars charged

    def admit(self, record: dict) -> None:
        record["used"] = record["used_usd"] = None
        self.records.append(record)
        self.in_flight += 1
        for key in (day_key(record["started"]), month_key(record["started"])):
            self.periods[key] = self.periods.get(key, Spend()) + Spend(record["tokens"], record["usd"])

    def settle(self, record: dict, tokens: int, usd: Decimal) -> None:
        record["used"], record["used_usd"] = tokens, usd
        self.in_flight -= 1
        for key in (day_key(record["started"]), month_key(record["started"])):
            self.periods[key] = self.periods[key] + Spend(tokens - record["tokens"], usd - record["usd"])

    def state(self, now: datetime) -> TenantState:
        window = []
        for r in reversed(self.records):
            if (now - r["started"]).total_seconds() >= WINDOW_S:
                break
            window.append((r["started"], r["tokens"] if r["used"] is None else r["used"]))
        return TenantState(now=now, in_flight=self.in_flight, window=tuple(window),
                           day=self.periods.get(day_key(now), Spend()),
                           month=self.periods.get(month_key(now), Spend()))


def violated(limits: Limits, st: TenantState, a: Ask, completion: int) -> set[str]:
    """The limits that `a` with `completion` tokens would break, computed from first principles."""
    tokens = a.prompt_tokens + completion
    usd = a.prompt_tokens * a.input_usd_per_token + completion * a.completion_usd_per_token
    live = [(at, t) for at, t in st.window if (st.now - at).total_seconds() < WINDOW_S]
    out = set()
    if limits.max_concurrent_requests is not None and st.in_flight + 1 > limits.max_concurrent_requests:
        out.add("max_concurrent_requests")
    if limits.requests_per_minute is not None and len(live) + 1 > limits.requests_per_minute:
        out.add("requests_per_minute")
    if limits.tokens_per_minute is not None and sum(t for _, t in live) + tokens > limits.tokens_per_minute:
        out.add("tokens_per_minute")
    if limits.tokens_per_day is not None and st.day.tokens + tokens > limits.tokens_per_day:
        out.add("tokens_per_day")
    if limits.tokens_per_month is not None and st.month.tokens + tokens > limits.tokens_per_month:
        out.add("tokens_per_month")
    if limits.usd_per_day is not None and st.day.usd + usd > limits.usd_per_day:
        out.add("usd_per_day")
    if limits.usd_per_month is not None and st.month.usd + usd > limits.usd_per_month:
        out.add("usd_per_month")
    return out


PRICE_SET = [Prices(Decimal("0.5"), Decimal("1.5"), Decimal("1.5")),
             Prices(Decimal("0.99"), Decimal("1.98"), Decimal("3.5")),
             Prices(Decimal("0.4"), Decimal("1.2"), Decimal("0.6")),
             Prices(Decimal("0.000001"), Decimal("12.345678"), Decimal("0"))]


def simulate(seed: int, limits: Limits, start: datetime, steps: int, full_usage: bool):
    """Sequential reserve/settle against the model; checks every decision as it is made."""
    rng = random.Random(seed)
    model, now = Model(), start
    grants: list[tuple[datetime, Grant]] = []
    stats = {"grant": 0, "clamp": 0}
    for _ in range(steps):
        now += timedelta(milliseconds=rng.randint(0, 6_000))
        if model.in_flight and rng.random() < 0.45:
            r = rng.choice([r for r in model.records[-20:] if r["used"] is None]
                           or [r for r in model.records if r["used"] is None])
            if full_usage:
                model.settle(r, r["tokens"], r["usd"])
            else:
                completion = rng.randint(0, r["max_tokens"])
                cost = r["prices"].cost(r["prompt"], completion, rng.randint(0, completion))
                assert cost <= r["usd"]
                model.settle(r, r["prompt"] + completion, cost)
            continue
        prices = rng.choice(PRICE_SET)
        a = priced_ask(prices, rng.randint(1, 900), rng.choice([rng.randint(1, 400), rng.randint(1, 4_000)]),
                       clampable=rng.random() < 0.5)
        st = model.state(now)
        d = decide(limits, st, a)
        if isinstance(d, Grant):
            stats["grant"] += 1
            assert 1 <= d.max_tokens <= a.max_tokens
            assert d.tokens == a.prompt_tokens + d.max_tokens
            assert d.usd == prices.worst_case(a.prompt_tokens, d.max_tokens)
            assert not violated(limits, st, a, d.max_tokens), "a grant broke a limit"
            if d.max_tokens < a.max_tokens:
                stats["clamp"] += 1
                assert a.clampable and d.clamped_from == a.max_tokens
                assert violated(limits, st, a, d.max_tokens + 1), "clamped more than needed"
            else:
                assert d.clamped_from is None
            model.admit({"started": now, "prompt": a.prompt_tokens, "max_tokens": d.max_tokens,
                         "tokens": d.tokens, "usd": d.usd, "prices": prices})
            grants.append((now, d))
        else:
            stats[d.limit] = stats.get(d.limit, 0) + 1
            broken = violated(limits, st, a, 1 if a.clampable else a.max_tokens)
            assert broken, "refused a request that fits every limit"
            assert d.limit in broken, (d.limit, broken)
            budget = d.limit.endswith(("_day", "_month"))
            assert d.code == (OUT_OF_BUDGET if budget else RATE_LIMITED)
            assert d.retry_after_s >= 1
            later = now + timedelta(seconds=d.retry_after_s)
            if d.limit == "requests_per_minute":
                # when told to retry, a slot is free (no other admission in between)
                assert "requests_per_minute" not in violated(limits, replace_now(st, later), a, 1)
            elif d.limit == "tokens_per_minute" and "too large" not in d.message.lower():
                need = 1 if a.clampable else a.max_tokens
                assert "tokens_per_minute" not in violated(limits, replace_now(st, later), a, need)
            elif d.limit.endswith("_day"):
                assert day_key(later) != day_key(now)
                assert day_key(later - timedelta(seconds=1)) == day_key(now)
            elif d.limit.endswith("_month"):
                assert month_key(later) != month_key(now)
                assert month_key(later - timedelta(seconds=1)) == month_key(now)
    return model, grants, stats


def replace_now(st: TenantState, now: datetime) -> TenantState:
    return TenantState(now=now, in_flight=st.in_flight, window=st.window, day=st.day, month=st.month)


def sliding_windows(grants: list[tuple[datetime, Grant]]):
    """For each grant, the grants (itself included) admitted in the 60 s up to it."""
    first = 0
    for i, (at, _) in enumerate(grants):
        while at - grants[first][0] >= timedelta(seconds=WINDOW_S):
            first += 1
        yield grants[first:i + 1]


SIM_LIMITS = Limits(requests_per_minute=7, tokens_per_minute=9_000, max_concurrent_requests=4,
                    tokens_per_day=60_000, tokens_per_month=150_000,
                    usd_per_day=Decimal("0.2"), usd_per_month=Decimal("0.5"))
SIM_START = datetime(2026, 1, 31, 23, 45, tzinfo=UTC)  # crosses a UTC midnight and a month end


@pytest.mark.parametrize("seed", range(4))
def test_simulation_with_full_usage_never_grants_past_the_limits(seed):
    limits = Limits(requests_per_minute=7, tokens_per_minute=9_000, tokens_per_day=40_000,
                    max_concurrent_requests=5)
    _, grants, stats = simulate(seed, limits, SIM_START, 700, full_usage=True)
    per_day: dict[str, int] = {}
    for at, g in grants:
        per_day[day_key(at)] = per_day.get(day_key(at), 0) + g.tokens
    for in_window in sliding_windows(grants):
        assert len(in_window) <= limits.requests_per_minute
        assert sum(g.tokens for _, g in in_window) <= limits.tokens_per_minute
    assert len(per_day) >= 2, "the run should cross a UTC midnight"
    assert all(total <= limits.tokens_per_day for total in per_day.values()), per_day
    # the run exercised both outcomes, clamping and each limit
    assert stats["grant"] > 50 and stats["clamp"] > 0
    for name in ("requests_per_minute", "tokens_per_day", "tokens_per_minute"):
        assert stats.get(name, 0) > 0, (name, stats)


@pytest.mark.parametrize("seed", range(4))
def test_simulation_with_partial_usage_keeps_every_period_within_budget(seed):
    model, grants, stats = simulate(100 + seed, SIM_LIMITS, SIM_START, 700, full_usage=False)
    # every period's spend (settled usage plus the worst case of what is still in flight)
    for key in (day_key, month_key):
        periods: dict[str, Spend] = {}
        for r in model.records:
            tokens = r["tokens"] if r["used"] is None else r["used"]
            usd = r["usd"] if r["used_usd"] is None else r["used_usd"]
            periods[key(r["started"])] = periods.get(key(r["started"]), Spend()) + Spend(tokens, usd)
        limit_tokens = SIM_LIMITS.tokens_per_day if key is day_key else SIM_LIMITS.tokens_per_month
        limit_usd = SIM_LIMITS.usd_per_day if key is day_key else SIM_LIMITS.usd_per_month
        assert len(periods) >= 2
        for spend in periods.values():
            assert spend.tokens <= limit_tokens and spend.usd <= limit_usd
    for in_window in sliding_windows(grants):
        assert len(in_window) <= SIM_LIMITS.requests_per_minute
    assert stats["grant"] > 50
    assert sum(stats.get(name, 0) for name in ("requests_per_minute", "max_concurrent_requests",
                                               "tokens_per_minute")) > 0
