"""Application builder for `serve run`: the ingress plus one Serve deployment per pool."""

from __future__ import annotations

import os
from typing import Any

from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from deployments.stub_replica import StubReplica
from common.config import AppConfig, PoolConfig
from router.http.ingress import RouterIngress
from router.request_router import RoundRobinRouter, TokenLoadRouter
from common.telemetry.otel_setup import check_tracing_env
from router.tenancy.directory import TenantDirectory, read_yaml
from router.tenancy.pricing import PriceTable


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else path


def _absolute_sqlite(url: str) -> str:
    """A relative SQLite path is relative to where `serve run` was started, not to each worker."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + os.path.abspath(url[len(prefix):])
    return url


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def _request_router(pool: PoolConfig) -> RequestRouterConfig:
    """Ours, or a baseline that bench/routing.py compares it with."""
    if pool.request_router == "power_of_two":  # Serve's default; replicas still publish stats
        return RequestRouterConfig(request_routing_stats_period_s=pool.routing_stats_period_s)
    if pool.request_router == "round_robin":
        return RequestRouterConfig(request_router_class=RoundRobinRouter,
                                   request_routing_stats_period_s=pool.routing_stats_period_s)
    return RequestRouterConfig(
        request_router_class=TokenLoadRouter,
        request_router_kwargs={"metric": pool.routing_metric},
        request_routing_stats_period_s=pool.routing_stats_period_s,
    )


def build_app(args: dict[str, Any]) -> Application:
    check_tracing_env(os.environ)  # a bad OTEL_* setting fails the deploy, not every replica
    config = AppConfig.from_args(args)
    config = config.model_copy(update={
        "tokenizer_path": _absolute(config.tokenizer_path),
        "tenants_file": _absolute(config.tenants_file),
        "prices_file": _absolute(config.prices_file),
        "ledger_url": _absolute_sqlite(config.ledger_url),
        "system_prompt": _read(config.system_prompt_file) if config.system_prompt_file else config.system_prompt,
    })
    pools = {}
    for pool in config.enabled_pools:
        serve_options = {
            "name": f"pool-{pool.name}",
            "max_ongoing_requests": pool.max_ongoing_requests,
            "request_router_config": _request_router(pool),
            **pool.serve_scaling(),
        }
        if pool.engine.kind == "vllm":
            from deployments.vllm_replica import build_vllm_pool  # needs the vllm extra

            pools[pool.name] = build_vllm_pool(pool, config, serve_options)
            continue
        pools[pool.name] = StubReplica.options(**serve_options).bind(
            pool=pool.name,
            accelerator=pool.accelerator,
            tokenizer_path=config.tokenizer_path,
            **pool.engine.replica_kwargs(),
        )
    # Read here so a bad tenants or prices file fails the deploy, not a replica later.
    tenants = TenantDirectory.from_file(config.tenants_file)
    prices = PriceTable.from_dict(read_yaml(config.prices_file))
    prices.check_covers([p.name for p in config.enabled_pools])
    unknown = {t.name: t.tier for t in tenants.tenants.values() if t.tier is not None and t.tier not in prices.tiers}
    if unknown:
        raise ValueError(f"tenants with a price tier the prices file does not have: {unknown}")
    return RouterIngress.options(name="router", num_replicas=config.router_replicas).bind(config.model_dump(mode="json"), pools)
