"""router.fairness.vtc: counters in GPU-seconds, charged and corrected, and VTC's lift."""

import pytest

from router.fairness.vtc import VirtualCounters


def test_charge_and_correct():
    c = VirtualCounters()
    c.charge("a", 2.0)
    c.correct("a", predicted_gpu_s=2.0, actual_gpu_s=5.0)
    assert c.counter("a") == pytest.approx(5.0)
    c.correct("a", predicted_gpu_s=3.0, actual_gpu_s=1.0)  # a shorter answer than predicted
    assert c.counter("a") == pytest.approx(3.0)


def test_lift_to_the_least_served_backlogged_tenant():
    c = VirtualCounters()
    c.charge("a", 100.0)
    c.charge("b", 40.0)
    assert c.lift("idle", ["a", "b"]) == 40.0  # cannot bank the time it was away
    assert c.counter("idle") == 40.0


def test_lift_never_lowers_a_counter():
    c = VirtualCounters()
    c.charge("a", 10.0)
    c.charge("heavy", 50.0)
    assert c.lift("heavy", ["a"]) == 50.0


def test_with_nobody_backlogged_the_lift_is_to_the_last_that_left():
    c = VirtualCounters()
    c.charge("a", 30.0)
    c.left("a")
    assert c.lift("b", []) == 30.0


def test_lifted_does_not_change_the_counter():
    c = VirtualCounters()
    c.charge("a", 7.0)
    assert c.lifted("b", ["a"]) == 7.0
    assert c.counter("b") == 0.0
