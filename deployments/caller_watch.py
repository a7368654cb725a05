"""Which of a replica's requests lost their caller, and what they generated.

When an ingress replica dies, the streams it was carrying are cut, but the replica is not told:
Ray does not cancel a streaming call whose caller died (measured: all 20 streams of a killed
ingress ran to their end on the replica, generating for nobody), and the dead ingress never
settles them, so their reservations expire with 0 tokens billed. The replica is the one place
that still knows what was generated. `CallerWatch` keeps, per caller (the ingress replica's actor
name, carried by the request), the requests in progress and those that ended in the last
`keep_ended_s`; the replica probes each such caller every few seconds, and when one is dead:
- its requests in progress are cancelled (the GPU stops generating for nobody), and
- every request of it that ends (or ended in the last `keep_ended_s`) becomes an *orphan*: its
  usage, published with the replica's routing stats for `keep_orphans_s` (5 min: longer than
  a reservation's expiry plus the keeper's round, whatever `reservation_ttl_s` up to ~3 min), so that a live
  ingress bills it onto the dead request's `expired` ledger row (router/tenancy/store.py:
  QuotaStore.bill_orphans; the row's guard makes a report for a request its ingress did settle
  harmless).
Pure: the caller probe and the cancellation are callables; times are passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Usage:
    """What a request used on this replica, as far as the replica saw it."""

    request_key: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    finished: bool  # the engine finished the answer (else it was cut: cancelled or failed)
    ended_at: float  # epoch seconds
    ledger: dict | None = None  # the request's ledger fields when it has no reservation row


@dataclass
class _Running:
    caller: str
    cancel: Callable[[], None]


class CallerWatch:
    def __init__(self, keep_ended_s: float = 10.0, keep_orphans_s: float = 300.0, max_orphans: int = 2000):
        self.keep_ended_s, self.keep_orphans_s, self.max_orphans = keep_ended_s, keep_orphans_s, max_orphans
        self._running: dict[object, _Running] = {}
        self._ended: list[tuple[str, Usage]] = []  # (caller, usage), oldest first
        self._dead: dict[str, float] = {}  # caller -> when found dead
        self._orphans: list[Usage] = []  # oldest first

    def begin(self, key: object, caller: str, cancel: Callable[[], None]) -> None:
        """A request from `caller` started (an empty caller is not watched). One whose caller is
        already known dead (it waited in the engine's queue) is cancelled at once."""
        if caller:
            self._running[key] = _Running(caller, cancel)
            if caller in self._dead:
                cancel()

    def end(self, key: object, usage: Usage) -> None:
        running = self._running.pop(key, None)
        if running is None:
            return
        if running.caller in self._dead:
            self._add_orphan(usage)
        else:
            self._ended.append((running.caller, usage))

    def callers(self, now: float) -> set[str]:
        """The callers to probe: those with requests running or recently ended, not known dead."""
        self._prune(now)
        live = {r.caller for r in self._running.values()} | {caller for caller, _ in self._ended}
        return live - self._dead.keys()

    def caller_dead(self, caller: str, now: float) -> int:
        """`caller` is gone: cancel its running requests (their ends become orphans) and turn its
        recently ended ones into orphans. Returns how many requests were cancelled."""
        self._dead[caller] = now
        kept = []
        for who, usage in self._ended:
            if who == caller:
                self._add_orphan(usage)
            else:
                kept.append((who, usage))
        self._ended = kept
        doomed = [r for r in self._running.values() if r.caller == caller]
        for running in doomed:
            running.cancel()
        return len(doomed)

    def orphans(self, now: float) -> list[dict]:
        """The orphans of the last keep_orphans_s, as published in the routing stats."""
        self._prune(now)
        return [asdict(u) for u in self._orphans]

    def _add_orphan(self, usage: Usage) -> None:
        self._orphans.append(usage)
        if len(self._orphans) > self.max_orphans:  # bounded stats, whatever dies
            del self._orphans[: len(self._orphans) - self.max_orphans]

    def _prune(self, now: float) -> None:
        ended_before, orphans_before = now - self.keep_ended_s, now - self.keep_orphans_s
        self._ended = [(c, u) for c, u in self._ended if u.ended_at >= ended_before]
        self._orphans = [u for u in self._orphans if u.ended_at >= orphans_before]
        self._dead = {c: t for c, t in self._dead.items() if t >= orphans_before}
