"""router.fairness.shedding: admit / queue / shed at arrival, the status and Retry-After; the
bounded wait per tier; router.fairness.dispatch_rate, the rate that turns queued work into a wait."""

import math

import pytest

from router.fairness.dispatch_rate import DispatchRate
from router.fairness.shedding import (
    OVERLOADED,
    TOO_MANY_REQUESTS,
    Action,
    WaitBounds,
    decide,
    expected_wait,
    over_fair_share,
    retry_after,
    shed_queued,
)
from router.fairness.tiers import Tier


def arrival(**kw):
    args = dict(meets_now=False, work_ahead_gpu_s=0.0, rate_gpu_s_per_s=10.0, allowed_wait_s=1.0, over_share=False)
    return decide(**(args | kw))


def test_admitted_when_a_replica_meets_it_and_nothing_is_ahead():
    assert arrival(meets_now=True).action is Action.ADMIT


def test_queued_when_a_replica_meets_it_but_work_is_ahead():
    # The retry dispatches it at once if what is ahead fits nowhere; never shed what could go now.
    d = arrival(meets_now=True, work_ahead_gpu_s=1000.0)
    assert d.action is Action.QUEUE


def test_queued_while_the_expected_wait_is_within_the_bound():
    d = arrival(work_ahead_gpu_s=9.0)  # 0.9 s at 10 GPU-s/s, 1 s allowed
    assert d.action is Action.QUEUE and d.expected_wait_s == pytest.approx(0.9)


def test_shed_with_503_when_the_fleet_is_overloaded():
    d = arrival(work_ahead_gpu_s=46.0)  # 4.6 s expected, 1 s allowed
    assert d.action is Action.SHED and d.shed
    assert d.status == OVERLOADED == 503
    assert d.retry_after_s == 4  # ceil(4.6 - 1.0): when the queue ahead should have shrunk to its bound


def test_shed_with_429_when_the_tenant_is_over_its_share():
    d = arrival(work_ahead_gpu_s=46.0, over_share=True)
    assert d.status == TOO_MANY_REQUESTS == 429 and d.retry_after_s == 4


@pytest.mark.parametrize("wait, allowed, cap, expected", [
    (1.2, 1.0, 60, 1),  # at least a second
    (10.0, 1.0, 60, 9),
    (500.0, 0.0, 60, 60),  # capped
    (math.inf, 1.0, 30, 30),  # no rate seen yet
])
def test_retry_after_is_whole_seconds_from_the_queue(wait, allowed, cap, expected):
    assert retry_after(wait, allowed, cap) == expected


def test_no_rate_with_work_ahead_is_an_unknown_wait_and_is_held_not_shed():
    """An ingress replica that has dispatched nothing yet has no rate to estimate a wait from (on a
    live cluster with 2 ingresses, the one the proxy had sent only chats shed a batch chat with
    Retry-After 60 while the fleet drained documents at 2/s). Held, its bounded wait decides."""
    assert expected_wait(5.0, 0.0) == math.inf
    assert expected_wait(0.0, 0.0) == 0.0
    d = arrival(work_ahead_gpu_s=5.0, rate_gpu_s_per_s=0.0)
    assert d.action is Action.QUEUE and d.expected_wait_s == math.inf
    # Past its bounded wait it is shed, told to come back after the longest Retry-After.
    d = shed_queued(work_ahead_gpu_s=5.0, rate_gpu_s_per_s=0.0, over_share=False)
    assert d.shed and d.retry_after_s == 60


def test_a_queued_request_past_its_bound_is_shed_with_retry_after_from_what_is_ahead():
    d = shed_queued(work_ahead_gpu_s=25.0, rate_gpu_s_per_s=10.0, over_share=False)
    assert d.shed and d.status == 503 and d.retry_after_s == 3


def test_over_fair_share():
    assert not over_fair_share(100.0, 100.0, 1)  # alone: the fleet is full, not the tenant's doing
    assert over_fair_share(90.0, 100.0, 2)
    assert not over_fair_share(10.0, 100.0, 2)
    assert not over_fair_share(0.0, 0.0, 3)


def test_bounded_wait_is_the_first_token_slack_plus_the_tiers_patience():
    bounds = WaitBounds()
    # A chat: 1.07 s objective, 0.1 s on an idle replica -> ~0.97 s of slack.
    assert bounds.allowed_wait(Tier.STANDARD, 1.07, 0.1) == pytest.approx(0.97)
    assert bounds.allowed_wait(Tier.INTERACTIVE, 1.07, 0.1) == pytest.approx(0.97)
    assert bounds.allowed_wait(Tier.BATCH, 1.07, 0.1) == pytest.approx(60.97)  # batch may wait longer
    assert bounds.allowed_wait(Tier.STANDARD, 1.0, 3.0) == 0.0  # no slack: no wait
    capped = WaitBounds(extra_s={Tier.BATCH: 600.0})
    assert capped.allowed_wait(Tier.BATCH, 1.0, 0.0) == 120.0  # never minutes of silence


def test_dispatch_rate_reads_a_constant_rate_also_early():
    rate = DispatchRate(window_s=30.0)
    for i in range(1, 101):  # 2 GPU-s every 0.5 s
        rate.record(2.0, i * 0.5)
        if i == 4:  # a plain decayed sum would read ~0.3 here (8 GPU-s over a 30 s window)
            assert 3.5 < rate.rate(i * 0.5) < 6.0
        if i in (20, 100):
            assert rate.rate(i * 0.5) == pytest.approx(4.0, rel=0.1)


def test_dispatch_rate_decays_after_dispatches_stop():
    rate = DispatchRate(window_s=10.0)
    for i in range(200):
        rate.record(1.0, i * 0.1)  # 10 GPU-s/s for 20 s
    busy = rate.rate(20.0)
    assert rate.rate(40.0) < busy * 0.2


def test_dispatch_rate_floor_before_anything_was_seen():
    assert DispatchRate(floor_gpu_s_per_s=3.0).rate(5.0) == 3.0
    assert DispatchRate().rate(5.0) == 0.0
    with pytest.raises(ValueError):
        DispatchRate(window_s=0.0)
