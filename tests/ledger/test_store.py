"""QuotaStore against both of its backends: the same tests on SQLite (a file in tmp_path) and on
PostgreSQL (a fresh database per test on the session's throwaway server, tests/postgres.py).

Times are explicit (a request's started_at is the `now` of its reservation; settle, renew and
expire take theirs as arguments) so that no test depends on the wall clock or on midnight UTC.
"""

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import select, text

from router.tenancy.quota import OUT_OF_BUDGET, RATE_LIMITED, Ask, Grant, Limits, Refusal, Spend, day_key, month_key
from router.tenancy.store import (CANCELLED, COMPLETED, EXPIRED, REFUSED, OrphanUsage, Outcome, QuotaStore, utcnow,
                                  RequestInfo, reservations)

# Dollars per token: $0.15 and $0.60 per million tokens (at most 12 decimals: whole picodollars).
INPUT = Decimal("0.15") / 1_000_000
COMPLETION = Decimal("0.6") / 1_000_000
T0 = datetime(2026, 3, 14, 12, 0, 0, 250_000, tzinfo=timezone.utc)
TENANT = "acme"

_databases = itertools.count()

def ask(prompt: int, max_tokens: int, clampable: bool = False) -> Ask:
    return Ask(prompt, max_tokens, clampable, INPUT, COMPLETION)


def info(request_id: str, started_at: datetime = T0, tenant: str = TENANT, pool: str | None = "short") -> RequestInfo:
    return RequestInfo(request_id, tenant, client_request_id=f"client-{request_id}", route="chat",
                       model="magistral-small", pool=pool, started_at=started_at, trace_id=f"trace-{request_id}")


def done(prompt: int, completion: int, cost: Decimal, reasoning: int = 0, status: str = COMPLETED) -> Outcome:
    return Outcome(status, prompt, completion, reasoning, cost, replica="replica-1", node_id="node-1",
                   accelerator="cpu")


def row(store: QuotaStore, request_id: str) -> dict:
    found = [r for r in store.rows(limit=10_000) if r["request_id"] == request_id]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty database of the test's own on either backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    server = request.getfixturevalue("postgres_url").rsplit("/", 1)[0]
    name = f"ledger_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{server}/{name}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def make_store(db_url):
    """QuotaStores on the test's database (several: as if several ingress processes, or a restart)."""
    made: list[QuotaStore] = []

    def make(**kwargs) -> QuotaStore:
        made.append(QuotaStore(db_url, **kwargs))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store) -> QuotaStore:
    return make_store()


# ---- reserve and settle -----------------------------------------------------------------------

def test_reserve_then_settle_writes_one_row_and_counts(store, request):
    limits = Limits(tokens_per_day=100_000, usd_per_day=Decimal("1"))
    first = info("req-1")
    grant = store.reserve(first, "ingress-a", limits, ask(100, 200))
    assert isinstance(grant, Grant)
    assert (grant.max_tokens, grant.tokens, grant.usd, grant.clamped_from) == (200, 300, Decimal("0.000135"), None)
    with store.engine.connect() as conn:
        held = conn.execute(select(reservations)).all()
    assert [(r.request_id, r.tenant, r.ingress_id, r.prompt_tokens, r.tokens, r.cost_usd, r.reserved_at)
            for r in held] == [("req-1", TENANT, "ingress-a", 100, 300, Decimal("0.000135"), T0)]
    assert store.in_flight(TENANT) == 1 and store.rows() == []

    cost = Decimal("0.000000123456")
    finished = T0 + timedelta(seconds=3)
    assert store.settle(first, done(100, 40, cost, reasoning=10), finished_at=finished) is True
    assert store.in_flight(TENANT) == 0 and store.in_flight() == 0
    [written] = store.rows()
    assert written == {
        "request_id": "req-1", "client_request_id": "client-req-1", "tenant": TENANT, "route": "chat",
        "model": "magistral-small", "pool": "short", "replica": "replica-1", "node_id": "node-1",
        "accelerator": "cpu", "prompt_tokens": 100, "completion_tokens": 40, "reasoning_tokens": 10,
        "cost_usd": cost, "status": COMPLETED, "error": None, "started_at": T0, "finished_at": finished,
        "trace_id": "trace-req-1",
    }
    assert isinstance(written["cost_usd"], Decimal) and str(written["cost_usd"].normalize()) == "1.23456E-7"
    assert written["started_at"].tzinfo is not None
    assert store.spent(TENANT, day_key(T0)) == Spend(140, cost)
    assert store.spent(TENANT, month_key(T0)) == Spend(140, cost)

    # A second request the same day adds to both counters, to the picodollar.
    second = info("req-2", T0 + timedelta(minutes=5))
    assert isinstance(store.reserve(second, "ingress-a", limits, ask(10, 10)), Grant)
    assert store.settle(second, done(10, 5, Decimal("0.1")), finished_at=T0 + timedelta(minutes=6))
    assert store.spent(TENANT, day_key(T0)) == Spend(155, Decimal("0.100000123456"))
    assert store.spent(TENANT, month_key(T0)) == Spend(155, Decimal("0.100000123456"))
    assert store.totals(TENANT)[0]["cost_usd"] == Decimal("0.100000123456")
    assert store.spent("other", day_key(T0)) == Spend()


