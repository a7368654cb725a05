"""router/tenancy/pricing.py: exact Decimal prices, tiers, and picodollar conversions.

Expected costs are computed independently with fractions.Fraction from the rule "dollars per
million tokens; completion tokens that were reasoning at the reasoning price, the rest at output".
"""

import random
from decimal import Decimal
from fractions import Fraction

import pytest
from pydantic import ValidationError

from router.tenancy.pricing import PICO, PriceTable, Prices, from_pico, to_pico, usd_text

D = Decimal


def exact_cost(input_price, output_price, reasoning_price, prompt, completion, reasoning) -> Fraction:
    reasoning = min(reasoning, completion)
    return (Fraction(str(input_price)) * prompt + Fraction(str(output_price)) * (completion - reasoning)
            + Fraction(str(reasoning_price)) * reasoning) / 1_000_000


def as_fraction(d: Decimal) -> Fraction:
    return Fraction(str(d))


def table(**tiers) -> dict:
    return {"tiers": tiers}


# ---- Prices ----------------------------------------------------------------------------------

def test_cost_splits_completion_into_output_and_reasoning():
    p = Prices(D("0.15"), D("0.6"), D("2.5"))
    # 1000 prompt at 0.15, 300 plain completion at 0.6, 200 reasoning at 2.5, per million
    assert p.cost(1_000, 500, 200) == D("0.00083")
    assert p.cost(1_000, 500) == D("0.00045")  # no reasoning: every completion token at output
    assert p.cost(0, 0) == 0


def test_reasoning_count_is_capped_by_completion_count():
    p = Prices(D("1"), D("2"), D("7"))
    assert p.cost(0, 10, 50) == p.cost(0, 10, 10) == D("0.00007")


def test_cost_is_exact_for_random_prices_and_counts():
    rng = random.Random(7)
    for _ in range(500):
        prices = [D(rng.randint(0, 100_000_000)).scaleb(-rng.randint(0, 6)) for _ in range(3)]
        p = Prices(*prices)
        prompt, completion = rng.randint(0, 200_000), rng.randint(0, 200_000)
        reasoning = rng.randint(0, completion + 100)
        cost = p.cost(prompt, completion, reasoning)
        assert as_fraction(cost) == exact_cost(*prices, prompt, completion, reasoning)
        # a price with at most 6 decimals per million tokens: every cost is whole picodollars
        assert from_pico(to_pico(cost)) == cost
        worst = p.worst_case(prompt, completion)
        assert worst >= cost
        assert worst == max(p.cost(prompt, completion, 0), p.cost(prompt, completion, completion))


def test_worst_case_prices_every_completion_token_at_the_dearer_price():
    reasoning_dearer = Prices(D("1"), D("2"), D("5"))
    assert reasoning_dearer.completion_max == D("5")
    assert reasoning_dearer.worst_case(1_000, 2_000) == D("0.011")  # (1000*1 + 2000*5) / 1e6
    output_dearer = Prices(D("1"), D("3"), D("0.5"))
    assert output_dearer.completion_max == D("3")
    assert output_dearer.worst_case(1_000, 2_000) == D("0.007")
    for reasoning in (0, 1, 999, 2_000):
        assert reasoning_dearer.cost(1_000, 2_000, reasoning) <= reasoning_dearer.worst_case(1_000, 2_000)
        assert output_dearer.cost(1_000, 2_000, reasoning) <= output_dearer.worst_case(1_000, 2_000)


# ---- PriceTable --------------------------------------------------------------------------------

def test_reasoning_price_defaults_to_output():
    t = PriceTable.from_dict(table(standard={"short": {"input": "0.5", "output": "1.5"},
                                             "long": {"input": 1, "output": 2, "reasoning": 3}}))
    assert t.prices(None, "short") == Prices(D("0.5"), D("1.5"), D("1.5"))
    assert t.prices(None, "long") == Prices(D(1), D(2), D(3))
    assert t.default_tier == "standard"


def test_a_tier_missing_a_pool_falls_back_to_the_default_tier():
    t = PriceTable.from_dict(table(
        standard={"short": {"input": "0.5", "output": "1.5"}, "long": {"input": "0.99", "output": "1.98"}},
        enterprise={"long": {"input": "0.792", "output": "1.584"}}))
    assert t.prices("enterprise", "long") == Prices(D("0.792"), D("1.584"), D("1.584"))
    assert t.prices("enterprise", "short") == t.prices("standard", "short") == Prices(D("0.5"), D("1.5"), D("1.5"))
    assert t.prices(None, "long") == Prices(D("0.99"), D("1.98"), D("1.98"))
    assert t.prices("no-such-tier", "long") == t.prices("standard", "long")
    with pytest.raises(KeyError):
        t.prices("enterprise", "nowhere")  # priced nowhere, not even in the default tier


def test_named_default_tier():
    t = PriceTable.from_dict({"default_tier": "basic", "tiers": {
        "basic": {"p": {"input": 1, "output": 1}}, "gold": {"p": {"input": 2, "output": 2}}}})
    assert t.default_tier == "basic"
    assert t.prices(None, "p").input == 1
    assert t.prices("gold", "p").input == 2
    with pytest.raises(ValueError, match="default_tier"):
        PriceTable.from_dict({"default_tier": "platinum", "tiers": {"basic": {"p": {"input": 1, "output": 1}}}})
    with pytest.raises(ValueError, match="default_tier"):
        PriceTable.from_dict(table(gold={"p": {"input": 1, "output": 1}}))  # default 'standard' is absent


