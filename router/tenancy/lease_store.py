"""Quota leases in the database: grant, renew, return and settle in one transaction per sync.

The arithmetic is router/tenancy/leases.py; this adapter reads what it needs under the tenant's
lock (the same lock as QuotaStore's per-request path: a PostgreSQL advisory transaction lock,
SQLite's BEGIN IMMEDIATE), lets `leases.grant` rule, and writes. One sync:

1. writes the ledger rows of the requests the lease settles (idempotent on request id) and adds
   the new ones to the day and month counters, as QuotaStore.settle does, in one statement each;
2. reads the tenant's state without leases (QuotaStore._state: settled counters, per-request
   reservations, the ledger's minute window) and what the other leases hold;
3. sets this lease's holding (`quota_leases`, one row per ingress and tenant) to what the grant
   decided, its expiry to now + ttl, and flags the other leases for recall when an ask was refused
   only because of their spare.

A lease row is dead once `expires_at + skew_s` has passed: nothing sweeps it for the limits to
come free; rows dead for over a minute (the window) are deleted by the tenant's next sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import (BigInteger, Column, Index, Integer, String, Table, and_, bindparam, case, delete, func, select,
                        type_coerce, update)
from sqlalchemy.dialects import postgresql, sqlite

from router.tenancy.directory import TENANT_NAME_CHARS
from router.tenancy.leases import Lease, Others, Policy, Report, SyncGrant, Ticket, Units, grant, tenant_view
from router.tenancy.quota import WINDOW_S, Ask, Limits, Refusal, Spend, TenantState, day_key, month_key
from router.tenancy.store import (REFUSED, Money, Outcome, QuotaStore, RequestInfo, UTCDateTime, metadata, utcnow)

leases = Table(
    "quota_leases", metadata,
    Column("lease_id", String(64), primary_key=True),
    Column("tenant", String(TENANT_NAME_CHARS), nullable=False),
    Column("ingress_id", String(64), nullable=False),
    # Held units (NULL: the tenant has no limit of that kind): in use + free at the ingress.
    Column("requests", BigInteger), Column("tokens", BigInteger), Column("usd", Money), Column("slots", Integer),
    # Free at the last sync: an upper bound of what a recall can give back.
    Column("free_requests", BigInteger), Column("free_tokens", BigInteger), Column("free_usd", Money),
    Column("free_slots", Integer),
    Column("recall", Integer, nullable=False, default=0),
    Column("day", String(10), nullable=False),  # UTC day and month of the last sync
    Column("month", String(7), nullable=False),
    Column("synced_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_quota_leases_tenant", "tenant"),
)


@dataclass(frozen=True)
class Settlement:
    """One request settled from a lease: its ledger row."""

    info: RequestInfo  # started_at: its admission time (its day, month and minute window)
    outcome: Outcome
    finished_at: datetime


class _LeaseStatements:
    def __init__(self, dialect: str):
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        c = leases.c
        tenant, lease_id = bindparam("tenant"), bindparam("lease_id")
        live = c.expires_at > bindparam("live_since", type_=UTCDateTime)
        in_window = c.expires_at > bindparam("window_since", type_=UTCDateTime)

        def total(expr, money=False):
            value = func.coalesce(func.sum(expr), 0)
            return type_coerce(value, Money) if money else value

        self.others = select(
            func.count(case((live, 1))),
            total(case((in_window, c.requests), else_=0)), total(case((in_window, c.tokens), else_=0)),
            total(case((live, c.slots), else_=0)),
            total(case((and_(live, c.day == bindparam("day")), c.tokens), else_=0)),
            total(case((and_(live, c.day == bindparam("day")), c.usd), else_=0), True),
            total(case((and_(live, c.month == bindparam("month")), c.tokens), else_=0)),
            total(case((and_(live, c.month == bindparam("month")), c.usd), else_=0), True),
            total(case((live, c.free_requests), else_=0)), total(case((live, c.free_tokens), else_=0)),
            total(case((live, c.free_usd), else_=0), True), total(case((live, c.free_slots), else_=0)),
        ).where(c.tenant == tenant, c.lease_id != lease_id)
        self.own = select(c.recall).where(c.lease_id == lease_id)
        upsert = insert(leases)
        self.put = upsert.on_conflict_do_update(
            index_elements=[c.lease_id],
            set_={name: upsert.excluded[name] for name in (
                "tenant", "ingress_id", "requests", "tokens", "usd", "slots", "free_requests", "free_tokens",
                "free_usd", "free_slots", "recall", "day", "month", "synced_at", "expires_at")})
        self.recall = (update(leases).where(c.tenant == bindparam("r_tenant"), c.lease_id != bindparam("r_lease"),
                                            c.expires_at > bindparam("r_live_since", type_=UTCDateTime))
                       .values(recall=1))
        self.drop = delete(leases).where(c.lease_id == lease_id)
        # Settle-only: the holding shrinks by what was settled; free units stay free at the ingress.
        self.shrink = (update(leases).where(c.lease_id == bindparam("s_lease"),
                                            c.expires_at > bindparam("s_live_since", type_=UTCDateTime))
                       .values(requests=bindparam("requests"), tokens=bindparam("tokens"),
                               usd=bindparam("usd", type_=Money), slots=bindparam("slots"))
                       .returning(c.recall))
        self.gc = delete(leases).where(c.tenant == tenant, c.expires_at < bindparam("dead_since", type_=UTCDateTime))


class LeaseStore(QuotaStore):
    """QuotaStore plus leases: same engine, tables and tenant lock; `sync` is the lease path."""

    def __init__(self, url: str, *, policy: Policy | None = None, reservation_ttl_s: float = 15.0):
        super().__init__(url, reservation_ttl_s=reservation_ttl_s)  # creates quota_leases with the rest
        self.policy = policy or Policy()
        self._lsql = _LeaseStatements(self.engine.dialect.name)

    def sync(self, lease_id: str, tenant: str, ingress_id: str, limits: Limits, report: Report,
             settlements: Sequence[Settlement] = (), *, ask_info: RequestInfo | None = None,
             now: datetime | None = None, final: bool = False) -> SyncGrant:
        """One transaction: write `settlements`, then set the lease's holding by `leases.grant`.
        `ask_info` names the request of `report.ask`: a refusal writes its `refused` row, unless
        it is recallable and not `final` (the caller retries once other leases give back spare)."""
        p = self.policy
        with self._tenant_tx(tenant) as conn:
            self._settle(conn, tenant, settlements)
            now = now or utcnow()  # read under the lock: the expiry counts from after any wait
            day, month = day_key(now), month_key(now)
            params = self._params(tenant, lease_id, now)
            others = self._others(conn, params, limits)
            own = conn.execute(self._lsql.own, params).first()
            recall = bool(own and own.recall)
            base = self._state(conn, tenant, now, limits)
            result = grant(limits, base, others, report, recall=recall, final=final)
            held, free = result.held, report.bridge.tracked(limits) + result.spare
            if report.returning and not any(v for _, v in held.items()):
                conn.execute(self._lsql.drop, params)  # nothing in use: no window units to keep
            else:
                conn.execute(self._lsql.put, {
                    "lease_id": lease_id, "tenant": tenant, "ingress_id": ingress_id,
                    "requests": held.requests, "tokens": held.tokens, "usd": held.usd, "slots": held.slots,
                    "free_requests": free.requests, "free_tokens": free.tokens, "free_usd": free.usd,
                    "free_slots": free.slots, "recall": 0, "day": day, "month": month, "synced_at": now,
                    "expires_at": now + timedelta(seconds=p.ttl_s)})
            if result.recallable:
                conn.execute(self._lsql.recall, {"r_tenant": tenant, "r_lease": lease_id,
                                                 "r_live_since": params["live_since"]})
            if isinstance(result.decision, Refusal) and ask_info is not None and (final or not result.recallable):
                d = result.decision
                self._write_row(conn, ask_info, Outcome(REFUSED, error=f"{d.limit}: {d.message}"[:512]), now)
            conn.execute(self._lsql.gc, {"tenant": tenant,
                                         "dead_since": now - timedelta(seconds=WINDOW_S + p.skew_s)})
            return result

    def settle_sync(self, lease_id: str, tenant: str, holding: Units, settlements: Sequence[Settlement],
                    now: datetime | None = None) -> bool:
        """A settle-only sync, one transaction: write `settlements` (idempotent, counted once)
        and lower the lease's holding to `holding` (what is left once they leave it: never more
        than it held, so no limit needs reading), without renewing it. Returns whether another
        ingress asked for this lease's spare. A lease the database no longer has just writes."""
        now = now or utcnow()
        with self._tenant_tx(tenant) as conn:
            self._settle(conn, tenant, settlements)
            row = conn.execute(self._lsql.shrink, {
                "s_lease": lease_id, "s_live_since": now - timedelta(seconds=self.policy.skew_s),
                "requests": holding.requests, "tokens": holding.tokens, "usd": holding.usd, "slots": holding.slots}
            ).first()
            return bool(row and row.recall)

    def _params(self, tenant: str, lease_id: str, now: datetime) -> dict:
        p = self.policy
        return {"tenant": tenant, "lease_id": lease_id, "day": day_key(now), "month": month_key(now),
                "live_since": now - timedelta(seconds=p.skew_s),
                "window_since": now - timedelta(seconds=WINDOW_S + p.skew_s)}

    def _others(self, conn, params: dict, limits: Limits) -> Others:
        o = conn.execute(self._lsql.others, params).one()
        return Others(int(o[1]), int(o[2]), int(o[3]), Spend(int(o[4]), o[5]), Spend(int(o[6]), o[7]),
                      Units(int(o[8]), int(o[9]), o[10], int(o[11])).tracked(limits), int(o[0]))

    def _admission_state(self, conn, tenant: str, now: datetime, limits: Limits) -> TenantState:
        """A per-request reservation counts every live lease too (an ingress with `quota_leases`
        off beside one with it on, e.g. while a redeploy flips it, still admits exactly)."""
        base = self._state(conn, tenant, now, limits)
        return tenant_view(limits, base, self._others(conn, self._params(tenant, "", now), limits), Units.zero(limits))

    def _settle(self, conn, tenant: str, settlements: Sequence[Settlement]) -> None:
        """Ledger rows in one statement; the counters of the rows that were new (a replayed sync
        adds nothing), per UTC day and month of each request's start."""
        if settlements:
            self._settle_rows(conn, tenant, [(s.info, s.outcome, s.finished_at) for s in settlements], release=False)

    # ---- reading (tests, operators) -------------------------------------------------------
    def lease_rows(self, tenant: str | None = None) -> list[dict]:
        stmt = select(leases).order_by(leases.c.lease_id)
        if tenant is not None:
            stmt = stmt.where(leases.c.tenant == tenant)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]


