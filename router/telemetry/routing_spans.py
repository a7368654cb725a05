"""The routing spans of requests this ingress process is dispatching, by request key.

The ingress opens a request's routing span before it calls the pool's handle; Serve's
RequestRouter (TokenLoadRouter, same process, possibly another thread) then writes the replica
ranking into it. Only the ingress adds and removes entries.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.trace import Span

from router.routing.load_book import ReplicaLoad
from router.telemetry.span_attributes import replica_ranking_attributes

_live: dict[str, list] = {}  # request key -> [span, ranking attempts]


def track(request_key: str, span: Span) -> None:
    if span.is_recording():
        _live[request_key] = [span, 0]


def untrack(request_key: str) -> None:
    _live.pop(request_key, None)


def note_ranking(request_key: str, ranked: Sequence[ReplicaLoad]) -> None:
    """Record one ranking of the pool's replicas (Serve ranks again when all are busy)."""
    entry = _live.get(request_key)
    if entry is None:
        return
    entry[1] += 1
    entry[0].set_attributes(replica_ranking_attributes(ranked, entry[1]))


def tracked() -> int:
    return len(_live)
