"""The admission queue: requests held while no replica can serve them within their objectives,
in dispatch order.

Order: the highest priority tier first; within a tier the backlogged tenant with the smallest
virtual counter (vtc.py: service received, in GPU-seconds); within a tenant the earliest
deadline. The queue only orders: the caller asks for `next` and dispatches it if a replica can
take it now, else asks again skipping it (work-conserving: a request that fits goes even when the
one before it in fair order does not), and `take`s what it dispatched, which charges its tenant.
A request whose client left is `remove`d and charged nothing; one past its bounded wait comes out
of `expired`. A tenant is backlogged while it holds at least one request here.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from router.fairness.tiers import Tier
from router.fairness.vtc import VirtualCounters


@dataclass(frozen=True)
class Held:
    key: str  # the request's id
    tenant: str
    tier: Tier
    cost_gpu_s: float  # predicted at arrival, for the wait estimate (dispatch charges its own)
    deadline: float  # its time-to-first-token objective, absolute: the order within its tenant
    give_up_at: float  # absolute: shed when still here then (its bounded wait)
    arrival: float = 0.0
    payload: Any = field(default=None, compare=False)  # the caller's request object


class _TierQueue:
    """One tier: each backlogged tenant's held requests by deadline, and the tier's counters."""

    def __init__(self) -> None:
        self.counters = VirtualCounters()
        self.by_tenant: dict[str, list[tuple[float, int, str]]] = {}  # (deadline, seq, key), sorted
        self.work: dict[str, float] = {}  # queued predicted GPU-seconds per tenant
        self.total_work = 0.0

    def backlogged(self) -> list[str]:
        return list(self.by_tenant)

    def ordered_tenants(self) -> list[str]:
        """Backlogged tenants, least served first (ties: the earliest head deadline, then name)."""
        c = self.counters.counter
        return sorted(self.by_tenant, key=lambda t: (c(t), self.by_tenant[t][0][0], t))


class FairQueue:
    def __init__(self) -> None:
        self._tiers: dict[Tier, _TierQueue] = {t: _TierQueue() for t in Tier}
        self._held: dict[str, tuple[Held, tuple[float, int, str]]] = {}
        self._expiry: list[tuple[float, int, str]] = []  # (give_up_at, seq, key); stale ones skipped
        self._seq = 0

    # ---- what is held -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, key: str) -> bool:
        return key in self._held

    def held(self, key: str) -> Held | None:
        entry = self._held.get(key)
        return entry[0] if entry else None

    def backlogged(self, tier: Tier) -> list[str]:
        return self._tiers[tier].backlogged()

    def lengths(self) -> dict[Tier, int]:
        """Held requests per tier."""
        return {t: sum(map(len, q.by_tenant.values())) for t, q in self._tiers.items()}

    def counter(self, tenant: str, tier: Tier) -> float:
        return self._tiers[tier].counters.counter(tenant)

    def queued_work(self, tier: Tier, tenant: str | None = None) -> float:
        q = self._tiers[tier]
        return q.total_work if tenant is None else q.work.get(tenant, 0.0)

    # ---- in and out ---------------------------------------------------------------------------
    def push(self, request: Held) -> None:
        if request.key in self._held:
            raise ValueError(f"{request.key} is already queued")
        q = self._tiers[request.tier]
        if request.tenant not in q.by_tenant:  # back from idle: lifted, it banks no idle time
            q.counters.lift(request.tenant, q.backlogged())
        self._seq += 1
        entry = (request.deadline, self._seq, request.key)
        bisect.insort(q.by_tenant.setdefault(request.tenant, []), entry)
        q.work[request.tenant] = q.work.get(request.tenant, 0.0) + request.cost_gpu_s
        q.total_work += request.cost_gpu_s
        self._held[request.key] = (request, entry)
        heapq.heappush(self._expiry, (request.give_up_at, self._seq, request.key))

    def next(self, skip: Collection[str] = ()) -> Held | None:
        """The next request in dispatch order, not among `skip` (those the caller could not place
        just now). None: nothing else is held."""
        for tier in Tier:
            q = self._tiers[tier]
            if not q.by_tenant:
                continue
            for tenant in q.ordered_tenants():
                for _, _, key in q.by_tenant[tenant]:
                    if key not in skip:
                        return self._held[key][0]
        return None

    def take(self, key: str, cost_gpu_s: float) -> Held:
        """`key` was dispatched, costing `cost_gpu_s` (predicted, on the class it went to): out of
        the queue, charged to its tenant."""
        request = self._pop(key)
        q = self._tiers[request.tier]
        q.counters.charge(request.tenant, cost_gpu_s)
        if request.tenant not in q.by_tenant:
            q.counters.left(request.tenant)
        return request

    def remove(self, key: str) -> Held | None:
        """The client left (or the request was shed): out of the queue, charged nothing."""
        if key not in self._held:
            return None
        request = self._pop(key)
        q = self._tiers[request.tier]
        if request.tenant not in q.by_tenant:
            q.counters.left(request.tenant)
        return request

    def expired(self, now: float) -> list[Held]:
        """Requests still held at their `give_up_at` (<= now), taken out (not charged)."""
        out = []
        while self._expiry and self._expiry[0][0] <= now:
            _, seq, key = heapq.heappop(self._expiry)
            entry = self._held.get(key)
            if entry is not None and entry[1][1] == seq:
                out.append(self.remove(key))
        return out

    def dispatched_directly(self, tenant: str, tier: Tier, cost_gpu_s: float) -> None:
        """A request that went to a replica without waiting here: it joined and left the backlog
        at once (lifted if it was idle, then charged), so direct service counts too."""
        q = self._tiers[tier]
        waiting = tenant in q.by_tenant
        if not waiting:
            q.counters.lift(tenant, q.backlogged())
        q.counters.charge(tenant, cost_gpu_s)
        if not waiting:
            q.counters.left(tenant)

    def finished(self, tenant: str, tier: Tier, predicted_gpu_s: float, actual_gpu_s: float) -> None:
        """A dispatched request finished: its charge becomes what it really cost."""
        self._tiers[tier].counters.correct(tenant, predicted_gpu_s, actual_gpu_s)

    # ---- what waits ahead of a request --------------------------------------------------------
    def work_ahead(self, tenant: str, tier: Tier, deadline: float) -> float:
        """GPU-seconds that would be dispatched before a request of `tenant` in `tier` with
        `deadline`, were it queued now and nothing else arrived: every higher tier's queue, its
        own tenant's earlier deadlines, and of each other backlogged tenant of its tier what that
        tenant gets before its counter passes this one's (VTC order, counters after the lift)."""
        ahead = sum(self._tiers[t].total_work for t in Tier if t < tier)
        q = self._tiers[tier]
        mine = q.by_tenant.get(tenant, [])
        own = sum(self._held[key][0].cost_gpu_s for d, _, key in mine if d <= deadline)
        start = q.counters.counter(tenant) if mine else q.counters.lifted(tenant, q.backlogged())
        level = start + own
        for other in q.by_tenant:
            if other != tenant:
                ahead += min(q.work[other], max(0.0, level - q.counters.counter(other)))
        return ahead + own

    def _pop(self, key: str) -> Held:
        request, entry = self._held.pop(key)
        q = self._tiers[request.tier]
        queue = q.by_tenant[request.tenant]
        del queue[bisect.bisect_left(queue, entry)]
        if not queue:
            del q.by_tenant[request.tenant]
            q.total_work -= q.work.pop(request.tenant)
        else:
            q.work[request.tenant] -= request.cost_gpu_s
            q.total_work -= request.cost_gpu_s
        if not q.by_tenant:
            q.total_work = 0.0  # no float residue once empty
        return request