def test_check_covers_needs_every_pool_in_the_default_tier():
    t = PriceTable.from_dict(table(standard={"short": {"input": 1, "output": 1}},
                                   enterprise={"long": {"input": 1, "output": 1}}))
    t.check_covers(["short"])
    t.check_covers([])
    with pytest.raises(ValueError) as info:
        t.check_covers(["short", "long", "cpu"])  # 'long' priced only in a non-default tier
    assert "long" in str(info.value) and "cpu" in str(info.value) and "'short'" not in str(info.value)


@pytest.mark.parametrize("value", ["0.000001", "1.123456", "12", 0.15, 3, "1E+2", "0.100000"])
def test_six_decimal_places_are_accepted(value):
    t = PriceTable.from_dict(table(standard={"p": {"input": value, "output": 0}}))
    assert t.prices(None, "p").input == D(str(value))


def test_yaml_float_prices_are_taken_as_written_not_as_binary_fractions():
    t = PriceTable.from_dict(table(standard={"p": {"input": 0.1, "output": 0.7}}))
    assert t.prices(None, "p").input == D("0.1")
    assert t.prices(None, "p").cost(10, 10) == D("0.000008")


@pytest.mark.parametrize("field", ["input", "output", "reasoning"])
@pytest.mark.parametrize("value", ["0.0000001", "1.1234567", 1e-7])
def test_more_than_six_decimal_places_are_refused(field, value):
    price = {"input": 1, "output": 1, field: value}
    with pytest.raises(ValidationError, match="6 decimal places"):
        PriceTable.from_dict(table(standard={"p": price}))


@pytest.mark.parametrize("data", [
    None,
    {},
    {"tiers": {}},  # at least one tier
    {"currency": "EUR", "tiers": {"standard": {"p": {"input": 1, "output": 1}}}},
    {"tiers": {"standard": {"p": {"input": 1, "output": 1}}}, "discount": 5},  # unknown field
    {"tiers": {"standard": {"p": {"input": 1, "output": 1, "cached_input": 0.1}}}},
    {"tiers": {"standard": {"p": {"input": -1, "output": 1}}}},
    {"tiers": {"standard": {"p": {"input": 1, "output": 1, "reasoning": -0.5}}}},
    {"tiers": {"standard": {"p": {"input": 1}}}},  # output is required
    {"tiers": {"standard": {"p": {"input": "nan", "output": 1}}}},
    {"tiers": {"standard": {"p": {"input": "Infinity", "output": 1}}}},
    {"tiers": {"standard": {"p": {"input": "cheap", "output": 1}}}},
])
def test_bad_price_files_are_refused(data):
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        PriceTable.from_dict(data)


def test_usd_currency_is_accepted_explicitly():
    t = PriceTable.from_dict({"currency": "USD", "tiers": {"standard": {"p": {"input": 1, "output": 2}}}})
    assert t.prices(None, "p").output == 2


# ---- text and picodollars --------------------------------------------------------------------

@pytest.mark.parametrize("amount, text", [
    (D("0.000123"), "0.000123"),
    (D("0"), "0"),
    (D("0E-12"), "0"),
    (D("100"), "100"),  # not 1E+2
    (D("100.000000000000"), "100"),
    (D("1.50"), "1.5"),
    (D("0.000000000001"), "0.000000000001"),  # one picodollar, not 1E-12
    (D("1E-9"), "0.000000001"),
    (D("12345678.9"), "12345678.9"),
])
def test_usd_text_is_plain_decimal(amount, text):
    assert usd_text(amount) == text


def test_usd_text_of_costs_never_has_an_exponent_or_trailing_zero():
    rng = random.Random(3)
    for _ in range(300):
        p = Prices(D(rng.randint(0, 10**8)).scaleb(-6), D(rng.randint(0, 10**8)).scaleb(-6), D(0))
        cost = p.cost(rng.randint(0, 10**5), rng.randint(0, 10**5))
        text = usd_text(cost)
        assert "E" not in text.upper()
        assert D(text) == cost
        assert text == "0" or not ("." in text and text.endswith("0"))


def test_to_and_from_pico():
    assert to_pico(D("0.000000000001")) == 1
    assert to_pico(D("1")) == 10**12
    assert to_pico(D("0")) == 0
    assert to_pico(D("123.456789012345")) == 123_456_789_012_345
    assert isinstance(to_pico(D("1.5")), int)
    assert from_pico(1) == D("0.000000000001") == PICO
    assert from_pico(10**12) == 1
    for pico in (0, 1, 7, 999_999_999_999, 10**15 + 3, -42):
        assert to_pico(from_pico(pico)) == pico


def test_to_pico_refuses_fractions_of_a_picodollar():
    with pytest.raises(ValueError):
        to_pico(D("0.0000000000001"))
    with pytest.raises(ValueError):
        to_pico(D("1.0000000000005"))