def test_usage_is_charged_to_the_utc_day_and_month_in_which_it_started(store, request):
    """Started 23:59:59.5 UTC on 31 March (given in UTC-5), finished on 1 April."""
    started = datetime(2026, 3, 31, 18, 59, 59, 500_000, tzinfo=timezone(timedelta(hours=-5)))
    late = info("req-late", started)
    assert isinstance(store.reserve(late, "ingress-a", Limits(tokens_per_month=10_000), ask(5, 5)), Grant)
    assert store.settle(late, done(5, 5, Decimal("0.000006")), finished_at=datetime(2026, 4, 1, 0, 0, 2,
                                                                                      tzinfo=timezone.utc))
    assert store.spent(TENANT, "2026-03-31") == Spend(10, Decimal("0.000006"))
    assert store.spent(TENANT, "2026-03") == Spend(10, Decimal("0.000006"))
    assert store.spent(TENANT, "2026-04-01") == Spend() and store.spent(TENANT, "2026-04") == Spend()
    assert row(store, "req-late")["started_at"] == datetime(2026, 3, 31, 23, 59, 59, 500_000, tzinfo=timezone.utc)


def test_settle_is_idempotent_on_request_id(make_store, request):
    store, other_ingress = make_store(), make_store()
    req = info("req-1")
    assert isinstance(store.reserve(req, "ingress-a", Limits(), ask(10, 20)), Grant)
    assert store.settle(req, done(10, 20, Decimal("0.000013")), finished_at=T0 + timedelta(seconds=1)) is True
    before = (store.spent(TENANT, day_key(T0)), store.spent(TENANT, month_key(T0)), store.rows())
    # Retried with other figures, and from another process: nothing changes.
    assert store.settle(req, done(99, 99, Decimal("1")), finished_at=T0 + timedelta(seconds=2)) is False
    assert other_ingress.settle(req, done(10, 20, Decimal("0.000013"), status=CANCELLED)) is False
    assert (store.spent(TENANT, day_key(T0)), store.spent(TENANT, month_key(T0)), store.rows()) == before
    assert before[0] == Spend(30, Decimal("0.000013"))
    assert store.totals() == [{"tenant": TENANT, "status": COMPLETED, "requests": 1, "prompt_tokens": 10,
                               "completion_tokens": 20, "reasoning_tokens": 0, "cost_usd": Decimal("0.000013")}]


def test_refusal_writes_a_refused_row_and_no_reservation(store):
    limits = Limits(requests_per_minute=1, tokens_per_day=100)
    too_big = info("req-big")
    refusal = store.reserve(too_big, "ingress-a", limits, ask(50, 100))
    assert isinstance(refusal, Refusal)
    assert (refusal.code, refusal.limit) == (OUT_OF_BUDGET, "tokens_per_day")
    assert store.in_flight() == 0
    refused = row(store, "req-big")
    assert (refused["status"], refused["prompt_tokens"], refused["completion_tokens"], refused["cost_usd"]) == \
        (REFUSED, 0, 0, Decimal(0))
    assert refused["error"].startswith("tokens_per_day: ") and len(refused["error"]) <= 512
    assert (refused["started_at"], refused["finished_at"], refused["pool"]) == (T0, T0, "short")
    assert store.spent(TENANT, day_key(T0)) == Spend()
    # A refused request is not an admission: the one request per minute is still there.
    assert isinstance(store.reserve(info("req-ok", T0 + timedelta(seconds=1)), "ingress-a", limits, ask(50, 50)), Grant)
    refused_again = store.reserve(info("req-3", T0 + timedelta(seconds=2)), "ingress-a", limits, ask(1, 1))
    assert isinstance(refused_again, Refusal) and refused_again.limit == "requests_per_minute"
    assert [r["status"] for r in store.totals()] == [REFUSED] and store.totals()[0]["requests"] == 2


def test_a_long_client_request_id_does_not_fail_the_request(store, request):
    client_id = "x" * 300  # the client's x-request-id: any length the HTTP server lets through
    long_id = RequestInfo("req-long", TENANT, client_request_id=client_id, pool="short", started_at=T0)
    assert isinstance(store.reserve(long_id, "ingress-a", Limits(), ask(1, 1)), Grant)
    store.settle(long_id, done(1, 1, Decimal(0)), finished_at=T0 + timedelta(seconds=1))
    kept = row(store, "req-long")["client_request_id"]
    assert kept and client_id.startswith(kept)


# ---- budgets ----------------------------------------------------------------------------------

