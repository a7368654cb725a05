"""configs/production.yaml through ray.serve.llm's own LLMConfig and deployment options.

No GPU is needed to build these; they are what Serve would schedule on the GPU nodes. Building
them touches Ray (it would start a stray local instance), so the test connects to the session's
cluster first (ray_driver).
"""

import pytest
import yaml

from deployments.vllm_config import llm_config_kwargs
from common.config import AppConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def production():
    with open("configs/production.yaml") as f:
        return AppConfig.from_args(yaml.safe_load(f)["applications"][0]["args"])


def deployment_options(pool, config):
    from ray.serve.llm import LLMConfig

    from deployments.vllm_replica import MagistralLLMServer

    return MagistralLLMServer.get_deployment_options(LLMConfig(**llm_config_kwargs(pool, config)))


def test_every_production_pool_builds_gpu_placement(production, ray_driver):
    for pool in production.pools:
        options = deployment_options(pool, production)
        bundles = options["placement_group_bundles"]
        gpus = sum(b.get("GPU", 0) for b in bundles)
        assert gpus == pool.engine.tensor_parallel_size, (pool.name, bundles)
        assert options["placement_group_strategy"] == pool.engine.placement_strategy
        for resource, amount in pool.engine.custom_resources.items():
            assert sum(b.get(resource, 0) for b in bundles) == amount * pool.engine.tensor_parallel_size
        if pool.engine.accelerator_type:
            assert any(f"accelerator_type:{pool.engine.accelerator_type}" in b for b in bundles), bundles
