"""How close to its objectives a replica may be run for a request: the dispatch gate, and the
headroom kept for tenants under their fair share.

The admission queue dispatches a request only to a replica predicted to meet its objectives with
headroom (the `Gate`); otherwise it holds it. Fair order alone cannot make a quiet tenant's
request fast when the noisy tenant has filled every replica to the gate: the request waits for a
running one to finish, which on a fleet of long reasoning answers takes seconds. So while more
than one tenant is active, a tenant holding more than an equal share of the work in flight gets a
stricter gate (`reserve`): the band between the two is left for tenants under their share, whose
requests then start at once. With one active tenant there is no reserve: a lone tenant gets the
whole fleet (work-conserving), and the band fills again within `active_s` of the others going
quiet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from router.routing.predict import HEADROOM, Prediction


@dataclass(frozen=True)
class Gate:
    ttft_ratio: float = HEADROOM  # predicted TTFT over its objective, at most
    tpot_ratio: float = 0.85  # predicted TPOT over its objective, at most (decodes slow as contexts grow)
    fullness: float = math.inf  # the replica's KV / sequence-slot share with the request, at most

    def passes(self, p: Prediction) -> bool:
        return p.ttft_ratio <= self.ttft_ratio and p.tpot_ratio <= self.tpot_ratio and p.fullness <= self.fullness


@dataclass(frozen=True)
class Headroom:
    gate: Gate = Gate()
    reserve: Gate = Gate(ttft_ratio=0.5, tpot_ratio=0.75, fullness=0.8)  # for a tenant over its share
    active_s: float = 10.0  # a tenant is active this long after its last request arrived


class InFlight:
    """Predicted GPU-seconds each tenant has dispatched and not yet finished, and when each last
    sent a request: who is active, and who holds more than an equal share of the work in flight."""

    def __init__(self, active_s: float) -> None:
        self.active_s = active_s
        self._work: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}
        self.total = 0.0

    def seen(self, tenant: str, now: float) -> None:
        self._last_seen[tenant] = now

    def dispatched(self, tenant: str, gpu_s: float) -> None:
        self._work[tenant] = self._work.get(tenant, 0.0) + gpu_s
        self.total += gpu_s

    def finished(self, tenant: str, gpu_s: float) -> None:
        left = self._work.get(tenant, 0.0) - gpu_s
        self.total -= gpu_s
        if left <= 1e-9:
            self._work.pop(tenant, None)
        else:
            self._work[tenant] = left
        if not self._work:
            self.total = 0.0

    def active(self, now: float) -> set[str]:
        """Tenants that sent a request in the last `active_s` (work still running does not count:
        a tenant that stopped sending does not hold the band for minutes of its long answers)."""
        return {t for t, at in self._last_seen.items() if now - at <= self.active_s}

    def over_share(self, tenant: str, now: float) -> bool:
        """More than one tenant is active and `tenant` holds more than 1/n of the work in flight."""
        n = len(self.active(now) | {tenant})
        return n > 1 and self._work.get(tenant, 0.0) > self.total / n


def gate_for(headroom: Headroom, over_share: bool) -> Gate:
    return headroom.reserve if over_share else headroom.gate
