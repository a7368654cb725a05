"""router/tenancy/lease_store.py on SQLite: syncs in one transaction each, exact across processes.

Times are explicit where the test is about time (expiry, windows); the multi-process test uses the
wall clock, as ingress processes would. tests/ledger/test_lease_store.py runs the multi-process
test against PostgreSQL.
"""

import multiprocessing
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from router.tenancy.lease_store import LeaseHolder, LeaseStore
from router.tenancy.leases import Policy, Units
from router.tenancy.quota import Ask, Grant, Limits, Refusal, day_key
from router.tenancy.store import COMPLETED, REFUSED, Outcome, QuotaStore, RequestInfo

T0 = datetime(2026, 3, 14, 12, 0, 0, tzinfo=timezone.utc)
ZERO = Decimal(0)
TENANT = "acme"


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def ask(prompt=100, max_tokens=50) -> Ask:
    return Ask(prompt, max_tokens, False, ZERO, ZERO)


def info() -> RequestInfo:
    return RequestInfo(uuid.uuid4().hex, TENANT, route="chat", model="m", pool="short")


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def store(url):
    s = LeaseStore(url, policy=Policy(ttl_s=5, skew_s=1, renew_s=1, horizon_s=1))
    yield s
    s.close()


def test_admissions_settle_in_one_sync_with_their_rows_and_counters(store):
    limits = Limits(tokens_per_day=10_000, max_concurrent_requests=32)
    holder = LeaseHolder(store, TENANT, limits, "ingress-a")
    tickets = [holder.admit(ask(), info(), at(0.001 * i)) for i in range(20)]
    assert all(not isinstance(t, Refusal) for t in tickets)
    for t in tickets:
        holder.finish(t, Outcome(COMPLETED, 100, 30), at(1))
    syncs = holder.syncs
    holder.sync(at(1.5))
    assert holder.syncs == syncs + 1
    assert store.spent(TENANT, day_key(T0)).tokens == 20 * 130
    rows = store.rows(tenant=TENANT, limit=100)
    assert len(rows) == 20 and {r["status"] for r in rows} == {COMPLETED}
    assert min(r["started_at"] for r in rows) == at(0)  # the admission time, not the sync's
    (lease,) = store.lease_rows(TENANT)
    assert lease["tokens"] == (holder.lease.in_use + holder.lease.free).tokens
    assert lease["slots"] == (holder.lease.in_use + holder.lease.free).slots


def test_a_replayed_sync_writes_no_row_and_no_count_twice(store):
    limits = Limits(tokens_per_day=10_000)
    holder = LeaseHolder(store, TENANT, limits, "ingress-a")
    t = holder.admit(ask(), info(), at(0))
    holder.finish(t, Outcome(COMPLETED, 100, 10), at(0.5))
    report, settlements = holder.lease.begin_sync(at(1))
    first = store.sync(holder.lease_id, TENANT, "ingress-a", limits, report, settlements, now=at(1))
    again = store.sync(holder.lease_id, TENANT, "ingress-a", limits, report, settlements, now=at(1.1))
    holder.lease.end_sync(again)
    assert first.held == again.held
    assert store.spent(TENANT, day_key(T0)).tokens == 110
    assert len(store.rows(tenant=TENANT)) == 1


def test_exact_limit_across_two_holders_and_a_final_refusal_writes_a_refused_row(store):
    limits = Limits(tokens_per_day=150 * 7)  # 7 requests of 150 worst-case tokens
    a, b = LeaseHolder(store, TENANT, limits, "a"), LeaseHolder(store, TENANT, limits, "b")
    admitted, refusals = 0, []
    for i in range(20):
        h, other = (a, b) if i % 2 else (b, a)
        out = h.admit(ask(), info(), at(0.01 * i))
        if isinstance(out, Refusal) and h.lease.recallable:
            other.sync(at(0.01 * i))  # the other gives its spare back
            out = h.admit(ask(), info(), at(0.01 * i))
        if isinstance(out, Refusal):
            refusals.append(out)
        else:
            admitted += 1
    assert admitted == 7
    assert refusals and refusals[-1].limit == "tokens_per_day"
    assert any(r["status"] == REFUSED for r in store.rows(tenant=TENANT, limit=100))


def test_the_per_request_path_and_leases_see_each_other(url, store):
    """Reservations count in a lease grant, and a LeaseStore's reservations count live leases."""
    limits = Limits(max_concurrent_requests=5)
    old = QuotaStore(url)
    for i in range(3):
        assert isinstance(old.reserve(RequestInfo(f"r{i}", TENANT, started_at=at(0)), "old", limits, ask()), Grant)
    holder = LeaseHolder(store, TENANT, limits, "new")
    got = [holder.admit(ask(), info(), at(0.1)) for _ in range(4)]
    assert [isinstance(g, Refusal) for g in got] == [False, False, True, True]
    old.close()
    # The other way: a reservation through a LeaseStore (an ingress with quota_leases off) sees
    # the lease's 2 slots and the 3 reservations: the limit is reached.
    assert isinstance(store.reserve(RequestInfo("r9", TENANT, started_at=at(0.2)), "x", limits, ask()), Refusal)
    rpm = Limits(requests_per_minute=4)
    minute = LeaseHolder(store, "other", rpm, "new")
    assert not isinstance(minute.admit(ask(), RequestInfo(uuid.uuid4().hex, "other"), at(1)), Refusal)
    minute.sync(at(1.1))  # holds its admission plus spare requests of the minute
    held = store.lease_rows("other")[0]["requests"]
    decisions = [store.reserve(RequestInfo(f"m{i}", "other", started_at=at(2)), "x", rpm, ask()) for i in range(4)]
    assert sum(isinstance(d, Grant) for d in decisions) == 4 - held  # the exact-window re-decision keeps the refusal


