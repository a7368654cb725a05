"""router.fairness.headroom: the dispatch gate, and the reserve for a tenant over its share of the
work in flight while others are active; router.fairness.cost: the same GPU-seconds the predictor
prices, and the idle TTFT."""

import pytest

from common.engine_model import H100_TP1, L40S_TP2
from router.fairness.cost import gpu_seconds, idle_ttft_s
from router.fairness.headroom import Gate, Headroom, InFlight, gate_for
from router.routing.predict import Prediction, ReplicaView, RequestShape, predict


def prediction(ttft=0.5, tpot=0.5, fullness=0.5):
    return Prediction("r", 0.0, 0.0, 0.0, False, max(ttft, tpot), ttft_ratio=ttft, tpot_ratio=tpot, fullness=fullness)


def test_gate():
    gate = Gate(ttft_ratio=0.7, tpot_ratio=0.85, fullness=0.9)
    assert gate.passes(prediction())
    assert not gate.passes(prediction(ttft=0.75))
    assert not gate.passes(prediction(tpot=0.9))
    assert not gate.passes(prediction(fullness=0.95))


def test_a_lone_tenant_is_never_over_its_share():
    flight = InFlight(active_s=10.0)
    flight.seen("noisy", 0.0)
    flight.dispatched("noisy", 500.0)
    assert not flight.over_share("noisy", 1.0)
    assert gate_for(Headroom(), flight.over_share("noisy", 1.0)) == Headroom().gate


def test_the_tenant_holding_the_fleet_gets_the_reserve_while_another_is_active():
    flight = InFlight(active_s=10.0)
    for tenant, work in (("noisy", 500.0), ("quiet", 5.0)):
        flight.seen(tenant, 0.0)
        flight.dispatched(tenant, work)
    assert flight.over_share("noisy", 5.0) and not flight.over_share("quiet", 5.0)
    assert gate_for(Headroom(), True) == Headroom().reserve
    # The quiet tenant stopped sending: after active_s the band is the noisy one's again, even
    # while the quiet one's long answers still run.
    assert not flight.over_share("noisy", 10.5)


def test_finishing_releases_the_work_in_flight():
    flight = InFlight(active_s=10.0)
    flight.seen("a", 0.0)
    flight.seen("b", 0.0)
    flight.dispatched("a", 10.0)
    flight.dispatched("b", 1.0)
    assert flight.over_share("a", 1.0)
    flight.finished("a", 10.0)
    assert not flight.over_share("a", 1.0) and flight.total == pytest.approx(1.0)


def test_reserve_is_stricter_than_the_gate():
    h = Headroom()
    assert h.reserve.ttft_ratio < h.gate.ttft_ratio and h.reserve.tpot_ratio < h.gate.tpot_ratio
    assert h.reserve.fullness < h.gate.fullness


@pytest.mark.parametrize("profile", [H100_TP1, L40S_TP2])
@pytest.mark.parametrize("prompt, output", [(700, 900), (16_000, 2_500), (30_000, 10)])
def test_cost_is_what_the_predictor_prices_and_idle_ttft_what_it_predicts_on_an_idle_replica(profile, prompt, output):
    usd_per_hour = 3600.0  # so the prediction's usd is its GPU-seconds
    view = ReplicaView("r", "p", profile, usd_per_hour, 40_960)
    p = predict(view, RequestShape(prompt, output, 100.0, 1.0))
    assert gpu_seconds(profile, prompt, output) == pytest.approx(p.usd)
    assert idle_ttft_s(profile, prompt) == pytest.approx(p.ttft_s)


def test_a_slower_class_costs_more_gpu_seconds():
    assert gpu_seconds(L40S_TP2, 4000, 1000) > gpu_seconds(H100_TP1, 4000, 1000)
