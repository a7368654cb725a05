"""Quota leases: an ingress admits a tenant's requests in memory, and the limits stay exact. Pure.

A lease is a slice of one tenant's limits that one ingress replica holds, granted in one database
transaction under the tenant's lock (lease_store.py). It holds units of four kinds, one per kind
of limit the tenant has (a kind the tenant has no limit for is not tracked: None, unlimited):

- `requests`: admissions, for requests_per_minute;
- `tokens`: worst-case tokens (prompt + max_tokens), for tokens_per_minute, tokens_per_day and
  tokens_per_month, as a reservation counts today;
- `usd`: worst-case dollars, for usd_per_day and usd_per_month;
- `slots`: requests running at once, for max_concurrent_requests.

The rule that makes the sum exact (0 over-admission):

    for every limit, at every grant:  settled usage + today's per-request reservations
                                      + every lease's held units  <=  limit

and nothing is ever admitted except out of held units. A grant runs under the tenant's lock and
sees every other lease's holding, so it can only hand out what no one else counts. An ingress
then admits a request locally by moving units from `free` to `in_use`; the database's view of the
lease (`held`) is always `in_use + free` of the ingress, so the real usage never passes what the
database counts, which never passes the limit. How each kind is counted in the database:

- concurrency: a live lease's slots count as requests in flight;
- day and month budgets: a live lease's tokens and dollars count as reserved in its UTC day and
  month (a lease never outlives the UTC day it was granted in: see `Lease.deadline`);
- minute windows: a lease's requests and tokens count as admitted *now*, for as long as it lives
  and for 60 s after it expires (an admission it made just before expiring is in the window for
  60 s more). A request settled from a lease leaves the lease and is counted by its ledger row,
  at its real admission time, as today.

A sync (grant, renewal, return and settlement in one) sets the lease's holding absolutely:
`held = keep + granted`, where `keep` is what the ingress still uses (`in_use` minus the requests
settled in the same transaction) plus a small `bridge` of free units it may admit from while the
transaction runs; the rest of its free units go back. Replaying a sync (a commit whose answer was
lost) is harmless: ledger rows are idempotent on request id and the holding is set, not added.

Sizing: the spare units a sync grants cover `horizon_s` of the lease's recent demand (requests,
tokens, dollars per second; concurrency from the peak in flight), and never more than
free / (1 + other live leases) of what the limit has left, so holders converge to small slices
near the limit (the last units go out one request at a time, as today) and an idle ingress
returns everything at its next renewal (its demand is 0), so a slow tenant strands no budget.
A request the lease cannot admit goes to the database with its ask: it is decided there by
quota.decide over the whole tenant (clamping an unset max_tokens to the tenant's real room, never
to the slice). When the limit is short only because other leases hold spare units, the refusal is
`recallable`: those leases are flagged, return their spare at their next sync (every `renew_s` at
most) and the request may be retried; otherwise it is refused exactly as today.

Expiry: a lease the database has not seen for `ttl_s` is dead: its slots and its day/month units
are free again `ttl_s + skew_s` after its last sync (its minute-window units 60 s after that).
The ingress stops admitting from it at `deadline = sync start + ttl_s` on its own clock (before
the database's expiry, which is taken at or after the sync started), so an ingress cut off from
the database admits nothing the database has stopped counting; `skew_s` covers clock differences
between ingress replicas (the one that finds a lease dead may run ahead of the one that holds it).
"""

from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from router.tenancy.quota import (WINDOW_S, Ask, Grant, Limits, RateHeaders, Refusal, Spend, TenantState,
                                  WindowSummary, day_key, decide, month_key)

PICO = Decimal(10) ** -12
KINDS = ("requests", "tokens", "usd", "slots")


def _pico_down(value: Decimal) -> Decimal:
    return value.quantize(PICO, rounding=ROUND_DOWN)


