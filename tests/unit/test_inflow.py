"""router.routing.inflow: each replica's prefill rate from the counter it publishes."""

import pytest

from router.routing.inflow import PrefillInflow


def test_the_rate_follows_the_counter_and_ignores_readings_too_close_together():
    inflow = PrefillInflow(time_constant_s=10.0)
    assert inflow.observe("r", 100.0, 50_000) == 0.0  # a first reading has no rate yet
    total = 50_000
    for i in range(1, 301):  # 60 s of 2 000 tokens/s, read every 0.2 s
        total += 400
        rate = inflow.observe("r", 100.0 + 0.2 * i, total)
    assert rate == pytest.approx(2_000, rel=0.01)
    assert inflow.observe("r", 160.1, total + 10_000) == rate  # 0.1 s after the last used reading


def test_a_replica_that_restarts_starts_over_and_replicas_are_separate():
    inflow = PrefillInflow(time_constant_s=1.0)
    inflow.observe("a", 0.0, 0)
    assert inflow.observe("a", 10.0, 10_000) == pytest.approx(1_000 * (1 - 2.718281828 ** -10), rel=1e-6)
    assert inflow.observe("b", 10.0, 5) == 0.0
    assert inflow.observe("a", 11.0, 3) == pytest.approx(1_000, rel=1e-3)  # the counter went back: a new base
    assert inflow.observe("a", 12.0, 3) < 1_000  # no prefill since: the rate decays
