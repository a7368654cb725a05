"""LLMConfig arguments for a vLLM pool: Magistral's engine settings from its model card.

Pure (no Ray, no vLLM import) so the production config's engine settings are unit-tested on any
machine; deployments/vllm_replica.py turns the dict into ray.serve.llm's LLMConfig.
"""

from __future__ import annotations

import os
from typing import Any

from common.config import AppConfig, PoolConfig, VLLMEngine

# Magistral Small 2506 model card: mistral tokenizer/config/weights, mistral tool calls and
# reasoning parser. Pool-specific values (context, TP, quantization) are added per pool.
MAGISTRAL_ENGINE_KWARGS: dict[str, Any] = {
    "tokenizer_mode": "mistral",
    "config_format": "mistral",
    "load_format": "mistral",
    "tool_call_parser": "mistral",
    "enable_auto_tool_choice": True,
    "reasoning_parser": "mistral",
    # Magistral 2506 thinks in plain-text <think> tags, which vLLM 0.32 never sees end (it waits
    # for a [/THINK] token), so without this every grammar (tool_choice required/named,
    # response_format) is silently skipped. Mistral's own tool grammar allows text before calls.
    "structured_outputs_config": {"enable_in_reasoning": True},
}


def _model_source(engine: VLLMEngine) -> str:
    """A local directory becomes absolute (replicas do not share the deployer's cwd)."""
    source = engine.model_source
    looks_local = source.startswith((".", "/", "~")) or os.path.isdir(source)
    return os.path.abspath(os.path.expanduser(source)) if looks_local else source


def engine_kwargs(pool: PoolConfig) -> dict[str, Any]:
    engine = pool.engine
    assert isinstance(engine, VLLMEngine)
    kwargs = {**MAGISTRAL_ENGINE_KWARGS, "max_model_len": pool.max_model_len,
              "tensor_parallel_size": engine.tensor_parallel_size}
    for name in ("quantization", "max_num_seqs", "gpu_memory_utilization"):
        if getattr(engine, name) is not None:
            kwargs[name] = getattr(engine, name)
    return {**kwargs, **engine.engine_kwargs}


def llm_config_kwargs(pool: PoolConfig, config: AppConfig) -> dict[str, Any]:
    engine = pool.engine
    assert isinstance(engine, VLLMEngine)
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": config.model_id, "model_source": _model_source(engine)},
        "engine_kwargs": engine_kwargs(pool),
        # LLMServer batches stream output every 50 ms by default. Our replica re-streams every
        # event to the router anyway, so batching only adds inter-token latency, and it would
        # make a cancelled stream's bill coarser than one token.
        "experimental_configs": {"stream_batching_interval_ms": 0},
    }
    if engine.env_vars:
        kwargs["runtime_env"] = {"env_vars": dict(engine.env_vars)}
    if engine.device == "cpu":
        kwargs["accelerator_config"] = {"kind": "cpu"}
        return kwargs
    if engine.accelerator_type:
        kwargs["accelerator_type"] = engine.accelerator_type
    # One bundle per GPU worker; STRICT_PACK keeps a TP group on one node (NVLink / PCIe peers).
    gpu_bundle = {"GPU": 1, **engine.custom_resources}
    kwargs["placement_group_config"] = {
        "bundles": [dict(gpu_bundle) for _ in range(engine.tensor_parallel_size)],
        "strategy": engine.placement_strategy,
    }
    return kwargs