def test_tokens_per_day_counts_reservations_in_flight_and_settling_releases_the_rest(store, request):
    limits = Limits(tokens_per_day=1000)
    a = info("req-a")
    first = store.reserve(a, "ingress-a", limits, ask(100, 700))
    assert isinstance(first, Grant) and first.tokens == 800
    # 800 reserved: a request that may not be lowered and needs more than 200 is refused...
    refused = store.reserve(info("req-b", T0 + timedelta(seconds=1)), "ingress-a", limits, ask(100, 150))
    assert isinstance(refused, Refusal) and (refused.code, refused.limit) == (OUT_OF_BUDGET, "tokens_per_day")
    # ...one without max_tokens is clamped to what is left.
    clamped = store.reserve(info("req-c", T0 + timedelta(seconds=2)), "ingress-a", limits, ask(100, 500, True))
    assert isinstance(clamped, Grant) and (clamped.max_tokens, clamped.clamped_from, clamped.tokens) == (100, 500, 200)
    assert isinstance(store.reserve(info("req-d", T0 + timedelta(seconds=3)), "ingress-a", limits,
                                    ask(1, 1, True)), Refusal)
    # The first used 150 of its 800: 650 come back.
    assert store.settle(a, done(100, 50, Decimal("0.000045")), finished_at=T0 + timedelta(seconds=4))
    assert store.spent(TENANT, day_key(T0)) == Spend(150, Decimal("0.000045"))
    # 150 settled + 200 still reserved by req-c: exactly 650 left.
    assert isinstance(store.reserve(info("req-e", T0 + timedelta(seconds=5)), "ingress-a", limits,
                                    ask(100, 551)), Refusal)
    fits = store.reserve(info("req-f", T0 + timedelta(seconds=6)), "ingress-a", limits, ask(100, 550))
    assert isinstance(fits, Grant) and fits.tokens == 650
    assert store.in_flight(TENANT) == 2


def test_usd_budget_is_exact_to_the_picodollar(store, request):
    limits = Limits(usd_per_day=Decimal("0.000135"))
    a = info("req-a")
    exact = store.reserve(a, "ingress-a", limits, ask(100, 200))  # costs exactly the budget
    assert isinstance(exact, Grant) and exact.usd == Decimal("0.000135")
    nothing_left = store.reserve(info("req-b", T0 + timedelta(seconds=1)), "ingress-a", limits, ask(0, 1))
    assert isinstance(nothing_left, Refusal) and nothing_left.limit == "usd_per_day"
    assert store.settle(a, done(100, 142, Decimal("0.000100000001")), finished_at=T0 + timedelta(seconds=2))
    # $0.000034999999 left: floor(0.000034999999 / 0.0000006) = 58 completion tokens.
    clamped = store.reserve(info("req-c", T0 + timedelta(seconds=3)), "ingress-a", limits, ask(0, 1000, True))
    assert isinstance(clamped, Grant) and (clamped.max_tokens, clamped.usd) == (58, Decimal("0.0000348"))


def test_spent_budget_survives_a_restart(make_store, request):
    limits = Limits(tokens_per_day=1000, usd_per_day=Decimal("0.01"))
    before = make_store()
    a = info("req-a")
    assert isinstance(before.reserve(a, "ingress-old", limits, ask(100, 700)), Grant)
    assert before.settle(a, done(100, 600, Decimal("0.000375")), finished_at=T0 + timedelta(seconds=1))
    held = info("req-held", T0 + timedelta(seconds=2))
    assert isinstance(before.reserve(held, "ingress-old", limits, ask(50, 50)), Grant)  # still in flight
    before.close()

    after = make_store()  # a new process on the same database
    assert after.spent(TENANT, day_key(T0)) == Spend(700, Decimal("0.000375"))
    assert after.in_flight(TENANT) == 1
    later = T0 + timedelta(hours=1)
    refused = after.reserve(info("req-b", later), "ingress-new", limits, ask(100, 101))
    assert isinstance(refused, Refusal) and refused.limit == "tokens_per_day"
    clamped = after.reserve(info("req-c", later + timedelta(seconds=1)), "ingress-new", limits, ask(100, 500, True))
    assert isinstance(clamped, Grant) and clamped.max_tokens == 100  # 1000 - 700 - 100 held - 100 prompt
    # The next UTC day starts afresh.
    tomorrow = info("req-d", T0 + timedelta(days=1))
    assert isinstance(after.reserve(tomorrow, "ingress-new", limits, ask(100, 800)), Grant)


def test_requests_per_minute_is_a_sliding_window_over_admissions(store):
    limits = Limits(requests_per_minute=2, tokens_per_minute=1000)
    a, b = info("req-a"), info("req-b", T0 + timedelta(seconds=10))
    assert isinstance(store.reserve(a, "ingress-a", limits, ask(100, 100)), Grant)
    assert isinstance(store.reserve(b, "ingress-a", limits, ask(100, 100)), Grant)
    store.settle(a, done(100, 10, Decimal(0)), finished_at=T0 + timedelta(seconds=1))
    store.settle(b, done(100, 10, Decimal(0)), finished_at=T0 + timedelta(seconds=11))
    # Settled admissions stay in the window until 60 s after they started.
    third = store.reserve(info("req-c", T0 + timedelta(seconds=30)), "ingress-a", limits, ask(1, 1))
    assert isinstance(third, Refusal) and (third.code, third.limit) == (RATE_LIMITED, "requests_per_minute")
    assert third.retry_after_s == 30
    # req-a left the window: one request and its real tokens (110) remain in it.
    fourth = store.reserve(info("req-d", T0 + timedelta(seconds=61)), "ingress-a", limits, ask(100, 900, True))
    assert isinstance(fourth, Grant) and fourth.max_tokens == 1000 - 110 - 100


