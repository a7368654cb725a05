import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from common.config import AppConfig, Objectives, PoolConfig


def local_args():
    with open("configs/local.yaml") as f:
        raw = yaml.safe_load(f)
    ServeDeploySchema.model_validate(raw)
    return raw["applications"][0]["args"]


def test_local_config_is_a_valid_serve_config_with_two_pools():
    config = AppConfig.from_args(local_args())
    by_name = {p.name: p for p in config.pools}
    assert [p.name for p in config.pools] == ["short", "long"]
    # Every pool holds the whole context its hardware can: routing, not the config, decides who serves what.
    assert (by_name["short"].max_model_len, by_name["short"].max_prompt_tokens, by_name["short"].num_replicas) == (40_960, None, 2)
    assert (by_name["long"].max_model_len, by_name["long"].num_replicas) == (40_960, 1)
    assert config.context_cap == 40_960 and config.routing == "predicted"
    assert [(p.profile_name, p.usd_per_hour) for p in config.pools] == [("L40S_TP2", 5.2), ("H100_TP1", 7.0)]
    # The stubs run 4x faster than the GPUs they emulate: so do the objectives.
    assert config.objectives.ttft_limit_s(0) == 0.25 and config.objectives.tpot_s == 0.02


def test_a_pool_profile_is_named_or_taken_from_its_stub_and_objectives_bound_ttft_by_prompt():
    pool = {"name": "p", "max_model_len": 1000}
    assert PoolConfig.model_validate({**pool, "engine": {"kind": "stub", "gpu": "L40S_TP2"}}).profile_name == "L40S_TP2"
    assert PoolConfig.model_validate({**pool, "engine": {"kind": "stub", "gpu": ["L40S_TP2", "H100_TP1"]}}).profile_name is None
    assert PoolConfig.model_validate({**pool, "gpu_profile": "H100_TP1"}).profile_name == "H100_TP1"
    with pytest.raises(ValidationError):
        PoolConfig.model_validate({**pool, "gpu_profile": "A100"})
    assert Objectives().ttft_limit_s(20_000) == pytest.approx(3.0)


def test_files_and_ledger_env_overrides(monkeypatch):
    monkeypatch.setenv("TENANTS_FILE", "/elsewhere/tenants.yaml")
    monkeypatch.setenv("PRICES_FILE", "/elsewhere/prices.yaml")
    monkeypatch.setenv("LEDGER_URL", "postgresql://u@db/ledger")
    config = AppConfig.from_args(local_args())
    assert (config.tenants_file, config.prices_file, config.ledger_url) == (
        "/elsewhere/tenants.yaml", "/elsewhere/prices.yaml", "postgresql://u@db/ledger")
    assert config.router_replicas == 2


def test_bad_config_is_refused():
    args = local_args()
    args["pools"].append(dict(args["pools"][0]))
    with pytest.raises(ValidationError):
        AppConfig.from_args(args)  # duplicate pool name
    with pytest.raises(ValidationError):
        AppConfig.from_args({**local_args(), "overflow_policy": "sometimes"})


def test_stub_engine_takes_one_kind_of_speed():
    from common.config import StubEngine

    assert StubEngine(gpu="H100_TP1", time_scale=4).replica_kwargs() == {
        "gpu": "H100_TP1", "time_scale": 4.0, "emit_interval_ms": 0.0, "scheduling_policy": "fcfs"}
    assert StubEngine().replica_kwargs() == {"prefill_tokens_per_s": 50_000.0, "decode_ms_per_token": 5.0}
    # the ingress re-validates a dumped config: a dump of a gpu engine must load again
    again = StubEngine.model_validate(StubEngine(gpu="L40S_TP2").model_dump(mode="json"))
    assert again.gpu == "L40S_TP2"
    for bad in ({"gpu": "H100_TP1", "decode_ms_per_token": 3}, {"time_scale": 2}, {"gpu": "A100"},
                {"gpu": "H100_TP1", "time_scale": 0}):
        with pytest.raises(ValueError):
            StubEngine(**bad)


def test_the_fair_queue_is_off_unless_enabled_and_its_waits_are_checked():
    assert not AppConfig.from_args(local_args()).fairness.enabled
    with open("configs/production.yaml") as f:
        production = yaml.safe_load(f)["applications"][0]["args"]
    assert AppConfig.model_validate(production).fairness.enabled
    on = AppConfig.from_args({**local_args(), "fairness": {"enabled": True, "extra_wait_s": {"batch": 90}}})
    # A tier left out keeps its default.
    assert on.fairness.extra_wait_s == {"interactive": 0, "standard": 0, "batch": 90}
    assert on.fairness.max_wait_s == {"interactive": 10, "standard": 30, "batch": 120}
    for bad in ({"enabled": True, "max_wait_s": {"premium": 5}},  # no such tier
                {"enabled": True, "extra_wait_s": {"batch": -1}},
                {"enabled": True, "retry_interval_s": 0}):
        with pytest.raises(ValidationError):
            AppConfig.from_args({**local_args(), "fairness": bad})
    with pytest.raises(ValidationError, match="routing: predicted"):
        AppConfig.from_args({**local_args(), "routing": "length_spill", "fairness": {"enabled": True}})
