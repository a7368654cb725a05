"""The vLLM configs load in Ray's serve schema and carry Magistral's engine settings (no vLLM)."""

import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.vllm_config import MAGISTRAL_ENGINE_KWARGS, llm_config_kwargs
from common.config import AppConfig


def load(path):
    with open(path) as f:
        raw = yaml.safe_load(f)
    ServeDeploySchema.model_validate(raw)
    return AppConfig.from_args(raw["applications"][0]["args"])


def test_production_pools_are_heterogeneous_and_ordered_cheapest_first():
    config = load("configs/production.yaml")
    assert [p.name for p in config.pools] == ["rtx4090", "short", "long"]
    assert [p.name for p in config.enabled_pools] == ["short", "long"]
    for pool in config.pools:
        assert pool.engine.kind == "vllm" and pool.autoscaling.min_replicas >= 1
        assert pool.autoscaling.max_replicas >= pool.autoscaling.min_replicas
    assert config.default_sampling == {"temperature": 0.7, "top_p": 0.95}


def test_production_engine_settings():
    config = load("configs/production.yaml")
    pools = {p.name: llm_config_kwargs(p, config) for p in config.pools}
    for kwargs in pools.values():
        assert MAGISTRAL_ENGINE_KWARGS.items() <= kwargs["engine_kwargs"].items()
        assert kwargs["model_loading_config"]["model_id"] == "magistral-small-2506"
    long, short, r4090 = pools["long"], pools["short"], pools["rtx4090"]
    assert (long["accelerator_type"], long["engine_kwargs"]["max_model_len"], long["engine_kwargs"]["tensor_parallel_size"]) == ("H100", 40_960, 1)
    assert long["placement_group_config"]["bundles"] == [{"GPU": 1}]
    assert (short["accelerator_type"], short["engine_kwargs"]["max_model_len"]) == ("L40S", 40_960)
    assert short["placement_group_config"] == {"bundles": [{"GPU": 1}, {"GPU": 1}], "strategy": "STRICT_PACK"}
    # a 4090 cannot be named by accelerator_type ("G"): the custom resource selects it
    assert "accelerator_type" not in r4090 and r4090["engine_kwargs"]["quantization"] == "fp8"
    assert r4090["placement_group_config"]["bundles"] == [{"GPU": 1, "rtx4090": 1}] * 2


def test_cpu_config_runs_the_engine_on_cpu():
    config = load("configs/cpu-vllm.yaml")
    (pool,) = config.pools
    kwargs = llm_config_kwargs(pool, config)
    assert kwargs["accelerator_config"] == {"kind": "cpu"} and "placement_group_config" not in kwargs
    assert kwargs["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert kwargs["model_loading_config"]["model_source"].endswith(".run/tiny-magistral")
    assert kwargs["model_loading_config"]["model_source"].startswith("/")  # absolute for replicas