# ---- group commits ----------------------------------------------------------------------------

def decisions_summary(decisions) -> list:
    return [(type(d).__name__, d.max_tokens, d.tokens, d.usd, d.clamped_from, d.headers) if isinstance(d, Grant)
            else (type(d).__name__, d.code, d.limit, d.message, d.retry_after_s) for d in decisions]


@pytest.mark.parametrize("limits", [
    Limits(max_concurrent_requests=3),
    Limits(tokens_per_day=1_000),
    Limits(usd_per_day=Decimal("0.0005")),
    Limits(requests_per_minute=4, tokens_per_minute=900),
], ids=["concurrency", "tokens-per-day", "usd-per-day", "minute-windows"])
def test_a_batch_of_reservations_decides_exactly_as_one_transaction_each(make_store, db_url, limits):
    """reserve_many carries the tenant's state forward in memory: the decisions, headers,
    reservations and refused rows must be those of reserving one by one."""
    asks = [ask(100, 200), ask(150, 400, True), ask(50, 100), ask(300, 100), ask(100, 600, True), ask(10, 10)]
    one_by_one, batched = make_store(), None
    earlier = info("req-earlier", T0 - timedelta(seconds=30))  # an admission already in the window
    assert isinstance(one_by_one.reserve(earlier, "ingress-a", limits, ask(10, 10)), Grant)
    expected = [one_by_one.reserve(info(f"req-{i}"), "ingress-a", limits, a) for i, a in enumerate(asks)]
    with one_by_one.engine.connect() as conn:
        held_expected = sorted((r.request_id, r.tokens, r.cost_usd) for r in conn.execute(select(reservations)))
    rows_expected = sorted((r["request_id"], r["status"], r["error"]) for r in one_by_one.rows())
    # The same again, on the emptied database, in one transaction.
    with one_by_one.engine.begin() as conn:
        for table in reversed(reservations.metadata.sorted_tables):
            conn.execute(table.delete())
    batched = make_store()
    assert isinstance(batched.reserve(earlier, "ingress-a", limits, ask(10, 10)), Grant)
    got = batched.reserve_many("ingress-a", [(info(f"req-{i}"), limits, a) for i, a in enumerate(asks)])
    assert decisions_summary(got) == decisions_summary(expected)
    assert {type(d) for d in got} == {Grant, Refusal}  # the batch crosses the limit
    with batched.engine.connect() as conn:
        assert sorted((r.request_id, r.tokens, r.cost_usd) for r in conn.execute(select(reservations))) == held_expected
    assert sorted((r["request_id"], r["status"], r["error"]) for r in batched.rows()) == rows_expected


def test_a_batch_mixing_times_and_limits_is_decided_as_one_transaction_each(make_store):
    """Where the time or the limits change inside a batch, the state is read again after writing
    the grants before it: the same decisions as reserving one by one."""
    tight, loose = Limits(max_concurrent_requests=2, tokens_per_day=2_000), Limits(max_concurrent_requests=3)
    batch = [(info("req-0"), tight, ask(100, 300)),
             (info("req-1", T0 + timedelta(seconds=1)), tight, ask(100, 300)),
             (info("req-2", T0 + timedelta(seconds=1)), tight, ask(100, 300)),  # 2 in flight: refused
             (info("req-3", T0 + timedelta(seconds=2)), loose, ask(100, 300)),  # a looser file was reloaded
             (info("req-4", T0 + timedelta(seconds=2)), loose, ask(100, 300)),
             (info("req-5", T0 + timedelta(seconds=3)), tight, ask(100, 1_500, True))]  # 3 in flight
    one_by_one = make_store()
    expected = [one_by_one.reserve(i, "ingress-a", limits, a) for i, limits, a in batch]
    with one_by_one.engine.begin() as conn:
        for table in reversed(reservations.metadata.sorted_tables):
            conn.execute(table.delete())
    got = make_store().reserve_many("ingress-a", batch)
    assert decisions_summary(got) == decisions_summary(expected)
    assert [type(d).__name__ for d in got] == ["Grant", "Grant", "Refusal", "Grant", "Refusal", "Refusal"]


