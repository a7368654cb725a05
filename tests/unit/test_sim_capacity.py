"""bench.sim.capacity: the bisection finds the highest passing rate within its resolution."""

import pytest

from bench.sim.capacity import CapacityRun


@pytest.mark.parametrize("true_capacity", [0.3, 2.37, 5.9])
def test_bisection_finds_the_threshold(monkeypatch, true_capacity):
    tried = []

    def passes(self, rate):
        tried.append(rate)
        return rate <= true_capacity

    monkeypatch.setattr(CapacityRun, "passes", passes)
    found = CapacityRun(2, 6, "pow2", 1, low=0.25, high=6.0, resolution=0.1)()
    assert true_capacity - 0.1 <= found <= true_capacity
    assert len(tried) <= 8  # log2(5.75 / 0.1) + the check of `low`


def test_nothing_served_is_zero(monkeypatch):
    monkeypatch.setattr(CapacityRun, "passes", lambda self, rate: False)
    assert CapacityRun(2, 6, "pow2", 1)() == 0.0


def test_a_short_run_of_the_real_simulator_passes_a_light_load():
    run = CapacityRun(1, 1, "predicted", 3, duration_s=60.0)
    assert run.passes(0.3)
    assert not run.passes(40.0)
