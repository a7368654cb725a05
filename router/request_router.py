"""Ray Serve RequestRouter that ranks a pool's replicas by outstanding work in tokens.

Thin adapter over router.balancing: it reads the replicas' `routing_stats` (published by their
`record_routing_stats`) and its own in-flight ledger, and returns one rank per replica, best first.
Serve then takes the first rank with room (by its queue-length cache) and falls back down the
ranks, backing off when all are full. Attach with:

    request_router_config:
      request_router_class: router.request_router:TokenLoadRouter
      request_router_kwargs: {metric: tokens}
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from deployments.protocol import STAT_ONGOING_REQUESTS, STAT_QUEUED_TOKENS
from router.balancing import Metric, ReplicaLoad, ranked
from router.inflight import InFlight
from router.telemetry import routing_spans

logger = logging.getLogger("ray.serve")


def request_work_tokens(pending_request: PendingRequest | None) -> int:
    """Work a pending request brings: `work_tokens` of its first argument, if it has one."""
    if pending_request is None or not pending_request.args:
        return 0
    return int(getattr(pending_request.args[0], "work_tokens", 0) or 0)


class TokenLoadRouter(RequestRouter):
    def initialize_state(self, metric: Metric = "tokens", **_: Any) -> None:
        if metric not in ("tokens", "requests"):
            raise ValueError(f"metric must be 'tokens' or 'requests', not {metric!r}")
        self._metric: Metric = metric
        self._inflight = InFlight()

    def _load(self, replica: RunningReplica) -> ReplicaLoad:
        stats = replica.routing_stats or {}
        key = replica.replica_id.unique_id
        return ReplicaLoad(
            replica_id=key,
            reported_tokens=int(stats.get(STAT_QUEUED_TOKENS, 0)),
            reported_requests=int(stats.get(STAT_ONGOING_REQUESTS, 0)),
            local_tokens=self._inflight.tokens(key),
            local_requests=self._inflight.requests(key),
        )

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = ranked((self._load(r) for r in candidate_replicas), self._metric)
        order = [load.replica_id for load in loads]
        if pending_request is not None:
            self._book(pending_request, order, candidate_replicas)
            if pending_request.args:  # the ingress's routing span shows the ranking and scores
                routing_spans.note_ranking(getattr(pending_request.args[0], "request_key", ""), loads)
        return [[by_id[rid]] for rid in order]

    def _book(self, pending_request: PendingRequest, order: list[str], candidates: list[RunningReplica]) -> None:
        """Book the work on the replica Serve will most likely pick (the first rank with room)
        now, so the next request of a burst sees it before any stats report could.
        on_request_routed moves it to the replica that accepted; completion unbooks it, and so
        does a request cancelled before it was sent (Serve reports no completion for those)."""
        available = {r.replica_id.unique_id for r in self.select_available_replicas(candidates)}
        target = next((rid for rid in order if rid in available), order[0])
        request_id = pending_request.metadata.internal_request_id
        self._inflight.add(target, request_id, request_work_tokens(pending_request))
        # Serve may retry with a fresh future, so hook whichever this attempt waits on
        # (removal is idempotent).
        pending_request.future.add_done_callback(
            lambda future: self._inflight.remove(request_id) if future.cancelled() else None
        )

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        self._inflight.add(
            replica_id.unique_id, pending_request.metadata.internal_request_id, request_work_tokens(pending_request)
        )

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._inflight.remove(internal_request_id)


class RoundRobinRouter(RequestRouter):
    """Each replica in turn, blind to load: the simplest baseline bench/routing.py measures."""

    def initialize_state(self, **_: Any) -> None:
        self._next = 0

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        start = self._next % len(ordered)
        self._next += 1
        return [[r] for r in ordered[start:] + ordered[:start]]  # the next in turn, then the rest