def test_a_batch_of_settlements_writes_each_row_once_and_sums_the_counters(store):
    for rid in ("req-1", "req-2", "req-3"):
        assert isinstance(store.reserve(info(rid), "ingress-a", Limits(), ask(100, 400)), Grant)
    assert store.settle(info("req-3"), done(100, 1, Decimal("0.5")), finished_at=T0 + timedelta(seconds=1))
    finished = T0 + timedelta(seconds=2)
    got = store.settle_many([(info("req-1"), done(100, 10, Decimal("0.001")), finished),
                             (info("req-2"), done(100, 20, Decimal("0.002"), status=CANCELLED), finished),
                             (info("req-1"), done(999, 999, Decimal(9)), finished),  # twice in one batch
                             (info("req-3"), done(999, 999, Decimal(9)), finished)])  # settled before
    assert got == [True, True, False, False]
    assert store.in_flight(TENANT) == 0
    assert {r["request_id"]: (r["status"], r["completion_tokens"]) for r in store.rows()} == {
        "req-1": (COMPLETED, 10), "req-2": (CANCELLED, 20), "req-3": (COMPLETED, 1)}
    assert store.spent(TENANT, day_key(T0)) == Spend(331, Decimal("0.503")) == store.spent(TENANT, month_key(T0))


# ---- expiry -----------------------------------------------------------------------------------

def test_renewing_named_requests_lets_the_ingress_s_orphans_expire(make_store):
    """An ingress renews only the requests it still serves: a reservation it lost track of (its
    client left while the reservation committed) expires like a dead ingress's."""
    store = make_store(reservation_ttl_s=5)
    for rid in ("req-served", "req-orphan"):
        assert isinstance(store.reserve(info(rid), "ingress-a", Limits(), ask(10, 10)), Grant)
    assert store.renew("ingress-a", ["req-served"], now=T0 + timedelta(seconds=4)) == 1
    assert store.expire(now=T0 + timedelta(seconds=6)) == 1
    assert row(store, "req-orphan")["status"] == EXPIRED
    assert store.in_flight(TENANT) == 1


def test_unrenewed_reservations_expire_and_a_late_settle_replaces_the_expired_row(make_store):
    store = make_store(reservation_ttl_s=5)
    limits = Limits(tokens_per_day=1000)
    alive, stalled = info("req-alive"), info("req-stalled")
    assert isinstance(store.reserve(alive, "ingress-alive", limits, ask(100, 300)), Grant)
    assert isinstance(store.reserve(stalled, "ingress-stalled", limits, ask(100, 400)), Grant)
    assert store.expire(now=T0 + timedelta(seconds=4)) == 0
    assert store.renew("ingress-alive", now=T0 + timedelta(seconds=4)) == 1  # now expires at T0 + 9 s
    assert store.expire(now=T0 + timedelta(seconds=6)) == 1
    assert store.in_flight(TENANT) == 1
    expired = row(store, "req-stalled")
    assert (expired["status"], expired["prompt_tokens"], expired["completion_tokens"], expired["cost_usd"]) == \
        (EXPIRED, 0, 0, Decimal(0))
    assert (expired["started_at"], expired["finished_at"]) == (T0, T0 + timedelta(seconds=6))
    assert (expired["client_request_id"], expired["pool"]) == ("client-req-stalled", "short")
    assert store.spent(TENANT, day_key(T0)) == Spend()
    # The expired reservation's 500 tokens are free again; the renewed one's 400 are still held.
    assert isinstance(store.reserve(info("req-x", T0 + timedelta(seconds=7)), "ingress-alive", limits,
                                    ask(100, 501)), Refusal)
    assert store.expire(now=T0 + timedelta(seconds=8)) == 0  # renewed until T0 + 9 s

    cost = Decimal("0.000000123456")
    assert store.settle(stalled, done(100, 250, cost, reasoning=30), finished_at=T0 + timedelta(seconds=20)) is True
    settled = row(store, "req-stalled")
    assert (settled["status"], settled["prompt_tokens"], settled["completion_tokens"], settled["reasoning_tokens"],
            settled["cost_usd"], settled["error"], settled["replica"]) == \
        (COMPLETED, 100, 250, 30, cost, None, "replica-1")
    assert settled["started_at"] == T0 and settled["finished_at"] == T0 + timedelta(seconds=20)
    assert store.spent(TENANT, day_key(T0)) == Spend(350, cost)
    assert store.spent(TENANT, month_key(T0)) == Spend(350, cost)
    assert store.settle(stalled, done(1, 1, Decimal(1)), finished_at=T0 + timedelta(seconds=21)) is False
    assert store.spent(TENANT, day_key(T0)) == Spend(350, cost)
    assert len(store.rows()) == 2  # req-stalled and the refused req-x
    store.settle(alive, done(100, 100, Decimal(0)), finished_at=T0 + timedelta(seconds=22))
    assert store.in_flight() == 0


def orphan(request_id: str, prompt: int = 100, completion: int = 37, finished: bool = False) -> OrphanUsage:
    return OrphanUsage(request_id, prompt, completion, 5, finished, replica="replica-9", node_id="node-9",
                       accelerator="L4", pool="short")


