"""The billing rules of every way a request ends, in one place (router/tenancy/settlement.py)."""

from decimal import Decimal

import pytest

from common.protocol import delta_event, end_event, error_event, start_event
from router.tenancy.pricing import Prices
from router.tenancy.quota import Grant, RateHeaders
from router.tenancy.settlement import Account, Ending, billed_usage
from router.tenancy.store import CANCELLED, COMPLETED, FAILED, RequestInfo

PRICES = Prices(input=Decimal("1"), output=Decimal("2"), reasoning=Decimal("2"))  # USD per million tokens
START = start_event(replica="r1", node_id="n1", pool="short", accelerator="L40S", prompt_tokens=100, max_tokens=50)


def account(prompt_tokens: int = 100) -> Account:
    info = RequestInfo("k1", "acme", client_request_id="c1", route="chat", model="m", pool="short")
    return Account(info, PRICES, Grant(50, 150, Decimal(0), None, RateHeaders()), prompt_tokens)


def delta(n: int) -> dict:
    return delta_event(content="x", completion_tokens=n, reasoning_tokens=min(n, 2))


def tokens(outcome) -> tuple[int, int, int]:
    return outcome.prompt_tokens, outcome.completion_tokens, outcome.reasoning_tokens


def test_completed_bills_prompt_and_completion():
    a = account()
    a.observe(START)
    a.observe(delta(3))
    a.observe(end_event(finish_reason="stop", prompt_tokens=98, completion_tokens=5, reasoning_tokens=2))
    outcome = a.close(Ending.COMPLETED)
    assert outcome.status == COMPLETED and tokens(outcome) == (98, 5, 2)  # the engine's prompt count wins
    assert outcome.cost_usd == Decimal("0.000108") and outcome.replica == "r1"


def test_client_leaving_after_start_bills_what_was_generated():
    a = account()
    a.observe(START)
    a.observe(delta(7))  # a whole answer being gathered: generated, not delivered
    outcome = a.close(Ending.CANCELLED)
    assert outcome.status == CANCELLED and tokens(outcome) == (100, 7, 2)


def test_client_leaving_before_any_engine_started_bills_nothing():
    a = account()
    outcome = a.close(Ending.NOT_STARTED, client_left=True)
    assert outcome.status == CANCELLED and tokens(outcome) == (0, 0, 0) and outcome.cost_usd == 0


def test_dispatch_failure_or_engine_refusal_bills_nothing():
    a = account()
    outcome = a.close(Ending.NOT_STARTED, error_event(status=400, message="too long")["message"])
    assert outcome.status == FAILED and tokens(outcome) == (0, 0, 0) and outcome.error == "too long"


def test_failure_of_a_whole_answer_bills_nothing_the_client_never_got():
    a = account()
    a.observe(START)
    a.observe(delta(9))
    outcome = a.close(Ending.FAILED, "replica failed")
    assert outcome.status == FAILED and tokens(outcome) == (0, 0, 0)


def test_failure_mid_stream_bills_what_was_delivered():
    a = account()
    a.observe(START)
    a.observe(delta(4), delivered=True)
    outcome = a.close(Ending.FAILED, "replica failed mid-stream")
    assert outcome.status == FAILED and tokens(outcome) == (100, 4, 2)


def test_the_first_ending_wins():
    a = account()
    a.observe(START)
    a.observe(end_event(finish_reason="stop", prompt_tokens=100, completion_tokens=5, reasoning_tokens=0))
    first = a.close(Ending.COMPLETED)
    assert a.close(Ending.CANCELLED) is None  # the client leaving after the last chunk changes nothing
    assert a.outcome is first and a.status == COMPLETED and a.billed == (100, 5, 0)


def test_error_is_truncated_for_the_ledger():
    assert len(account().close(Ending.NOT_STARTED, "e" * 2000).error) == 512


@pytest.mark.parametrize("ending, started, delivered, billed", [
    (Ending.COMPLETED, True, True, True),
    (Ending.CANCELLED, False, False, False),
    (Ending.CANCELLED, True, False, True),
    (Ending.FAILED, True, False, False),
    (Ending.FAILED, True, True, True),
    (Ending.NOT_STARTED, False, False, False),
])
def test_billing_rule_table(ending, started, delivered, billed):
    assert billed_usage(ending, started=started, delivered=delivered) is billed
