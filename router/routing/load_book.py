"""The load-booking rule and the ranking that reads it, written once.

Used by the Ray RequestRouter (router/request_router.py, per replica), the ingress (per pool) and
the fleet simulator (bench/), so the simulator simulates the router and not a copy of it.

The rule: a request brings `work_tokens` of outstanding work (its prompt plus the completion it
will likely generate, common.protocol.work_tokens). The router books that work on the replica it
expects Serve to pick (`booking_target`: the first rank with room) as soon as it has ranked, so
the next request of a burst sees it before any stats report could; moves it to the replica that
accepted when Serve says so; and releases it when the request finishes or is cancelled.

A replica's load is the larger of what it last reported (every router's traffic, but up to one
stats period old) and what this router has booked on it (fresh, but only this router's traffic).
Ranking by tokens rather than request counts keeps one replica from collecting every long prompt
of a burst.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
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


def ranked(loads: Iterable[ReplicaLoad], metric: Metric = "tokens", first: Sequence[str] = ()) -> list[ReplicaLoad]:
    """`first` in its order (the predicted placement's), then the least loaded (stable on id so
    equal loads keep a fixed order)."""
    place = {rid: i for i, rid in enumerate(first)}
    return sorted(loads, key=lambda l: (place.get(l.replica_id, len(place)), score(l, metric), l.replica_id))


def rank(loads: Iterable[ReplicaLoad], metric: Metric = "tokens") -> list[str]:
    """Replica ids, least loaded first."""
    return [l.replica_id for l in ranked(loads, metric)]


def booking_target(order: Sequence[str], has_room: Callable[[str], bool]) -> str:
    """The replica Serve will most likely pick: the first rank with room (else the first)."""
    return next((rid for rid in order if has_room(rid)), order[0])


class LoadBook:
    """Work booked per key (a replica, or a pool) and not yet released. Not thread-safe: use from
    one event loop (or one simulation)."""

    def __init__(self) -> None:
        self._by_request: dict[str, tuple[str, int]] = {}
        self._tokens: defaultdict[str, int] = defaultdict(int)
        self._requests: defaultdict[str, int] = defaultdict(int)

    def book(self, key: str, request_id: str, tokens: int) -> None:
        """Book a request on `key`; booking the same request again moves it (a re-route)."""
        self.release(request_id)
        self._by_request[request_id] = (key, tokens)
        self._tokens[key] += tokens
        self._requests[key] += 1

    def release(self, request_id: str) -> None:
        """The request finished or was cancelled; releasing twice is harmless."""
        entry = self._by_request.pop(request_id, None)
        if entry is None:
            return
        key, tokens = entry
        self._tokens[key] -= tokens
        self._requests[key] -= 1

    def booked_on(self, request_id: str) -> str | None:
        entry = self._by_request.get(request_id)
        return entry[0] if entry else None

    def tokens(self, key: str) -> int:
        return self._tokens.get(key, 0)

    def requests(self, key: str) -> int:
        return self._requests.get(key, 0)

    def snapshot_tokens(self) -> dict[str, int]:
        return {k: v for k, v in self._tokens.items() if v}

    def load(self, key: str, reported_tokens: int = 0, reported_requests: int = 0) -> ReplicaLoad:
        """A replica's load: its report and this book, as the ranking reads it."""
        return ReplicaLoad(key, reported_tokens, reported_requests, self.tokens(key), self.requests(key))

    def rank_and_book(self, request_id: str, work: int, loads: Iterable[ReplicaLoad],
                      has_room: Callable[[str], bool], metric: Metric = "tokens",
                      first: Sequence[str] = ()) -> list[ReplicaLoad]:
        """The rule in one call: rank the candidates, book the work on the expected pick.
        Returns the ranking (best first)."""
        order = ranked(loads, metric, first)
        if order:
            self.book(booking_target([l.replica_id for l in order], has_room), request_id, work)
        return order
