import pytest

from router.context_cap import ContextLengthExceeded, OverflowPolicy, apply_cap

CAP = 40_960


def test_prompt_that_fills_the_cap_is_refused_with_real_counts():
    with pytest.raises(ContextLengthExceeded) as err:
        apply_cap(CAP, None, CAP, OverflowPolicy.CLAMP)
    assert "40960" in str(err.value) and err.value.prompt_tokens == CAP


def test_prompt_one_below_cap_leaves_one_token():
    assert apply_cap(CAP - 1, None, CAP, OverflowPolicy.CLAMP).max_tokens is None
    assert apply_cap(CAP - 1, 1, CAP, OverflowPolicy.STRICT).max_tokens == 1


def test_request_that_fits_is_unchanged():
    budget = apply_cap(1000, 500, CAP, OverflowPolicy.STRICT)
    assert (budget.max_tokens, budget.clamped_from) == (500, None)


def test_clamp_shrinks_max_tokens_to_what_is_left():
    budget = apply_cap(30_000, 20_000, CAP, OverflowPolicy.CLAMP)
    assert budget.max_tokens == CAP - 30_000
    assert budget.clamped_from == 20_000


def test_strict_refuses_overflow_with_both_counts():
    with pytest.raises(ContextLengthExceeded) as err:
        apply_cap(30_000, 20_000, CAP, OverflowPolicy.STRICT)
    assert "30000" in str(err.value) and "20000" in str(err.value) and "50000" in str(err.value)