@dataclass(frozen=True)
class Units:
    """An amount of each kind a tenant's limits track (None: the tenant has no limit of that kind)."""

    requests: int | None = None
    tokens: int | None = None
    usd: Decimal | None = None
    slots: int | None = None

    @staticmethod
    def zero(limits: Limits) -> "Units":
        return Units(
            requests=0 if limits.requests_per_minute is not None else None,
            tokens=0 if any(v is not None for v in (limits.tokens_per_minute, limits.tokens_per_day,
                                                      limits.tokens_per_month)) else None,
            usd=Decimal(0) if limits.usd_per_day is not None or limits.usd_per_month is not None else None,
            slots=0 if limits.max_concurrent_requests is not None else None,
        )

    # Field by field, not by getattr over KINDS: these run several times per admission.
    def __add__(self, other: "Units") -> "Units":
        return Units(None if self.requests is None else self.requests + (other.requests or 0),
                     None if self.tokens is None else self.tokens + (other.tokens or 0),
                     None if self.usd is None else self.usd + (other.usd or 0),
                     None if self.slots is None else self.slots + (other.slots or 0))

    def __sub__(self, other: "Units") -> "Units":
        return Units(None if self.requests is None else self.requests - (other.requests or 0),
                     None if self.tokens is None else self.tokens - (other.tokens or 0),
                     None if self.usd is None else self.usd - (other.usd or 0),
                     None if self.slots is None else self.slots - (other.slots or 0))

    def min(self, other: "Units") -> "Units":
        return Units(*(None if a is None else min(a, b if b is not None else 0) for a, b in (
            (self.requests, other.requests), (self.tokens, other.tokens), (self.usd, other.usd),
            (self.slots, other.slots))))

    def covers(self, need: "Units") -> bool:
        """Every tracked kind has at least `need` of it."""
        return ((self.requests is None or self.requests >= (need.requests or 0))
                and (self.tokens is None or self.tokens >= (need.tokens or 0))
                and (self.usd is None or self.usd >= (need.usd or 0))
                and (self.slots is None or self.slots >= (need.slots or 0)))

    def nonnegative(self) -> bool:
        return all(v is None or v >= 0 for _, v in self.items())

    def items(self):
        return ((k, getattr(self, k)) for k in KINDS)

    def tracked(self, limits: Limits) -> "Units":
        """Only the kinds `limits` track (a dropped limit's units become None)."""
        z = _zero(limits)
        return Units(None if z.requests is None else self.requests or 0, None if z.tokens is None else self.tokens or 0,
                     None if z.usd is None else self.usd or 0, None if z.slots is None else self.slots or 0)


@lru_cache(maxsize=1024)
def _zero(limits: Limits) -> Units:
    return Units.zero(limits)


def units_of(limits: Limits, tokens: int, usd: Decimal) -> Units:
    """What one request holds: one admission, its worst-case tokens and dollars, one slot."""
    return Units(1, tokens, usd, 1).tracked(limits)


# ---- the database side of a grant (pure: the store reads the numbers, this decides) -------------

@dataclass(frozen=True)
class Others:
    """What every other lease of the tenant holds, as the database counts it at `now`."""

    window_requests: int = 0  # leases alive or expired less than 60 s ago
    window_tokens: int = 0
    slots: int = 0  # live leases
    day: Spend = Spend()  # live leases granted in today's UTC day
    month: Spend = Spend()  # ... in this UTC month
    spare: Units = Units()  # live leases' free units at their last sync (an upper bound)
    live: int = 0  # live leases


@dataclass(frozen=True)
class Policy:
    ttl_s: float = 10.0  # a lease not synced for this long is dead
    renew_s: float = 2.0  # sync at least this often (ttl_s / renew_s syncs may fail in a row)
    horizon_s: float = 1.0  # spare units cover this long of the lease's recent demand
    # Demand is measured over at least this long: syncs closer together (a busy ingress syncs
    # for every group of settlements) add to the measurement instead of each taking a reading,
    # which an interval without an admission would drop to 0.
    rate_window_s: float = 0.25
    skew_s: float = 1.0  # ingress clocks agree within this
    settle_batch: int = 256  # settle as soon as this many requests wait
    settle_s: float = 0.02  # ... or the oldest has waited this long
    low_water: float = 0.25  # sync ahead when free falls under this share of the last grant


@dataclass(frozen=True)
class Report:
    """What an ingress sends with a sync: the units it keeps and the spare it would like."""

    keep: Units  # in use (not settled in this sync) + the bridge
    bridge: Units  # free units kept to admit from while the sync runs
    target: Units  # spare wanted beyond `keep` (by recent demand)
    ask: Ask | None = None  # a request the lease could not admit: decide it now
    returning: bool = False  # give everything free back (the ingress is leaving)