def test_a_dead_ingress_s_expired_rows_are_billed_once_what_their_replica_generated(make_store):
    store = make_store(reservation_ttl_s=5)
    limits = Limits(tokens_per_day=10_000)
    for rid in ("req-cut", "req-done", "req-early"):
        assert isinstance(store.reserve(info(rid), "ingress-dead", limits, ask(100, 400)), Grant)
    costs = []

    def cost(tenant: str, report: OrphanUsage) -> Decimal:
        costs.append((tenant, report.request_id))
        return report.prompt_tokens * INPUT + report.completion_tokens * COMPLETION

    # Reported before the reservation expired: nothing to bill yet (the ingress might still settle it).
    assert store.bill_orphans([orphan("req-early")], cost) == (0, set())
    assert store.expire(now=T0 + timedelta(seconds=6)) == 3
    reports = [orphan("req-cut"), orphan("req-done", completion=400, finished=True), orphan("req-unknown")]
    assert store.bill_orphans(reports, cost) == (2, {"req-cut", "req-done"})
    cut = row(store, "req-cut")
    assert (cut["status"], cut["prompt_tokens"], cut["completion_tokens"], cut["reasoning_tokens"], cut["replica"],
            cut["node_id"], cut["accelerator"]) == (EXPIRED, 100, 37, 5, "replica-9", "node-9", "L4")
    assert cut["cost_usd"] == 100 * INPUT + 37 * COMPLETION and "mid-answer" in cut["error"]
    assert "after the answer" in row(store, "req-done")["error"]
    billed = Spend(100 + 37 + 100 + 400, 200 * INPUT + 437 * COMPLETION)
    assert store.spent(TENANT, day_key(T0)) == billed == store.spent(TENANT, month_key(T0))
    # Reported again (replicas publish for minutes), or settled late by a stalled ingress: no change.
    assert store.bill_orphans(reports, cost) == (0, {"req-cut", "req-done"})
    assert store.settle(info("req-cut"), done(100, 50, Decimal(1)), finished_at=T0 + timedelta(seconds=9)) is False
    assert store.spent(TENANT, day_key(T0)) == billed and len(costs) == 2
    # An expired row nobody reports stays unbilled; the one reported early is billed once it expired.
    assert row(store, "req-early")["completion_tokens"] == 0
    assert store.bill_orphans([orphan("req-early", completion=3)], cost) == (1, {"req-early"})
    assert row(store, "req-early")["completion_tokens"] == 3


def test_a_late_settlement_counts_on_the_day_its_request_started(make_store):
    """The ingress does not know its request's start (the reservation's time is the truth): a
    settlement after the expiry, days later, counts on the expired row's day and keeps it."""
    store = make_store(reservation_ttl_s=5)
    assert isinstance(store.reserve(info("req-1"), "ingress-a", Limits(), ask(100, 400)), Grant)
    assert store.expire(now=T0 + timedelta(seconds=6)) == 1
    late = RequestInfo("req-1", TENANT, client_request_id="client-req-1", pool="short")  # started_at unknown
    assert store.settle(late, done(100, 50, Decimal("0.001")), finished_at=T0 + timedelta(days=2)) is True
    assert row(store, "req-1")["started_at"] == T0
    assert store.spent(TENANT, day_key(T0)) == Spend(150, Decimal("0.001"))
    assert store.spent(TENANT, day_key(T0 + timedelta(days=2))) == Spend()


def test_an_orphan_report_never_touches_a_row_its_ingress_settled(store):
    assert isinstance(store.reserve(info("req-1"), "ingress-a", Limits(), ask(100, 400)), Grant)
    store.settle(info("req-1"), done(100, 20, Decimal("0.001")), finished_at=T0 + timedelta(seconds=1))
    assert store.bill_orphans([orphan("req-1", completion=400)], lambda *_: Decimal(1)) == (0, {"req-1"})
    settled = row(store, "req-1")
    assert (settled["status"], settled["completion_tokens"], settled["replica"]) == (COMPLETED, 20, "replica-1")
    assert store.spent(TENANT, day_key(T0)) == Spend(120, Decimal("0.001"))


# ---- concurrency ------------------------------------------------------------------------------

CONCURRENCY_CASES = {
    "requests_per_minute": (Limits(requests_per_minute=37), ask(10, 10), 37),
    "max_concurrent_requests": (Limits(max_concurrent_requests=37), ask(10, 10), 37),
    "tokens_per_day": (Limits(tokens_per_day=1000), ask(10, 90), 10),
}


def _race(stores: list[QuotaStore], n: int, work) -> list:
    """Run work(store, i) for i < n on 16 threads, each thread bound to one store (as if it
    were a thread of one of len(stores) ingress processes), all released at once."""
    bound = threading.local()
    turns = itertools.count()
    go = threading.Event()

    def run(i):
        if not hasattr(bound, "store"):
            bound.store = stores[next(turns) % len(stores)]
        go.wait()
        return bound.store, work(bound.store, i)

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(run, i) for i in range(n)]
        go.set()
        results = [f.result() for f in futures]
    assert {id(s) for s, _ in results} == {id(s) for s in stores}, "every store took part"
    return [r for _, r in results]


