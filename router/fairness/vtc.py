"""Virtual token counters (VTC, Sheng et al., "Fairness in Serving Large Language Models", OSDI
2024), one set per priority tier, counted in GPU-seconds instead of tokens.

Each tenant's counter is the service it received. The fair queue dispatches the backlogged tenant
with the smallest counter, so backlogged tenants' service stays within about twice one request's
cost of each other. Two rules make that hold:

- Charge what is served: the predicted cost at dispatch (so a burst's next request already sees
  it), corrected by actual minus predicted when the request finishes (VTC counts served tokens).
- The lift: a tenant that was not backlogged is raised, when its request arrives, to the smallest
  counter of the backlogged tenants (or, when none is, to the counter of the last tenant that left
  the backlog). Idle time is not banked: a tenant back from a pause does not get to monopolise the
  fleet until it has caught up with everyone else's service.
"""

from __future__ import annotations

from collections.abc import Iterable


class VirtualCounters:
    """Service counters of the tenants of one tier, in GPU-seconds."""

    def __init__(self) -> None:
        self._counter: dict[str, float] = {}
        self._last_left = 0.0  # counter of the last tenant whose backlog emptied

    def counter(self, tenant: str) -> float:
        return self._counter.get(tenant, 0.0)

    def lifted(self, tenant: str, backlogged: Iterable[str]) -> float:
        """What `tenant`'s counter would be after the lift, given the other backlogged tenants."""
        others = [self.counter(t) for t in backlogged if t != tenant]
        floor = min(others) if others else self._last_left
        return max(self.counter(tenant), floor)

    def lift(self, tenant: str, backlogged: Iterable[str]) -> float:
        """Call when `tenant` becomes backlogged (its first queued request, or a direct dispatch
        while it had none queued). Returns its counter."""
        value = self.lifted(tenant, backlogged)
        self._counter[tenant] = value
        return value

    def charge(self, tenant: str, gpu_s: float) -> None:
        """Service given to `tenant` (negative: a correction, predicted cost above the actual)."""
        self._counter[tenant] = self.counter(tenant) + gpu_s

    def correct(self, tenant: str, predicted_gpu_s: float, actual_gpu_s: float) -> None:
        """A request finished: replace its predicted cost by what it really cost."""
        self.charge(tenant, actual_gpu_s - predicted_gpu_s)

    def left(self, tenant: str) -> None:
        """`tenant`'s backlog emptied: the reference for the next lift when nobody is backlogged."""
        self._last_left = self.counter(tenant)

    def snapshot(self) -> dict[str, float]:
        return dict(self._counter)