def test_a_dead_lease_frees_its_slots_after_ttl_and_skew(store):
    limits = Limits(max_concurrent_requests=4)
    dead = LeaseHolder(store, TENANT, limits, "dead")
    dead.lease._demand.requests, dead.lease._demand.peak_slots = 100, 100
    dead.sync(at(0))
    assert dead.lease.free.slots == 4
    alive = LeaseHolder(store, TENANT, limits, "alive")
    assert isinstance(alive.admit(ask(), info(), at(5.9)), Refusal)  # still within ttl + skew
    assert not isinstance(alive.admit(ask(), info(), at(6.1)), Refusal)
    # and rows dead for over ttl + skew + 60 s are deleted by the tenant's next sync
    alive.sync(at(67))
    assert [r["lease_id"] for r in store.lease_rows(TENANT)] == [alive.lease_id]


def test_a_settle_only_sync_writes_rows_shrinks_the_holding_and_renews_nothing(store):
    limits = Limits(tokens_per_day=100_000, max_concurrent_requests=6)
    holder = LeaseHolder(store, TENANT, limits, "a")
    holder.lease._demand.requests, holder.lease._demand.tokens, holder.lease._demand.peak_slots = 20, 20 * 150, 4
    holder.sync(at(0))
    before = store.lease_rows(TENANT)[0]
    tickets = [holder.admit(ask(), info(), at(0.1)) for _ in range(3)]
    assert holder.syncs == 1  # all three out of the lease
    for t in tickets:
        holder.finish(t, Outcome(COMPLETED, 100, 20), at(0.2))
    assert holder.lease.settle_only(at(0.3))
    holding, rows = holder.lease.begin_settle()
    assert store.settle_sync(holder.lease_id, TENANT, holding, rows, at(0.3)) is False
    holder.lease.end_settle(False)
    after = store.lease_rows(TENANT)[0]
    assert after["tokens"] == before["tokens"] - 3 * 150  # settled: counted by their rows now
    assert after["slots"] == before["slots"]  # a finished request's slot is free in the lease again
    assert after["expires_at"] == before["expires_at"]  # not renewed: only a full sync renews
    assert store.spent(TENANT, day_key(at(0))).tokens == 3 * 120 and len(store.rows(TENANT)) == 3
    assert holder.lease.in_use == Units(None, 0, None, 0)
    # Replayed (its answer lost): no row, no count twice; another ingress's recall comes back with it.
    other = LeaseHolder(store, TENANT, limits, "b")
    result, _ = other.sync(at(0.4), ask=ask(), ask_info=info())  # a holds every slot, free: a recall
    assert result.recallable
    assert store.settle_sync(holder.lease_id, TENANT, holding, rows, at(0.5)) is True
    assert store.spent(TENANT, day_key(at(0))).tokens == 3 * 120 and len(store.rows(TENANT)) == 3


def test_closing_a_holder_returns_everything(store):
    limits = Limits(tokens_per_day=100_000, requests_per_minute=1000)
    holder = LeaseHolder(store, TENANT, limits, "a")
    for i in range(50):
        t = holder.admit(ask(), info(), at(0.01 * i))
        holder.finish(t, Outcome(COMPLETED, 100, 50), at(0.01 * i))
    holder.close(at(1))
    assert store.lease_rows(TENANT) == []
    assert len(store.rows(tenant=TENANT, limit=100)) == 50


def _worker(url: str, limits: Limits, name: str, seconds: float, out) -> None:
    store = LeaseStore(url)
    holder = LeaseHolder(store, TENANT, limits, name)
    admitted = refused = 0
    deadline = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    while datetime.now(timezone.utc) < deadline:
        got = holder.admit(ask(), info())
        if isinstance(got, Refusal):
            refused += 1
            if not holder.lease.recallable and refused > 20:
                break
            continue
        admitted += 1
        holder.finish(got, Outcome(COMPLETED, 100, 50))
        holder.tick()
    holder.close()
    store.close()
    out.put((admitted, refused))


def run_processes(url: str, limits: Limits, processes: int = 4, seconds: float = 20.0) -> int:
    LeaseStore(url).close()  # tables first
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, limits, f"ingress-{i}", seconds, out)) for i in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return sum(a for a, _ in results)


def test_four_processes_admit_exactly_the_budget(url):
    limits = Limits(tokens_per_day=150 * 3000, max_concurrent_requests=16)
    admitted = run_processes(url, limits)
    assert admitted == 3000
    store = QuotaStore(url)
    assert store.spent(TENANT, day_key(datetime.now(timezone.utc))).tokens == 150 * 3000
    assert sum(r["requests"] for r in store.totals(tenant=TENANT) if r["status"] == COMPLETED) == 3000
    store.close()