@pytest.mark.parametrize("limit", list(CONCURRENCY_CASES))
def test_concurrent_reservations_admit_exactly_up_to_the_limit(make_store, limit):
    limits, asked, expected = CONCURRENCY_CASES[limit]
    stores = [make_store(), make_store()]
    results = _race(stores, 200, lambda store, i: store.reserve(
        info(f"req-{i}", T0 + timedelta(microseconds=i)), f"ingress-{id(store)}", limits, asked))
    granted = [r for r in results if isinstance(r, Grant)]
    refused = [r for r in results if isinstance(r, Refusal)]
    assert (len(granted), len(refused)) == (expected, 200 - expected)
    assert {r.limit for r in refused} == {limit}
    assert stores[0].in_flight(TENANT) == expected
    assert stores[1].totals(TENANT) == [{"tenant": TENANT, "status": REFUSED, "requests": 200 - expected,
                                         "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0,
                                         "cost_usd": Decimal(0)}]
    if limit == "tokens_per_day":
        assert sum(g.tokens for g in granted) == 1000


def test_concurrent_reserve_and_settle_keep_counters_and_ledger_in_step(make_store, request):
    """Each request reserves 100 and uses 50 of a budget of 1000: between 10 and 20 get in, and
    the counters are exactly the sum of the ledger rows."""
    limits = Limits(tokens_per_day=1000)
    cost = Decimal("0.000000000001")

    def reserve_and_settle(store, i):
        req = info(f"req-{i}", T0 + timedelta(microseconds=i))
        decision = store.reserve(req, f"ingress-{id(store)}", limits, ask(10, 90))
        if isinstance(decision, Grant):
            assert store.settle(req, done(10, 40, cost), finished_at=T0 + timedelta(seconds=1))
        return decision

    stores = [make_store(), make_store()]
    results = _race(stores, 200, reserve_and_settle)
    granted = sum(isinstance(r, Grant) for r in results)
    assert 10 <= granted <= 20
    assert stores[0].in_flight() == 0
    assert stores[0].spent(TENANT, day_key(T0)) == Spend(50 * granted, cost * granted)
    assert stores[1].spent(TENANT, month_key(T0)) == Spend(50 * granted, cost * granted)
    by_status = {t["status"]: t for t in stores[0].totals(TENANT)}
    assert by_status[COMPLETED]["requests"] == granted and by_status[REFUSED]["requests"] == 200 - granted
    assert by_status[COMPLETED]["prompt_tokens"] + by_status[COMPLETED]["completion_tokens"] == 50 * granted
    # Whatever was refused, the spend that is left is usable: nothing was under-admitted at the end.
    left = 1000 - 50 * granted
    if left >= 100:
        assert isinstance(stores[0].reserve(info("req-last", T0 + timedelta(seconds=2)), "ingress-x", limits,
                                            ask(10, left - 10)), Grant)


# ---- reading ----------------------------------------------------------------------------------

def test_totals_and_rows_filter_by_tenant_time_and_pool(store):
    written = [  # request id, tenant, pool, started, prompt, completion, cost
        ("a1", "acme", "short", T0, 10, 20, Decimal("0.000001")),
        ("a2", "acme", "long", T0 + timedelta(hours=1), 30, 40, Decimal("0.000000000002")),
        ("a3", "acme", "short", T0 + timedelta(days=1), 50, 60, Decimal("0.25")),
        ("g1", "globex", "short", T0 + timedelta(minutes=30), 70, 80, Decimal("0.000000123456")),
        ("g2", "globex", "long", T0 + timedelta(days=2), 90, 100, Decimal("1.5")),
    ]
    for request_id, tenant, pool, started, prompt, completion, cost in written:
        req = info(request_id, started, tenant, pool)
        assert isinstance(store.reserve(req, "ingress-a", Limits(), ask(prompt, completion)), Grant)
        store.settle(req, done(prompt, completion, cost), finished_at=started + timedelta(seconds=2))
    refused = info("a4", T0 + timedelta(hours=2), "acme", "long")
    assert isinstance(store.reserve(refused, "ingress-a", Limits(max_concurrent_requests=0), ask(1, 1)), Refusal)

    def total(tenant, status, requests, prompt, completion, cost):
        return {"tenant": tenant, "status": status, "requests": requests, "prompt_tokens": prompt,
                "completion_tokens": completion, "reasoning_tokens": 0, "cost_usd": Decimal(cost)}

    assert store.totals() == [
        total("acme", COMPLETED, 3, 90, 120, "0.250001000002"), total("acme", REFUSED, 1, 0, 0, "0"),
        total("globex", COMPLETED, 2, 160, 180, "1.500000123456"),
    ]
    assert store.totals("globex") == [total("globex", COMPLETED, 2, 160, 180, "1.500000123456")]
    assert store.totals("nobody") == [] and store.rows("nobody") == []
    # [start, end): given in another timezone, compared in UTC.
    est = timezone(timedelta(hours=-5))
    start, end = (T0 + timedelta(minutes=30)).astimezone(est), (T0 + timedelta(days=1)).astimezone(est)
    assert store.totals(start=start, end=end) == [
        total("acme", COMPLETED, 1, 30, 40, "0.000000000002"), total("acme", REFUSED, 1, 0, 0, "0"),
        total("globex", COMPLETED, 1, 70, 80, "0.000000123456"),
    ]
    assert store.totals(pool="long") == [
        total("acme", COMPLETED, 1, 30, 40, "0.000000000002"), total("acme", REFUSED, 1, 0, 0, "0"),
        total("globex", COMPLETED, 1, 90, 100, "1.5"),
    ]
    assert store.totals("acme", start=T0, end=T0 + timedelta(days=1), pool="short") == [
        total("acme", COMPLETED, 1, 10, 20, "0.000001")]

    def ids(rows):
        return [r["request_id"] for r in rows]

    assert ids(store.rows()) == ["g2", "a3", "a4", "a2", "g1", "a1"]  # newest first
    assert ids(store.rows(limit=2)) == ["g2", "a3"]
    assert ids(store.rows("acme")) == ["a3", "a4", "a2", "a1"]
    assert ids(store.rows(pool="short")) == ["a3", "g1", "a1"]
    assert ids(store.rows(start=start, end=end)) == ["a4", "a2", "g1"]
    assert ids(store.rows("acme", start=T0 + timedelta(seconds=1), pool="long")) == ["a4", "a2"]
    assert ids(store.rows(end=T0)) == []
    by_id = {r["request_id"]: r for r in store.rows()}
    assert {i: by_id[i]["cost_usd"] for i in by_id} == {w[0]: w[6] for w in written} | {"a4": Decimal(0)}
    assert by_id["g1"]["started_at"] == T0 + timedelta(minutes=30)