class LeaseHolder:
    """One tenant's lease at one ingress, driven synchronously: admit in memory, sync when due.

    The plumbing the live ingress will put on its database thread (not wired in yet): `admit`
    costs a few microseconds while the lease covers the ask, else one sync with the ask;
    `finish` queues the request's ledger row for the next sync; `tick` runs a sync when one is
    due (renewal, settlements waiting, free units low, a recall); `close` settles and returns."""

    def __init__(self, store: LeaseStore, tenant: str, limits: Limits, ingress_id: str, lease_id: str | None = None):
        self.store, self.tenant, self.limits, self.ingress_id = store, tenant, limits, ingress_id
        self.lease_id = lease_id or f"{ingress_id}:{tenant}"[:64]
        self.lease = Lease(limits, store.policy)
        self.syncs = 0

    def admit(self, ask: Ask, info: RequestInfo, now: datetime | None = None) -> Ticket | Refusal:
        """A ticket (admitted; `decision` on the ticket when the database clamped it) or a refusal
        (`recallable` on the lease: retrying after the other leases' next sync may admit it)."""
        now = now or utcnow()
        ticket = self.lease.admit(ask, now, info)
        if ticket is not None:
            return ticket
        result, ticket = self.sync(now, ask=ask, ask_info=info)
        if ticket is None and result.decision is None:  # a clamp the others' spare would widen: take it now
            result, ticket = self.sync(now, ask=ask, ask_info=info, final=True)
        if ticket is None:
            return result.decision if isinstance(result.decision, Refusal) else _no_lease(ask)
        ticket.decision = result.decision
        return ticket

    def finish(self, ticket: Ticket, outcome: Outcome, finished_at: datetime | None = None) -> None:
        info = replace(ticket.payload, started_at=ticket.admitted_at)
        self.lease.finish(ticket, Settlement(info, outcome, finished_at or utcnow()))

    def tick(self, now: datetime | None = None) -> str | None:
        now = now or utcnow()
        reason = self.lease.sync_due(now)
        if reason is not None:
            self.sync(now)
        return reason

    def sync(self, now: datetime | None = None, *, ask: Ask | None = None, ask_info: RequestInfo | None = None,
             returning: bool = False, final: bool = False) -> tuple[SyncGrant, Ticket | None]:
        now = now or utcnow()
        report, settlements = self.lease.begin_sync(now, ask, returning=returning)
        try:
            result = self.store.sync(self.lease_id, self.tenant, self.ingress_id, self.limits, report, settlements,
                                     ask_info=ask_info, now=now, final=final)
        except BaseException:
            self.lease.abort_sync()
            raise
        self.syncs += 1
        return result, self.lease.end_sync(result, ask_info)

    def close(self, now: datetime | None = None) -> SyncGrant:
        """Settle what waits and give back every free unit (an ingress that stops)."""
        return self.sync(now, returning=True)[0]


def _no_lease(ask: Ask) -> Refusal:  # pragma: no cover - a granted ask always yields a ticket
    raise AssertionError(f"granted ask {ask} produced no ticket")


__all__ = ["LeaseHolder", "LeaseStore", "Settlement", "leases"]
