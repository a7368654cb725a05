"""The quota state and the usage ledger, in one SQL database shared by every ingress replica.

Why the database holds the quota state (and not an actor or local counters): a reservation and
the ledger row that settles it commit in the same transaction as the counters they change, so a
crash of any process (an ingress replica, the database client, the server itself on restart)
can neither reset a spent budget nor bill a request twice, and there is no state to rebuild.
Each decision runs under a per-tenant lock (PostgreSQL: an advisory transaction lock; SQLite:
BEGIN IMMEDIATE), so concurrent requests on any number of ingress replicas see each other's
reservations. On this machine one transaction costs well under a Ray actor round trip.

Tables: `usage_ledger` (one row per request, idempotent on request_id), `quota_reservations`
(requests in flight, each with an expiry its ingress keeps renewing), `quota_counters` (settled
tokens and dollars per tenant per UTC day and month).
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import (BigInteger, bindparam, case, Column, DateTime, Index, Integer, MetaData, String, Table, TypeDecorator,
                        create_engine, delete, event, func, inspect, select, type_coerce, update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url

from router.tenancy.directory import TENANT_NAME_CHARS
from router.tenancy.pricing import from_pico, to_pico
from router.tenancy.quota import (WINDOW_S, Ask, Grant, Limits, Refusal, Spend, TenantState, WindowSummary,
                                  after_grant, day_key, decide, month_key, needs_window)

log = logging.getLogger("ray.serve")

COMPLETED, CANCELLED, FAILED, REFUSED, EXPIRED = "completed", "cancelled", "failed", "refused", "expired"
CLIENT_ID_CHARS = 256


class Money(TypeDecorator):
    """Dollars as Decimal in Python, whole picodollars in the database: exact on every backend."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else to_pico(Decimal(value))

    def process_result_value(self, value, dialect):
        return None if value is None else from_pico(int(value))


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps them as naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = MetaData()