@dataclass(frozen=True)
class SyncGrant:
    held: Units  # the lease's holding after the sync: keep + spare (+ the ask's units)
    spare: Units  # free units granted beyond keep
    decision: Grant | Refusal | None  # the ask's, when there was one
    recallable: bool = False  # a refusal that other leases' spare may lift: retry after their sync
    recall: bool = False  # this lease was asked to give back its spare: no spare granted
    # Requests and tokens the minute limits have left once this holding counts (None: no limit):
    # what x-ratelimit-remaining-* start from for admissions out of the lease.
    minute_left: tuple[int | None, int | None] = (None, None)


def tenant_view(limits: Limits, base: TenantState, others: Others, keep: Units) -> TenantState:
    """The tenant's state with every lease counted: the others' holdings and this lease's `keep`."""
    summary = base.window_summary or WindowSummary(len(base.window), sum(t for _, t in base.window),
                                                   min((a for a, _ in base.window), default=None),
                                                   max((a for a, _ in base.window), default=None))
    lease_requests = others.window_requests + (keep.requests or 0)
    lease_tokens = others.window_tokens + (keep.tokens or 0)
    if lease_requests or lease_tokens:  # lease units count as admitted now
        summary = WindowSummary(summary.requests + lease_requests, summary.tokens + lease_tokens,
                                summary.oldest or base.now, base.now)
    own = Spend(keep.tokens or 0, keep.usd or Decimal(0))
    return replace(base, window=(), window_summary=summary, in_flight=base.in_flight + others.slots + (keep.slots or 0),
                   day=base.day + others.day + own, month=base.month + others.month + own)


def room(limits: Limits, state: TenantState) -> Units:
    """What each tracked kind still has before its tightest limit, in `state` (may be negative)."""
    s = state.window_summary
    tokens = [limit - used for limit, used in ((limits.tokens_per_minute, s.tokens if s else 0),
                                              (limits.tokens_per_day, state.day.tokens),
                                              (limits.tokens_per_month, state.month.tokens)) if limit is not None]
    usd = [limit - used for limit, used in ((limits.usd_per_day, state.day.usd),
                                           (limits.usd_per_month, state.month.usd)) if limit is not None]
    return Units(
        requests=None if limits.requests_per_minute is None else limits.requests_per_minute - (s.requests if s else 0),
        tokens=min(tokens) if tokens else None,
        usd=min(usd) if usd else None,
        slots=None if limits.max_concurrent_requests is None else limits.max_concurrent_requests - state.in_flight,
    )