# ---- minute windows from buckets ----------------------------------------------------------------

def exact_summary(store: QuotaStore, now: datetime) -> tuple:
    """The window as the definition says: every reservation and non-refused row after now - 60 s."""
    with store.engine.connect() as conn:
        entries = store._window(conn, TENANT, now)
    ats = [at for at, _ in entries]
    return len(entries), sum(t for _, t in entries), min(ats, default=None), max(ats, default=None)


def bucket_summary(store: QuotaStore, now: datetime) -> tuple:
    with store.engine.connect() as conn:
        s = store._state(conn, TENANT, now, Limits(requests_per_minute=10**9)).window_summary
    return s.requests, s.tokens, s.oldest, s.newest


def test_the_window_read_from_buckets_is_the_exact_window_through_every_kind_of_change(make_store):
    """Reservations, settlements (normal, twice, late over an expired row), expiries, refusals and
    orphan billing, at admission times on and just before whole seconds: the bucket-based summary
    must equal the one summed over every entry, at every `now` (window edges inside seconds too)."""
    import random

    rng = random.Random(7)
    store = make_store(reservation_ttl_s=20)
    limits = Limits(max_concurrent_requests=6)
    held: list[RequestInfo] = []
    expired: list[str] = []
    offsets = [0, 0.999999, 1.0, 1.5, 2.000001]
    for step in range(120):
        at = T0 + timedelta(seconds=step + rng.choice(offsets))
        kind = rng.random()
        if kind < 0.55:
            request = info(f"req-{step}", at)
            if isinstance(store.reserve(request, "ingress-a", limits, ask(rng.randint(1, 500), rng.randint(1, 900))),
                          Grant):
                held.append(request)
        elif kind < 0.8 and held:
            request = held.pop(rng.randrange(len(held)))
            outcome = done(rng.randint(1, 500), rng.randint(0, 900), Decimal("0.001"))
            store.settle(request, outcome, finished_at=at)
            if rng.random() < 0.2:
                store.settle(request, outcome, finished_at=at)  # twice: nothing changes
        elif kind < 0.9:
            store.expire(now=at)
            expired = [r["request_id"] for r in store.rows(limit=10_000) if r["status"] == EXPIRED]
            held = [h for h in held if h.request_id not in expired]
        elif expired:
            rid = rng.choice(expired)
            if rng.random() < 0.5:
                store.bill_orphans([orphan(rid, completion=rng.randint(1, 50))], lambda *_: Decimal("0.002"))
            else:  # a late settlement from a stalled ingress
                store.settle(RequestInfo(rid, TENANT), done(10, 20, Decimal("0.003")), finished_at=at)
        for probe in (at, at + timedelta(seconds=rng.choice([0.25, 30, 59.5, 60, 61]))):
            assert bucket_summary(store, probe) == exact_summary(store, probe), (step, probe)
    statuses = [(r["status"], r["replica"]) for r in store.rows(limit=10_000)]
    assert (REFUSED, None) in statuses and (EXPIRED, "replica-9") in statuses and (COMPLETED, "replica-1") in statuses
    assert any(s == EXPIRED and replica is None for s, replica in statuses)  # expired, never billed


def test_a_ledger_from_before_the_buckets_fills_them_once_on_start(make_store):
    store = make_store()
    now = utcnow()  # the fill counts the last two minutes of real time
    for i in range(5):
        request = info(f"req-{i}", now - timedelta(seconds=10 * i + 0.5))
        assert isinstance(store.reserve(request, "ingress-a", Limits(), ask(100, 200)), Grant)
        if i % 2:
            store.settle(request, done(100, 50, Decimal("0.001")), finished_at=now)
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE quota_window"))  # as a database written by the previous version
    restarted = make_store()
    assert bucket_summary(restarted, now) == exact_summary(restarted, now) != (0, 0, None, None)
