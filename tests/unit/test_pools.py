import pytest

from router.context_cap import ContextLengthExceeded
from router.routing.pools import ALL_SATURATED, PREFERRED, SPILLED, PoolLimits, allowed_pools, choose_pool

CAP = 40_960
SHORT = PoolLimits("short", max_model_len=16_384, max_prompt_tokens=8_192, spill_at_outstanding_tokens=1_000)
LONG = PoolLimits("long", max_model_len=40_960, max_prompt_tokens=40_959, spill_at_outstanding_tokens=5_000)
POOLS = [SHORT, LONG]


def pick(prompt, max_tokens=None, load=None, pools=POOLS):
    return choose_pool(prompt, max_tokens, pools, load or {}, CAP).pool.name


def test_short_prompt_goes_to_cheapest_pool():
    assert pick(100) == "short"


def test_prompt_over_short_pool_limit_goes_to_long():
    assert pick(8_192) == "short"
    assert pick(8_193) == "long"


def test_completion_that_short_pool_cannot_hold_goes_to_long():
    assert pick(100, 16_284) == "short"
    assert pick(100, 16_285) == "long"


def test_saturated_preferred_pool_spills_to_larger_pool():
    choice = choose_pool(100, 50, POOLS, {"short": 1_000}, CAP)
    assert choice.pool.name == "long"
    assert "spilled" in choice.reason and "short saturated" in choice.reason
    assert choice.kind == SPILLED


def test_never_spills_to_a_pool_that_cannot_hold_the_context():
    big = PoolLimits("big", max_model_len=40_960, max_prompt_tokens=40_959, spill_at_outstanding_tokens=10)
    small = PoolLimits("small", max_model_len=8_192, max_prompt_tokens=4_096, spill_at_outstanding_tokens=10**9)
    # only 'big' holds a 20k prompt; saturated, it still takes it rather than 'small'
    assert pick(20_000, load={"big": 10**6}, pools=[big, small]) == "big"


def test_all_saturated_queues_at_preferred_pool():
    choice = choose_pool(100, None, POOLS, {"short": 10**6, "long": 10**6}, CAP)
    assert (choice.pool.name, choice.kind) == ("short", ALL_SATURATED)


def test_unsaturated_preferred_pool_is_labelled_preferred():
    assert choose_pool(100, None, POOLS, {"short": 999}, CAP).kind == PREFERRED


def test_no_pool_holds_the_request():
    with pytest.raises(ContextLengthExceeded):
        pick(20_000, pools=[SHORT])


def test_candidates_are_listed_cheapest_first():
    assert choose_pool(100, None, POOLS, {}, CAP).candidates == ("short", "long")


def test_a_tenant_sees_only_its_pools_in_config_order():
    assert allowed_pools(POOLS, lambda name: True) == [SHORT, LONG]
    assert allowed_pools(POOLS, lambda name: name == "long") == [LONG]
    assert allowed_pools(POOLS, lambda name: False) == []