def _share(free: Units, holders: int, target: Units) -> Units:
    """Spare for one lease: its target, at most free / holders, never negative."""
    out = []
    for k, f in free.items():
        want = getattr(target, k)
        if f is None:
            out.append(None)
            continue
        want = want or 0
        if k == "usd":
            cap = _pico_down(max(Decimal(0), Decimal(f) / holders))
            out.append(max(Decimal(0), min(_pico_down(Decimal(want)), cap)))
        else:
            out.append(max(0, min(int(want), int(f) // holders)))
    return Units(*out)


def grant(limits: Limits, base: TenantState, others: Others, report: Report, *, recall: bool = False,
          final: bool = True) -> SyncGrant:
    """Decide a sync: the ask (if any) by quota.decide over the whole tenant, then spare units.

    `base` is the tenant's state without any lease (settled usage, per-request reservations, the
    ledger's minute window); `others` what the other leases hold; `recall` that another ingress
    asked this lease for its spare. Returns the lease's new holding: `keep` + the ask's units +
    spare, within every limit (given that `keep` was; a lease revived after its expiry keeps what
    it uses even if that no longer fits, as a late settlement is billed after an expiry).

    An ask refused, or clamped, only because other leases hold spare units is `recallable`: a
    refusal says so; a clamp is not granted at all unless `final` (decision None): once the
    others give their spare back the same request gets the max_tokens one reservation per
    request would have given it, instead of a shorter answer and a second clamped request."""
    keep = report.keep.tracked(limits)
    state = tenant_view(limits, base, others, keep)
    decision: Grant | Refusal | None = None
    held = keep
    recallable = False
    if report.ask is not None:
        decision = decide(limits, state, report.ask)
        lifted = None
        if isinstance(decision, Refusal) or decision.clamped_from is not None:
            # What would the ask get if the other leases gave back their spare?
            spare_back = Others(others.window_requests - (others.spare.requests or 0),
                                others.window_tokens - (others.spare.tokens or 0),
                                others.slots - (others.spare.slots or 0),
                                Spend(others.day.tokens - (others.spare.tokens or 0),
                                      others.day.usd - (others.spare.usd or 0)),
                                Spend(others.month.tokens - (others.spare.tokens or 0),
                                      others.month.usd - (others.spare.usd or 0)), Units(), others.live)
            lifted = decide(limits, tenant_view(limits, base, spare_back, keep), report.ask)
        if isinstance(decision, Refusal):
            recallable = isinstance(lifted, Grant)
        elif not final and isinstance(lifted, Grant) and lifted.max_tokens > decision.max_tokens:
            decision, recallable = None, True  # clamped by the others' spare: wait for it
        else:
            held = keep + units_of(limits, decision.tokens, decision.usd)
            state = tenant_view(limits, base, others, held)
    if report.returning or recall or (report.ask is not None and not isinstance(decision, Grant)):
        spare = Units.zero(limits)
    else:
        spare = _share(room(limits, state), 1 + others.live, report.target)
    after = tenant_view(limits, base, others, held + spare).window_summary
    minute_left = (None if limits.requests_per_minute is None else limits.requests_per_minute - after.requests,
                   None if limits.tokens_per_minute is None else limits.tokens_per_minute - after.tokens)
    return SyncGrant(held + spare, spare, decision, recallable, recall, minute_left)


# ---- the ingress side: admitting in memory -----------------------------------------------------

@dataclass
class Ticket:
    """One request admitted from a lease: what it holds until it is settled."""

    units: Units
    admitted_at: datetime
    payload: object = None  # the caller's (the ledger row it will write)
    finished: bool = False
    decision: Grant | None = None  # set when the database decided it (its max_tokens may be clamped)


@dataclass
class _Demand:
    requests: int = 0
    tokens: int = 0
    usd: Decimal = Decimal(0)
    peak_slots: int = 0


@dataclass
class Lease:
    """One tenant's lease at one ingress: admits in memory from `free`, knows what to report.

    Invariant (what the database holds for this lease): in_use + free. `begin_sync` splits off
    what the sync may return; `end_sync` adds what was granted; `abort_sync` (the transaction
    failed, or its outcome is unknown) keeps only what both outcomes leave the lease."""

    limits: Limits
    policy: Policy = field(default_factory=Policy)
    free: Units = None  # type: ignore[assignment]
    in_use: Units = None  # type: ignore[assignment]
    deadline: datetime | None = None  # admit nothing at or after (None: never synced)
    day: str | None = None
    last_grant: Units = None  # type: ignore[assignment]
    recallable: bool = False

    def __post_init__(self) -> None:
        z = Units.zero(self.limits)
        self.free = self.free if self.free is not None else z
        self.in_use = self.in_use if self.in_use is not None else z
        self.last_grant = self.last_grant if self.last_grant is not None else z
        self._settled: list[Ticket] = []  # finished, waiting for a sync to write them
        self._reported: list[Ticket] = []  # in the sync under way
        self._syncing: Units | None = None  # the bridge: what the sync under way keeps free
        self._sync_started: datetime | None = None
        self._last_sync: datetime | None = None
        self._measuring_since: datetime | None = None  # start of the demand measurement under way
        self._reported_units: Units = Units.zero(self.limits)  # what the reported tickets hold
        self._demand = _Demand()
        self._rate = _Demand()  # per second, smoothed
        self._recall = False
        self._keep = self.in_use
        self._minute_left: tuple[int | None, int | None] = (None, None)

    # ---- admission ----------------------------------------------------------------------
    def live(self, now: datetime) -> bool:
        return self.deadline is not None and now < self.deadline

    def admit(self, ask: Ask, now: datetime, payload: object = None, *, again: bool = False) -> Ticket | None:
        """Admit `ask` unclamped from the free units, or None: ask the database (sync with it).
        Never clamps: a clampable ask that does not fit is decided against the whole tenant.
        again: the same request tried before (its demand is counted once)."""
        tokens, usd = ask.worst_case()
        need = units_of(self.limits, tokens, usd)
        if not again:
            d = self._demand
            d.requests += 1
            d.tokens += tokens
            d.usd += usd
        if not self.live(now) or day_key(now) != self.day or not self.free.covers(need):
            return None
        return self._take(need, now, payload)

    def _take(self, need: Units, now: datetime, payload: object) -> Ticket:
        self.free = self.free - need
        self.in_use = self.in_use + need
        if self.in_use.slots is not None:
            self._demand.peak_slots = max(self._demand.peak_slots, self.in_use.slots)
        return Ticket(need, now, payload)

    def finish(self, ticket: Ticket, payload: object = None) -> None:
        """The request ended: its slot is free at once; the rest waits for its settlement."""
        if ticket.finished:
            return
        ticket.finished = True
        if payload is not None:
            ticket.payload = payload
        if ticket.units.slots:
            slot = Units(slots=1).tracked(self.limits)
            self.in_use = self.in_use - slot
            self.free = self.free + slot
        self._settled.append(ticket)

    def headers(self) -> RateHeaders:
        """x-ratelimit-* for an admission out of the lease: what the minute limits had left at the
        last sync with this lease's holding counted as used, plus its free units now. An estimate
        (other ingresses' admissions since then are not seen); resets are unknown here."""
        requests_left, tokens_left = self._minute_left
        return RateHeaders(
            limit_requests=self.limits.requests_per_minute,
            remaining_requests=None if requests_left is None else requests_left + (self.free.requests or 0),
            limit_tokens=self.limits.tokens_per_minute,
            remaining_tokens=None if tokens_left is None else tokens_left + (self.free.tokens or 0))

    @property
    def idle(self) -> bool:
        """Holds nothing and has nothing to settle: no sync is needed until it admits again."""
        return (self._syncing is None and not self._settled
                and all(not v for _, v in self.free.items()) and all(not v for _, v in self.in_use.items()))

    @property
    def pending(self) -> int:
        return len(self._settled)

    # ---- syncing ------------------------------------------------------------------------
    def sync_due(self, now: datetime) -> str | None:
        """Why a sync should start now (None: no need): never synced, renewal due, settlements
        waiting, free units running low, or spare recalled."""
        if self._syncing is not None:
            return None
        p = self.policy
        if self._last_sync is None:
            return "new"
        if (now - self._last_sync).total_seconds() >= p.renew_s:
            return "renew"
        if self._recall:
            return "recall"
        if len(self._settled) >= p.settle_batch or (
                self._settled and (now - self._settled[0].admitted_at).total_seconds() >= p.settle_s):
            return "settle"
        return self._low()

    def settle_only(self, now: datetime) -> bool:
        """Whether the rows waiting may go in a settle-only sync (no grant, no renewal): the lease
        is live, in its UTC day, not due to renew, not recalled and not running low."""
        if self._syncing is not None or not self._settled or not self.live(now) or day_key(now) != self.day:
            return False
        return self.sync_due(now) in (None, "settle") and self._low() is None

    def begin_settle(self) -> tuple[Units, list]:
        """Start a settle-only sync: the rows waiting leave the lease, every free unit stays (the
        database sets the holding to what is left: it can only shrink). Returns (holding, rows)."""
        assert self._syncing is None, "one sync at a time"
        self._reported, self._settled = self._settled, []
        self._reported_units = self._units_of(self._reported)
        self._syncing = self.free
        self._keep = self.in_use - self._reported_units + self.free
        return self._keep, [t.payload for t in self._reported]

    def end_settle(self, recall: bool) -> None:
        """The settle-only sync committed (abort_sync if it failed). recall: another ingress asked
        for this lease's spare (give it back at the next full sync)."""
        self.in_use = self.in_use - self._reported_units
        self._reported = []
        self._syncing = None
        self._recall = self._recall or recall

    def _units_of(self, tickets: list[Ticket]) -> Units:
        """What settling `tickets` takes out of the lease (their slots were freed at finish)."""
        settled = Units.zero(self.limits)
        for t in tickets:
            settled = settled + t.units
        return replace(settled, slots=0 if settled.slots is not None else None)

    def _low(self) -> str | None:
        for k, granted in self.last_grant.items():
            f = getattr(self.free, k)
            if granted and f is not None and float(f) < float(granted) * self.policy.low_water:
                return "low"
        return None

    def begin_sync(self, now: datetime, ask: Ask | None = None, *, returning: bool = False) -> tuple[Report, list]:
        """Start a sync: what to report, and the settled tickets' payloads to write with it."""
        assert self._syncing is None, "one sync at a time"
        self._update_rate(now)
        self._reported, self._settled = self._settled, []
        settled = self._reported_units = self._units_of(self._reported)
        target = self._target()
        # With an ask, every free unit goes back first: the ask may need them (a lease short of
        # slots may hold the tokens), and the spare is granted afresh after it.
        bridge = Units.zero(self.limits) if returning or self._recall or ask is not None else self.free.min(target)
        self._syncing = bridge
        self.free = bridge  # admissions during the sync draw from the bridge only
        self._sync_started = now
        keep = self.in_use - settled + bridge
        self._keep = keep
        return Report(keep, bridge, target - bridge, ask, returning), [t.payload for t in self._reported]

    def end_sync(self, result: SyncGrant, payload: object = None) -> Ticket | None:
        """The sync committed: the lease holds `result.held`; returns the ask's ticket if granted."""
        self.in_use = self.in_use - self._reported_units
        self.free = self.free + (result.held - self._keep)  # the spare and the ask's units
        self._reported = []
        now = self._sync_started
        self.deadline = now + timedelta(seconds=self.policy.ttl_s)
        if any(v is not None for v in (self.limits.tokens_per_day, self.limits.usd_per_day,
                                       self.limits.tokens_per_month, self.limits.usd_per_month)):
            self.deadline = min(self.deadline, _next_midnight(now))  # a lease's budget is one UTC day's
        self.day = day_key(now)
        self.last_grant = result.spare
        self._minute_left = result.minute_left
        self._recall = result.recall  # give the bridge back too, at the next sync
        self.recallable = result.recallable
        self._syncing = None
        self._last_sync = now
        if isinstance(result.decision, Grant):
            return self._take(units_of(self.limits, result.decision.tokens, result.decision.usd), now, payload)
        return None

    def abort_sync(self) -> None:
        """The sync failed or its outcome is unknown: keep only the bridge (the units returned may
        already be free in the database) and report the settled tickets again next time (their
        rows are idempotent). Never more than the database holds for this lease either way."""
        self._settled = self._reported + self._settled
        self._reported = []
        self._syncing = None

    def flag_recall(self) -> None:
        """The database asked for this lease's spare (seen in a sync): give it back next sync."""
        self._recall = True

    # ---- sizing -------------------------------------------------------------------------
    def _update_rate(self, now: datetime) -> None:
        """Demand per second over the measurement (at least `rate_window_s`, from one sync to a
        later one), averaged with the previous figure; a measurement without a single request
        drops it to 0 (an idle lease gives everything back). A shorter interval keeps the rate
        and goes on counting."""
        since = self._measuring_since
        if since is not None and (now - since).total_seconds() < self.policy.rate_window_s:
            return
        elapsed = max(0.01, (now - since).total_seconds()) if since else 1.0
        d, r = self._demand, self._rate
        if d.requests:
            fresh = _Demand(math.ceil(d.requests / elapsed), math.ceil(d.tokens / elapsed),
                            d.usd / Decimal(repr(elapsed)), d.peak_slots)
            self._rate = _Demand((fresh.requests + r.requests + 1) // 2, (fresh.tokens + r.tokens + 1) // 2,
                                 (fresh.usd + r.usd) / 2, fresh.peak_slots)
        else:
            self._rate = _Demand(peak_slots=d.peak_slots)
        self._demand = _Demand(peak_slots=self.in_use.slots or 0)
        self._measuring_since = now

    def _target(self) -> Units:
        """Free units wanted after the sync: `horizon_s` of the recent demand per second, and
        room for the peak concurrency plus a quarter."""
        h = self.policy.horizon_s
        r = self._rate
        in_flight = self.in_use.slots or 0
        slots = max(0, math.ceil(r.peak_slots * 1.25) - in_flight) + (1 if r.requests else 0)
        return Units(math.ceil(r.requests * h), math.ceil(r.tokens * h),
                     (r.usd * Decimal(str(h))).quantize(PICO, rounding=ROUND_UP), slots).tracked(self.limits)


def _next_midnight(t: datetime) -> datetime:
    t = t.astimezone(timezone.utc)
    return datetime(t.year, t.month, t.day, tzinfo=timezone.utc) + timedelta(days=1)


def lease_day(now: datetime) -> tuple[str, str]:
    return day_key(now), month_key(now)


__all__ = ["KINDS", "Lease", "Others", "Policy", "Report", "SyncGrant", "Ticket", "Units", "grant", "room",
           "tenant_view", "units_of", "WINDOW_S"]
