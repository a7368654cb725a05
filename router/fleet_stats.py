"""The fleet's published stats, as this ingress process sees them.

Every pool's RequestRouter in this process (TokenLoadRouter registers itself when Serve creates
it for the pool's handle) holds its replicas' latest routing stats, pushed by Serve's controller
every `routing_stats_period_s`. The predicted placement (router/routing/placer.py) reads them all
at once: every replica of every pool, not one pool's router at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.protocol import STAT_ORPHANS

_ROUTERS: dict[Any, Any] = {}  # DeploymentID -> the RequestRouter serving it in this process


def register(deployment_id: Any, router: Any) -> None:
    _ROUTERS[deployment_id] = router


def rows(pools: Mapping[str, Any]) -> list[tuple[str, str, Mapping]]:
    """(pool, replica id, routing stats) of every replica whose router is up; `pools`: pool name
    -> its DeploymentHandle."""
    out = []
    for pool, handle in pools.items():
        router = _ROUTERS.get(handle.deployment_id)
        if router is None:
            continue
        # The router's loop may be another thread: copy its dict in one step before walking it.
        for replica in list(router.curr_replicas.values()):
            out.append((pool, replica.replica_id.unique_id, replica.routing_stats or {}))
    return out


def orphans(pools: Mapping[str, Any]) -> list[dict]:
    """Usage of requests whose ingress died, as the replicas that served them publish it
    (deployments/caller_watch.py), each with the serving replica's identity."""
    out = []
    for _pool, _replica, stats in rows(pools):
        for usage in stats.get(STAT_ORPHANS) or ():
            out.append({**usage, **{k: stats.get(k) for k in ("replica", "pool", "node_id", "accelerator")}})
    return out