ledger = Table(
    "usage_ledger", metadata,
    Column("request_id", String(64), primary_key=True),  # unique per request, made by the router
    Column("client_request_id", String(CLIENT_ID_CHARS)),  # the x-request-id the client saw
    Column("tenant", String(TENANT_NAME_CHARS), nullable=False),
    Column("route", String(32)),
    Column("model", String(128)),
    Column("pool", String(64)),
    Column("replica", String(128)),
    Column("node_id", String(64)),
    Column("accelerator", String(64)),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("cost_usd", Money, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", String(512)),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("trace_id", String(32)),  # filled by tracing
    Index("ix_usage_ledger_tenant_started", "tenant", "started_at"),
    Index("ix_usage_ledger_started", "started_at"),
)

reservations = Table(
    "quota_reservations", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("tenant", String(TENANT_NAME_CHARS), nullable=False),
    Column("ingress_id", String(64), nullable=False),
    Column("client_request_id", String(CLIENT_ID_CHARS)),
    Column("route", String(32)),
    Column("model", String(128)),
    Column("pool", String(64)),
    Column("prompt_tokens", Integer, nullable=False),
    Column("tokens", Integer, nullable=False),  # worst case: prompt + max_tokens
    Column("cost_usd", Money, nullable=False),  # worst case
    Column("reserved_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_quota_reservations_tenant", "tenant"),
    Index("ix_quota_reservations_ingress", "ingress_id"),
    Index("ix_quota_reservations_tenant_reserved", "tenant", "reserved_at"),  # a window's oldest / newest
)

# Admissions per tenant per UTC second (epoch seconds), for the minute windows: every change to the
# entries a window counts (a reservation, a ledger row that is not `refused`: 1 request, its
# tokens, at its admission time) is added here in the same transaction, so a window is read as
# <= 60 bucket rows plus the entries of its oldest, partial second, not every admission of the
# last minute (whose cost grew with the tenant's rate: 6.9 ms per reserve + settle at 12 000).
window_buckets = Table(
    "quota_window", metadata,
    Column("tenant", String(TENANT_NAME_CHARS), primary_key=True),
    Column("second", BigInteger, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
)

counters = Table(
    "quota_counters", metadata,
    Column("tenant", String(TENANT_NAME_CHARS), primary_key=True),
    Column("period", String(10), primary_key=True),  # '2026-11-22' (UTC day) or '2026-11' (month)
    Column("requests", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("cost_usd", Money, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def epoch_second(at: datetime) -> int:
    """The UTC second `at` falls in (integer arithmetic: no float rounding at .999999)."""
    return (at - _EPOCH) // timedelta(seconds=1)


@dataclass
class RequestInfo:
    """What the ledger needs to know of a request before it runs."""

    request_id: str
    tenant: str
    client_request_id: str | None = None
    route: str | None = None
    model: str | None = None
    pool: str | None = None
    started_at: datetime | None = None
    trace_id: str | None = None  # the request's OpenTelemetry trace: a bill line leads to it

    def __post_init__(self) -> None:
        # The client's x-request-id may be of any length; the column keeps the first 256 characters.
        if self.client_request_id is not None and len(self.client_request_id) > CLIENT_ID_CHARS:
            self.client_request_id = self.client_request_id[:CLIENT_ID_CHARS]

    def as_report(self) -> dict:
        """Plain values a replica carries back in an orphan report (started_at as ISO text)."""
        return {**vars(self), "started_at": self.started_at.isoformat() if self.started_at else None}

    @classmethod
    def from_report(cls, report: dict) -> "RequestInfo":
        started = report.get("started_at")
        fields = {k: (None if report.get(k) is None else str(report[k]))
                  for k in ("client_request_id", "route", "model", "pool", "trace_id")}
        return cls(str(report["request_id"]), str(report["tenant"]), **fields,
                   started_at=datetime.fromisoformat(started) if started else None)


@dataclass(frozen=True)
class OrphanUsage:
    """What a replica generated for a request whose ingress died (deployments/caller_watch.py)."""

    request_id: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    finished: bool
    replica: str | None = None
    node_id: str | None = None
    accelerator: str | None = None
    pool: str | None = None
    info: "RequestInfo | None" = None  # the ledger row's fields, for a request with no reservation row


def _orphan_error(report: OrphanUsage) -> str:
    return ("its ingress died after the answer was generated; billed as its replica counted" if report.finished
            else "its ingress died mid-answer; billed what its replica generated until it stopped")


@dataclass
class Outcome:
    """How a request ended, from the usage the engine reported (or the tokens delivered)."""

    status: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    replica: str | None = None
    node_id: str | None = None
    accelerator: str | None = None
    error: str | None = None


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (SQLAlchemy's default PostgreSQL driver is psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")  # in WAL: a commit survives a process crash
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            # Writers take the write lock first (no lock-upgrade deadlocks); readers never lock.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("read_only") else "BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"ledger URL must be sqlite:///... or postgresql://..., not {parsed.get_backend_name()!r}")
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


class _Statements:
    """Every statement of the request path, built once: SQLAlchemy then reuses its cache key and
    compiled form, which is most of the cost of a statement built anew per call."""

    def __init__(self, dialect: str):
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        r, c, g = reservations.c, counters.c, ledger.c
        tenant = bindparam("tenant")
        self.lock = select(func.pg_advisory_xact_lock(bindparam("key"))) if dialect == "postgresql" else None
        self.reserve = insert(reservations)
        # rowcount of an INSERT tells whether the row was new: SQLAlchemy keeps it only when asked.
        self.write_row = (insert(ledger).on_conflict_do_nothing(index_elements=[g.request_id])
                          .execution_options(preserve_rowcount=True))
        # An `expired` row nobody has billed yet (no replica named): the truth may still replace it,
        # once: from its own ingress (it stalled past the expiry) or from its replica (the ingress
        # died: bill_orphans). Either names the replica, so the row cannot be billed twice.
        unbilled = (g.request_id == bindparam("rid"), g.status == EXPIRED, g.replica.is_(None))
        # The row keeps its started_at (its reservation's time: the day and month it counts in).
        self.replace_expired = (update(ledger).where(*unbilled)
                                .values({col: bindparam(col) for col in _ROW_COLUMNS if col != "started_at"})
                                .returning(g.started_at))
        self.bill_orphan = update(ledger).where(*unbilled).values({col: bindparam(col) for col in _ORPHAN_COLUMNS})
        upsert = insert(counters)
        self.count = upsert.on_conflict_do_update(
            index_elements=[c.tenant, c.period],
            set_={"requests": c.requests + upsert.excluded.requests, "tokens": c.tokens + upsert.excluded.tokens,
                  "cost_usd": c.cost_usd + upsert.excluded.cost_usd})
        self.release = (delete(reservations).where(r.request_id.in_(bindparam("ids", expanding=True)))
                        .returning(r.request_id, r.reserved_at, r.tokens))
        # Many rows in one statement; RETURNING says which were new (a replayed one is not).
        self.write_rows = (insert(ledger).on_conflict_do_nothing(index_elements=[g.request_id])
                           .returning(g.request_id, sort_by_parameter_order=True))
        self.expire = (delete(reservations).where(r.tenant == tenant, r.expires_at < bindparam("now"))
                       .returning(*reservations.c))
        # A tenant's whole state in one statement: in-flight worst cases by period, settled
        # counters, and (for minute limits) the last minute's admissions as sums.
        day, month = bindparam("day_start", type_=UTCDateTime), bindparam("month_start", type_=UTCDateTime)

        def scalar(column, table_where, money=False):
            value = select(func.coalesce(column, 0)).where(*table_where).scalar_subquery()
            return type_coerce(value, Money) if money else value

        def live(column, since, money=False):
            return scalar(func.sum(case((r.reserved_at >= since, column), else_=0)), [r.tenant == tenant], money)

        def settled(column, period, money=False):
            return scalar(func.sum(column), [c.tenant == tenant, c.period == bindparam(period)], money)

        state = [scalar(func.count(), [r.tenant == tenant]),
                 live(r.tokens, day), live(r.cost_usd, day, True), live(r.tokens, month), live(r.cost_usd, month, True),
                 settled(c.tokens, "day"), settled(c.cost_usd, "day", True),
                 settled(c.tokens, "month"), settled(c.cost_usd, "month", True)]
        since = bindparam("since", type_=UTCDateTime)
        self.window = select(r.reserved_at.label("at"), r.tokens.label("tokens")).where(
            r.tenant == tenant, r.reserved_at > since).union_all(
            select(g.started_at, g.prompt_tokens + g.completion_tokens)
            .where(g.tenant == tenant, g.started_at > since, g.status != REFUSED))
        # The window from buckets: the whole seconds after `since` summed, the oldest (partial)
        # second's entries read one by one, and the oldest and newest entries found by index.
        w = window_buckets.c
        until = bindparam("partial_end", type_=UTCDateTime)
        partial = select(r.reserved_at.label("at"), r.tokens.label("tokens")).where(
            r.tenant == tenant, r.reserved_at > since, r.reserved_at < until).union_all(
            select(g.started_at, g.prompt_tokens + g.completion_tokens)
            .where(g.tenant == tenant, g.started_at > since, g.started_at < until, g.status != REFUSED)).subquery()
        window_sums = [
            select(func.count()).select_from(partial).scalar_subquery(),
            select(func.coalesce(func.sum(partial.c.tokens), 0)).scalar_subquery(),
            select(func.coalesce(func.sum(w.requests), 0)).where(
                w.tenant == tenant, w.second >= bindparam("first_whole")).scalar_subquery(),
            select(func.coalesce(func.sum(w.tokens), 0)).where(
                w.tenant == tenant, w.second >= bindparam("first_whole")).scalar_subquery()]

        def edge(column, where, last: bool):
            order = column.desc() if last else column
            return type_coerce(select(column).where(*where).order_by(order).limit(1).scalar_subquery(), UTCDateTime)

        r_in, g_in = (r.tenant == tenant, r.reserved_at > since), (g.tenant == tenant, g.started_at > since,
                                                                 g.status != REFUSED)
        edges = [edge(r.reserved_at, r_in, False), edge(g.started_at, g_in, False),
                 edge(r.reserved_at, r_in, True), edge(g.started_at, g_in, True)]
        self.state = select(*state)
        self.state_with_window = select(*state, *window_sums, *edges)
        bump = insert(window_buckets)
        self.bump = bump.on_conflict_do_update(
            index_elements=[w.tenant, w.second],
            set_={"requests": w.requests + bump.excluded.requests, "tokens": w.tokens + bump.excluded.tokens})
        self.forget_buckets = delete(window_buckets).where(w.second < bindparam("before"))
        self.renew = (update(reservations).where(r.ingress_id == bindparam("ingress"))
                      .values(expires_at=bindparam("expires_at", type_=UTCDateTime)))
        self.renew_some = self.renew.where(r.request_id.in_(bindparam("ids", expanding=True)))


_ROW_COLUMNS = [c.name for c in ledger.columns if c.name != "request_id"]
_ORPHAN_COLUMNS = ["prompt_tokens", "completion_tokens", "reasoning_tokens", "cost_usd", "replica", "node_id",
                   "accelerator", "error"]
_SCHEMA_LOCK = 0x6D61_6769  # advisory lock key held while creating the tables


class QuotaStore:
    """Thin adapter: reads a tenant's state under its lock, lets quota.decide rule, writes."""

    def __init__(self, url: str, *, reservation_ttl_s: float = 15.0):
        self.engine = make_engine(url)
        self.ttl = timedelta(seconds=reservation_ttl_s)
        self._sql = _Statements(self.engine.dialect.name)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # replicas starting together: one creates the tables
                conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            had_buckets = inspect(conn).has_table(window_buckets.name)
            metadata.create_all(conn)
            for index in reservations.indexes:  # one added to an existing table by a later version
                index.create(conn, checkfirst=True)
            if not had_buckets:
                self._fill_buckets(conn)

    def _fill_buckets(self, conn: Connection) -> None:
        """A ledger from before the buckets: count the last two minutes' entries into them once
        (under the schema lock), so no window starts empty."""
        r, g = reservations.c, ledger.c
        since = utcnow() - timedelta(seconds=2 * WINDOW_S)
        entries = select(r.tenant, r.reserved_at, r.tokens).where(r.reserved_at > since).union_all(
            select(g.tenant, g.started_at, g.prompt_tokens + g.completion_tokens)
            .where(g.started_at > since, g.status != REFUSED))
        by_tenant: dict[str, list] = {}
        for tenant, at, tokens in conn.execute(entries):
            at = at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
            by_tenant.setdefault(tenant, []).append((at, 1, int(tokens)))
        for tenant, changes in by_tenant.items():
            self._bump(conn, tenant, changes)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn.execution_options(read_only=True)

    @contextmanager
    def _tenant_tx(self, tenant: str) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            if self._sql.lock is not None:
                conn.execute(self._sql.lock, {"key": zlib.crc32(tenant.encode())})
            yield conn

    # ---- admission ------------------------------------------------------------------------
    def reserve(self, info: RequestInfo, ingress_id: str, limits: Limits, ask: Ask) -> Grant | Refusal:
        return self.reserve_many(ingress_id, [(info, limits, ask)])[0]

    def reserve_many(self, ingress_id: str, batch: Sequence[tuple[RequestInfo, Limits, Ask]]) -> list[Grant | Refusal]:
        """Reserve requests of ONE tenant in one transaction (a group commit), decided in order:
        each sees the ones granted before it, exactly as if each had its own transaction. The
        state is read once and carried forward in memory (quota.after_grant) while the time and
        the limits stay the same; otherwise it is read again after writing what came before."""
        tenant = batch[0][0].tenant
        assert all(info.tenant == tenant for info, _, _ in batch), "one tenant per batch"
        out: list[Grant | Refusal] = []
        with self._tenant_tx(tenant) as conn:
            now = utcnow()  # read under the lock: a wait for it is not back-dated
            pending: list[dict] = []  # reservations decided, not yet written
            state: TenantState | None = None
            read_for: tuple | None = None

            def flush() -> None:
                if pending:
                    conn.execute(self._sql.reserve, pending)
                    self._bump(conn, tenant, [(p["reserved_at"], 1, p["tokens"]) for p in pending])
                    pending.clear()

            for info, limits, ask in batch:
                at = info.started_at or now
                if state is None or read_for != (at, limits):
                    flush()
                    state, read_for = self._admission_state(conn, tenant, at, limits), (at, limits)
                decision = decide(limits, state, ask)
                if needs_window(decision, state):  # an exact Retry-After needs the single admissions
                    flush()
                    exact = decide(limits, replace(state, window_summary=None, window=self._window(conn, tenant, at)), ask)
                    # Only for its Retry-After: the entries alone do not hold what quota leases count.
                    decision = exact if isinstance(exact, Refusal) else decision
                if isinstance(decision, Grant):
                    pending.append({
                        "request_id": info.request_id, "tenant": tenant, "ingress_id": ingress_id,
                        "client_request_id": info.client_request_id, "route": info.route, "model": info.model,
                        "pool": info.pool, "prompt_tokens": ask.prompt_tokens, "tokens": decision.tokens,
                        "cost_usd": decision.usd, "reserved_at": at, "expires_at": at + self.ttl})
                    state = after_grant(state, decision)
                else:
                    self._write_row(conn, info, Outcome(REFUSED, error=f"{decision.limit}: {decision.message}"[:512]), at)
                out.append(decision)
            flush()
        return out

    def _state(self, conn: Connection, tenant: str, now: datetime, limits: Limits) -> TenantState:
        """The tenant's usage at `now`, summed in SQL: only minute limits need the window."""
        today, month = day_key(now), month_key(now)
        day_start = datetime.strptime(today, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        minute = limits.requests_per_minute is not None or limits.tokens_per_minute is not None
        since = now - timedelta(seconds=WINDOW_S)
        first_whole = epoch_second(since) + 1  # buckets from here on lie wholly inside the window
        row = conn.execute(self._sql.state_with_window if minute else self._sql.state, {
            "tenant": tenant, "day_start": day_start, "month_start": day_start.replace(day=1), "day": today,
            "month": month, "since": since, "first_whole": first_whole,
            "partial_end": _EPOCH + timedelta(seconds=first_whole)}).one()
        in_flight, live_day, live_day_usd, live_month, live_month_usd = row[:5]
        settled_day, settled_day_usd, settled_month, settled_month_usd = row[5:9]
        summary = None
        if minute:
            olds, news = [t for t in row[13:15] if t is not None], [t for t in row[15:17] if t is not None]
            summary = WindowSummary(int(row[9]) + int(row[11]), int(row[10]) + int(row[12]),
                                    min(olds, default=None), max(news, default=None))
        return TenantState(
            now=now, in_flight=int(in_flight), window=(), window_summary=summary,
            day=Spend(int(settled_day) + int(live_day), settled_day_usd + live_day_usd),
            month=Spend(int(settled_month) + int(live_month), settled_month_usd + live_month_usd),
        )

    def _admission_state(self, conn: Connection, tenant: str, now: datetime, limits: Limits) -> TenantState:
        """What a per-request reservation is decided against (LeaseStore adds live leases)."""
        return self._state(conn, tenant, now, limits)

    def _bump(self, conn: Connection, tenant: str, changes: Iterable[tuple[datetime, int, int]]) -> None:
        """Add (requests, tokens) changes of window entries to their seconds' buckets."""
        sums: dict[int, list[int]] = {}
        for at, requests, tokens in changes:
            if requests or tokens:
                bucket = sums.setdefault(epoch_second(at), [0, 0])
                bucket[0] += requests
                bucket[1] += tokens
        if sums:
            conn.execute(self._sql.bump, [{"tenant": tenant, "second": second, "requests": v[0], "tokens": v[1]}
                                          for second, v in sorted(sums.items())])

    @staticmethod
    def _since(tenant: str, now: datetime) -> dict:
        return {"tenant": tenant, "since": now - timedelta(seconds=WINDOW_S)}

    def _window(self, conn: Connection, tenant: str, now: datetime) -> tuple:
        return tuple((at, int(tokens)) for at, tokens in conn.execute(self._sql.window, self._since(tenant, now)))

    # ---- settlement -----------------------------------------------------------------------
    def settle(self, info: RequestInfo, outcome: Outcome, finished_at: datetime | None = None) -> bool:
        """Replace the reservation by the real usage: ledger row + counters, one transaction.
        Idempotent: a second settlement of the same request changes nothing (returns False)."""
        return self.settle_many([(info, outcome, finished_at or utcnow())])[0]

    def settle_many(self, batch: Sequence[tuple[RequestInfo, Outcome, datetime]]) -> list[bool]:
        """settle() for requests of ONE tenant in one transaction (a group commit): reservations
        released, rows written in one statement, counters summed per UTC day and month. Returns,
        per request, whether its row was new (or replaced an unbilled `expired` one)."""
        tenant = batch[0][0].tenant
        assert all(info.tenant == tenant for info, _, _ in batch), "one tenant per batch"
        first = {}  # a request settled twice in one batch: the first settlement stands
        for i, (info, _, _) in enumerate(batch):
            first.setdefault(info.request_id, i)
        unique = [batch[i] for i in sorted(first.values())]
        with self._tenant_tx(tenant) as conn:
            counted = dict(zip(sorted(first.values()), self._settle_rows(conn, tenant, unique, release=True)))
        return [counted.get(i, False) for i in range(len(batch))]

    def _settle_rows(self, conn: Connection, tenant: str, batch: Sequence[tuple[RequestInfo, Outcome, datetime]],
                     *, release: bool) -> list[bool]:
        held: dict[str, tuple[datetime, int]] = {}
        if release:
            ids = [info.request_id for info, _, _ in batch]
            held = {rid: (at, tokens) for rid, at, tokens in conn.execute(self._sql.release, {"ids": ids})}
        settled = [(replace(info, started_at=held[info.request_id][0] if info.request_id in held
                             else info.started_at or finished_at), outcome, finished_at)
                   for info, outcome, finished_at in batch]
        window = [(at, -1, -tokens) for at, tokens in held.values()]  # the reservations leave the window
        values = [self._row_values(info, outcome, finished_at) for info, outcome, finished_at in settled]
        written = {rid for (rid,) in conn.execute(self._sql.write_rows, values)}
        counted = []
        for i, ((info, outcome, finished_at), row) in enumerate(zip(settled, values)):
            new = info.request_id in written
            if not new:
                # Only an unbilled `expired` row (its ingress stalled past the expiry) gives way to the truth.
                kept = conn.execute(self._sql.replace_expired, {
                    "rid": info.request_id, **{k: row[k] for k in _ROW_COLUMNS if k != "started_at"}}).first()
                new = kept is not None
                if new:  # the expired row was in the window with 0 tokens
                    settled[i] = (replace(info, started_at=kept.started_at), outcome, finished_at)
                    window.append((kept.started_at, 0, outcome.prompt_tokens + outcome.completion_tokens))
            else:
                window.append((info.started_at, 1, outcome.prompt_tokens + outcome.completion_tokens))
            counted.append(new)
        self._bump(conn, tenant, window)
        self._count(conn, tenant, [(info.started_at, outcome.prompt_tokens + outcome.completion_tokens, outcome.cost_usd)
                                   for (info, outcome, _), new in zip(settled, counted) if new])
        return counted

    def _count(self, conn: Connection, tenant: str, billed: Iterable[tuple[datetime, int, Decimal]]) -> None:
        """Add billed requests (started at, tokens, dollars) to the tenant's counters of the UTC
        day and month each started in."""
        periods: dict[str, list] = {}
        for started, tokens, usd in billed:
            for period in (day_key(started), month_key(started)):
                sums = periods.setdefault(period, [0, 0, Decimal(0)])
                sums[0] += 1
                sums[1] += tokens
                sums[2] += usd
        if periods:
            conn.execute(self._sql.count, [{"tenant": tenant, "period": p, "requests": v[0], "tokens": v[1],
                                            "cost_usd": v[2]} for p, v in sorted(periods.items())])

    @staticmethod
    def _row_values(info: RequestInfo, outcome: Outcome, finished_at: datetime) -> dict:
        return {**vars(info), **vars(outcome), "finished_at": finished_at,
                "started_at": info.started_at or finished_at}

    def _write_row(self, conn: Connection, info: RequestInfo, outcome: Outcome, finished_at: datetime) -> bool:
        return conn.execute(self._sql.write_row, self._row_values(info, outcome, finished_at)).rowcount == 1

    # ---- expiry ---------------------------------------------------------------------------
    def renew(self, ingress_id: str, request_ids: Collection[str] | None = None, now: datetime | None = None) -> int:
        """Push back the expiry of the reservations of requests this ingress is still serving
        (`request_ids`; None: all it holds). One it no longer serves then expires."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            if request_ids is None:
                stmt, params = self._sql.renew, {"ingress": ingress_id}
            else:
                stmt, params = self._sql.renew_some, {"ingress": ingress_id, "ids": list(request_ids)}
            return conn.execute(stmt, {**params, "expires_at": now + self.ttl}).rowcount

    def expire(self, now: datetime | None = None) -> int:
        """Drop reservations whose ingress stopped renewing them; each leaves an `expired` row."""
        now = now or utcnow()
        with self._read() as conn:
            tenants = {t for (t,) in conn.execute(
                select(reservations.c.tenant).where(reservations.c.expires_at < now).distinct())}
        dropped = 0
        for tenant in tenants:
            with self._tenant_tx(tenant) as conn:
                dropped += self._expire(conn, now, tenant)
        with self.engine.begin() as conn:  # buckets no window reads any more (a late change may
            conn.execute(self._sql.forget_buckets, {"before": epoch_second(now) - 2 * int(WINDOW_S)})  # re-add one: harmless)
        return dropped

    def _expire(self, conn: Connection, now: datetime, tenant: str) -> int:
        stale = conn.execute(self._sql.expire, {"tenant": tenant, "now": now}).all()
        window = []
        for r in stale:
            info = RequestInfo(r.request_id, r.tenant, r.client_request_id, r.route, r.model, r.pool, r.reserved_at)
            new = self._write_row(conn, info, Outcome(EXPIRED, error="its ingress stopped renewing the reservation"), now)
            window.append((r.reserved_at, int(new) - 1, -r.tokens))  # reservation out, a 0-token row in
        self._bump(conn, tenant, window)
        return len(stale)

    def bill_orphans(self, reports: Iterable[OrphanUsage], cost: Callable[[str, OrphanUsage], Decimal]) -> tuple[int, set[str]]:
        """Bill what replicas generated for requests whose ingress died onto their `expired` rows:
        the row keeps its status, takes the tokens, the cost (`cost(tenant, report)`) and the
        replica, and the tokens count toward the tenant's spend, in one transaction per row.
        Returns (rows billed, ids done with: billed now or before, or settled otherwise). A report
        whose request has no row yet is left for a later call while its reservation lives; one
        admitted out of a quota lease (no reservation, and the report carries its `info`) gets
        its row now, `expired` and billed, counted as a settlement is."""
        by_id = {r.request_id: r for r in reports}
        if not by_id:
            return 0, set()
        g = ledger.c
        with self._read() as conn:
            rows = conn.execute(select(g.request_id, g.tenant, g.status, g.replica, g.started_at)
                                .where(g.request_id.in_(list(by_id)))).all()
            have_rows = {row.request_id for row in rows}
            unseen = [r for rid, r in by_id.items() if r.info is not None and rid not in have_rows]
            reserved = {rid for (rid,) in conn.execute(select(reservations.c.request_id).where(
                reservations.c.request_id.in_([r.request_id for r in unseen])))} if unseen else set()
        billed, done = self._bill_leased_orphans([r for r in unseen if r.request_id not in reserved], cost)
        for row in rows:
            if row.status != EXPIRED or row.replica is not None:
                continue
            report = by_id[row.request_id]
            try:
                usd = cost(row.tenant, report)
            except (KeyError, ValueError) as exc:  # e.g. a pool no longer priced: bill the others
                log.warning("cannot price the orphan report of %s: %s", row.request_id, exc)
                continue
            with self._tenant_tx(row.tenant) as conn:
                updated = conn.execute(self._sql.bill_orphan, {
                    "rid": row.request_id, "prompt_tokens": report.prompt_tokens,
                    "completion_tokens": report.completion_tokens, "reasoning_tokens": report.reasoning_tokens,
                    "cost_usd": usd, "replica": report.replica, "node_id": report.node_id,
                    "accelerator": report.accelerator, "error": _orphan_error(report)}).rowcount
                if updated:
                    tokens = report.prompt_tokens + report.completion_tokens
                    self._bump(conn, row.tenant, [(row.started_at, 0, tokens)])
                    self._count(conn, row.tenant, [(row.started_at, tokens, usd)])
                    billed += 1
        return billed, done | {row.request_id for row in rows}

    def _bill_leased_orphans(self, reports: Sequence[OrphanUsage], cost: Callable[[str, OrphanUsage], Decimal]
                             ) -> tuple[int, set[str]]:
        """Rows for orphans that had no reservation (lease-admitted), one transaction per tenant;
        idempotent on request id as every settlement is (a row its ingress did write stands)."""
        by_tenant: dict[str, list] = {}
        for report in reports:
            try:
                usd = cost(report.info.tenant, report)
            except (KeyError, ValueError) as exc:
                log.warning("cannot price the orphan report of %s: %s", report.request_id, exc)
                continue
            outcome = Outcome(EXPIRED, report.prompt_tokens, report.completion_tokens, report.reasoning_tokens, usd,
                              report.replica, report.node_id, report.accelerator, _orphan_error(report))
            by_tenant.setdefault(report.info.tenant, []).append((report.info, outcome, utcnow()))
        billed, done = 0, set()
        for tenant, batch in by_tenant.items():
            with self._tenant_tx(tenant) as conn:
                billed += sum(self._settle_rows(conn, tenant, batch, release=False))
            done |= {info.request_id for info, _, _ in batch}
        return billed, done

    # ---- reading --------------------------------------------------------------------------
    def in_flight(self, tenant: str | None = None) -> int:
        stmt = select(func.count()).select_from(reservations)
        if tenant is not None:
            stmt = stmt.where(reservations.c.tenant == tenant)
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def spent(self, tenant: str, period: str) -> Spend:
        with self._read() as conn:
            row = conn.execute(select(counters.c.tokens, counters.c.cost_usd)
                               .where(counters.c.tenant == tenant, counters.c.period == period)).first()
        return Spend(int(row.tokens), row.cost_usd) if row else Spend()

    def _filters(self, tenant: str | None, start: datetime | None, end: datetime | None, pool: str | None) -> list:
        where = []
        if tenant is not None:
            where.append(ledger.c.tenant == tenant)
        if start is not None:
            where.append(ledger.c.started_at >= start)
        if end is not None:
            where.append(ledger.c.started_at < end)
        if pool is not None:
            where.append(ledger.c.pool == pool)
        return where

    def totals(self, tenant: str | None = None, start: datetime | None = None, end: datetime | None = None,
               pool: str | None = None) -> list[dict]:
        """Per tenant and status: requests, tokens and cost."""
        stmt = (select(ledger.c.tenant, ledger.c.status, func.count().label("requests"),
                       func.coalesce(func.sum(ledger.c.prompt_tokens), 0).label("prompt_tokens"),
                       func.coalesce(func.sum(ledger.c.completion_tokens), 0).label("completion_tokens"),
                       func.coalesce(func.sum(ledger.c.reasoning_tokens), 0).label("reasoning_tokens"),
                       type_coerce(func.coalesce(func.sum(ledger.c.cost_usd), 0), Money).label("cost_usd"))
                .where(*self._filters(tenant, start, end, pool))
                .group_by(ledger.c.tenant, ledger.c.status).order_by(ledger.c.tenant, ledger.c.status))
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def rows(self, tenant: str | None = None, start: datetime | None = None, end: datetime | None = None,
             pool: str | None = None, limit: int = 100) -> list[dict]:
        stmt = (select(ledger).where(*self._filters(tenant, start, end, pool))
                .order_by(ledger.c.started_at.desc(), ledger.c.request_id).limit(limit))
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]
