"""Scores for load balancing inside a pool. Pure; the Ray RequestRouter is a thin adapter.

A replica's outstanding work is the larger of what it last reported (all routers' traffic, but
up to one stats period old) and what this router has sent it and not seen finish (fresh, but only
this router's traffic). Ranking by tokens rather than request counts keeps one replica from
collecting every long prompt of a burst.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Metric = Literal["tokens", "requests"]


@dataclass(frozen=True)
class ReplicaLoad:
    replica_id: str
    reported_tokens: int = 0
    reported_requests: int = 0
    local_tokens: int = 0
    local_requests: int = 0

    @property
    def tokens(self) -> int:
        return max(self.reported_tokens, self.local_tokens)

    @property
    def requests(self) -> int:
        return max(self.reported_requests, self.local_requests)


def score(load: ReplicaLoad, metric: Metric = "tokens") -> tuple[int, ...]:
    """Lower is better. `requests` counts requests only, as Serve's default router does."""
    if metric == "tokens":
        return (load.tokens, load.requests)
    return (load.requests,)


def ranked(loads: Iterable[ReplicaLoad], metric: Metric = "tokens") -> list[ReplicaLoad]:
    """Least loaded first (stable on id so equal loads keep a fixed order)."""
    return sorted(loads, key=lambda l: (score(l, metric), l.replica_id))


def rank(loads: Iterable[ReplicaLoad], metric: Metric = "tokens") -> list[str]:
    """Replica ids, least loaded first."""
    return [l.replica_id for l in ranked(loads, metric)]
