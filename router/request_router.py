"""Ray Serve RequestRouter that ranks a pool's replicas as the ingress predicted, then by
outstanding work in tokens.

Thin adapter over router.routing.load_book (the booking rule the fleet simulator runs too): it
reads the replicas' `routing_stats` (published by their `record_routing_stats`) and its own book,
and returns one rank per replica, best first.
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

from common.protocol import STAT_ONGOING_REQUESTS, STAT_QUEUED_TOKENS
from router import fleet_stats
from router.routing.load_book import LoadBook, Metric, ReplicaLoad, ranked
from router.telemetry import routing_spans

logger = logging.getLogger("ray.serve")


def request_work_tokens(pending_request: PendingRequest | None) -> int:
    """Work a pending request brings: `work_tokens` of its first argument, if it has one."""
    if pending_request is None or not pending_request.args:
        return 0
    return int(getattr(pending_request.args[0], "work_tokens", 0) or 0)


def preferred(pending_request: PendingRequest) -> list[str]:
    """The replicas the ingress predicted best, in order (empty: rank by load alone)."""
    if not pending_request.args:
        return []
    return list(getattr(pending_request.args[0], "preferred_replicas", None) or [])


class TokenLoadRouter(RequestRouter):
    def initialize_state(self, metric: Metric = "tokens", **_: Any) -> None:
        if metric not in ("tokens", "requests"):
            raise ValueError(f"metric must be 'tokens' or 'requests', not {metric!r}")
        self._metric: Metric = metric
        self._book = LoadBook()
        fleet_stats.register(self._deployment_id, self)  # the ingress's predicted placement reads every pool

    def _load(self, replica: RunningReplica) -> ReplicaLoad:
        stats = replica.routing_stats or {}
        return self._book.load(replica.replica_id.unique_id, int(stats.get(STAT_QUEUED_TOKENS, 0)),
                               int(stats.get(STAT_ONGOING_REQUESTS, 0)))

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = [self._load(r) for r in candidate_replicas]
        if pending_request is None:
            order = ranked(loads, self._metric)
        else:
            available = {r.replica_id.unique_id for r in self.select_available_replicas(candidate_replicas)}
            request_id = pending_request.metadata.internal_request_id
            order = self._book.rank_and_book(request_id, request_work_tokens(pending_request), loads,
                                             available.__contains__, self._metric, preferred(pending_request))
            # Serve reports no completion for a request cancelled before it was sent; it may retry
            # with a fresh future, so hook whichever this attempt waits on (release is idempotent).
            pending_request.future.add_done_callback(
                lambda future: self._book.release(request_id) if future.cancelled() else None)
            if pending_request.args:  # the ingress's routing span shows the ranking and scores
                routing_spans.note_ranking(getattr(pending_request.args[0], "request_key", ""), order)
        return [[by_id[load.replica_id]] for load in order]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        self._book.book(replica_id.unique_id, pending_request.metadata.internal_request_id,
                        request_work_tokens(pending_request))

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._book.release(internal_request_id)


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
