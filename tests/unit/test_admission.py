import random

import pytest

from router.admission import admit, bound_decides, needs_exact_count
from router.context_cap import ContextLengthExceeded, OverflowPolicy
from router.routing.pools import PoolLimits
from common.tokens import chat_upper_bound
from tests.conftest import user_prompt_with_tokens

CAP = 40_960
POOLS = [
    PoolLimits("short", max_model_len=16_384, max_prompt_tokens=8_192, spill_at_outstanding_tokens=10**9),
    PoolLimits("long", max_model_len=40_960, max_prompt_tokens=40_959, spill_at_outstanding_tokens=10**9),
]


def never_count() -> int:
    raise AssertionError("exact count was not needed")


def run(bound, count, max_tokens=None, policy=OverflowPolicy.CLAMP):
    return admit(upper_bound=bound, count_exact=count, max_tokens=max_tokens, pools=POOLS,
                 outstanding_tokens={}, cap=CAP, policy=policy)


def test_small_prompt_skips_exact_count():
    adm = run(500, never_count, max_tokens=100)
    assert (adm.pool, adm.prompt_tokens, adm.max_tokens, adm.context_limit) == ("short", None, 100, 16_384)


def test_bound_near_a_pool_threshold_needs_exact_count():
    adm = run(9_000, lambda: 2_000)
    assert (adm.pool, adm.prompt_tokens) == ("short", 2_000)
    assert adm.max_tokens == 16_384 - 2_000  # missing max_tokens: what is left of the pool's limit


def test_counted_prompt_over_short_limit_goes_long_with_rest_of_cap():
    adm = run(80_000, lambda: 20_000)
    assert (adm.pool, adm.max_tokens) == ("long", CAP - 20_000)


def test_clamp_and_strict():
    adm = run(200_000, lambda: 30_000, max_tokens=20_000)
    assert (adm.pool, adm.max_tokens, adm.clamped_from) == ("long", 10_960, 20_000)
    with pytest.raises(ContextLengthExceeded):
        run(200_000, lambda: 30_000, max_tokens=20_000, policy=OverflowPolicy.STRICT)


def test_no_bound_always_counts():
    adm = run(None, lambda: 100)
    assert (adm.pool, adm.prompt_tokens, adm.max_tokens) == ("short", 100, 16_384 - 100)


def test_clamp_aims_at_the_largest_pool_when_none_reaches_the_cap():
    small = [PoolLimits("only", max_model_len=16_384, max_prompt_tokens=16_383, spill_at_outstanding_tokens=10**9)]
    adm = admit(upper_bound=None, count_exact=lambda: 1_000, max_tokens=CAP, pools=small,
                outstanding_tokens={}, cap=CAP, policy=OverflowPolicy.CLAMP)
    assert (adm.pool, adm.max_tokens, adm.clamped_from) == ("only", 16_384 - 1_000, CAP)
    with pytest.raises(ContextLengthExceeded) as err:
        admit(upper_bound=None, count_exact=lambda: 16_384, max_tokens=None, pools=small,
              outstanding_tokens={}, cap=CAP, policy=OverflowPolicy.CLAMP)
    assert "16384" in str(err.value)


def test_prompt_at_cap_is_refused():
    with pytest.raises(ContextLengthExceeded):
        run(10**6, lambda: CAP)


def test_bound_decides_only_when_every_count_below_it_decides_alike():
    assert bound_decides(8_000, None, POOLS, CAP)
    assert not bound_decides(8_193, None, POOLS, CAP)  # short pool might refuse it
    assert not bound_decides(100, 16_300, POOLS, CAP)  # completion might not fit short
    assert not bound_decides(100, CAP, POOLS, CAP)  # might need clamping


def test_skipped_count_gives_the_same_decision_as_the_exact_count(counter):
    rng = random.Random(7)
    words = ["hello", "Bonjour", "数据", "🙂", "  ", "\n", "x" * 40, "naïve"]
    for _ in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3_000)))
        messages = [{"role": "user", "content": text}]
        max_tokens = rng.choice([None, 1, 500, 8_000, 16_000, 40_000])
        exact = counter.count_chat(messages)
        bound = chat_upper_bound(messages)
        fast = run(bound, lambda: exact, max_tokens)
        slow = run(10**9, lambda: exact, max_tokens)  # a bound that never decides: always counts
        assert fast.pool == slow.pool
        granted = fast.max_tokens if fast.max_tokens is not None else fast.context_limit - exact
        assert granted == slow.max_tokens


def test_twenty_thousand_token_prompt_goes_long(counter):
    messages = user_prompt_with_tokens(counter, 20_000)
    adm = run(chat_upper_bound(messages), lambda: counter.count_chat(messages))
    assert (adm.pool, adm.prompt_tokens) == ("long", 20_000)


def test_the_worst_case_reserved_is_max_tokens_or_what_the_pool_leaves():
    assert run(500, never_count, max_tokens=100).worst_case_completion() == 100
    left = run(500, never_count)  # max_tokens left out: the pool's context after the prompt bound
    assert left.worst_case_completion() == 16_384 - 500
    counted = run(None, lambda: 9_000)  # too long for short: the long pool's context after the exact count
    assert counted.worst_case_completion() == 40_960 - 9_000


def test_an_exact_count_is_forced_only_when_a_token_limit_may_clamp_max_tokens():
    assert needs_exact_count(None, tenant_bounds_tokens=True)
    assert not needs_exact_count(100, tenant_bounds_tokens=True)  # the client fixed max_tokens
    assert not needs_exact_count(None, tenant_bounds_tokens=False)  # nothing to clamp to


def test_the_admission_records_the_pool_load_its_choice_saw():
    adm = admit(upper_bound=500, count_exact=never_count, max_tokens=100, pools=POOLS,
                outstanding_tokens={"short": 7}, cap=CAP, policy=OverflowPolicy.CLAMP)
    assert adm.pool_load == {"short": 7}
