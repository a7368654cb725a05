"""router/tenancy/lease_admission.py on a real SQLite ledger: leases driven by the event loop, as the
ingress drives them (admissions concurrent, syncs on a ledger thread, settlements grouped). No Ray."""

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from router.tenancy.lease_admission import LeasedTenant
from router.tenancy.lease_store import LeaseStore
from router.tenancy.leases import Policy
from router.tenancy.quota import Ask, Grant, Limits, Refusal, day_key
from router.tenancy.store import CANCELLED, COMPLETED, REFUSED, Outcome, RequestInfo, utcnow

TENANT = "acme"
ZERO = Decimal(0)


def ask(prompt=100, max_tokens=50) -> Ask:
    return Ask(prompt, max_tokens, False, ZERO, ZERO)


def info() -> RequestInfo:
    return RequestInfo(uuid.uuid4().hex, TENANT, route="chat", model="m", pool="short")


@pytest.fixture
def store(tmp_path):
    s = LeaseStore(f"sqlite:///{tmp_path / 'ledger.db'}", policy=Policy(ttl_s=5, skew_s=1, renew_s=0.5, horizon_s=1))
    yield s
    s.close()


@pytest.fixture
def run():
    pool = ThreadPoolExecutor(max_workers=1)  # as the gate runs SQLite: one writer thread

    async def run(fn):
        return await asyncio.get_running_loop().run_in_executor(pool, fn)
    yield run
    pool.shutdown(wait=True)


def holders(store, run, limits, n=2, **kw):
    return [LeasedTenant(store, TENANT, limits, f"ingress-{i}", run, **kw) for i in range(n)]


async def test_two_ingresses_admit_exactly_the_request_limit_and_the_rest_get_refused_rows(store, run):
    limits = Limits(requests_per_minute=37)
    a, b = holders(store, run, limits, recall_wait_s=1.5)
    results = await asyncio.gather(*(h.admit(ask(), info()) for h in (a, b) for _ in range(100)))
    granted = [r for r in results if not isinstance(r, Refusal)]
    assert len(granted) == 37  # none lost to spare stranded in the other lease, none over
    refusals = [r for r in results if isinstance(r, Refusal)]
    assert {r.limit for r in refusals} == {"requests_per_minute"}
    holder_of = {id(t): h for h, batch in ((a, results[:100]), (b, results[100:])) for t in
                 (r[0] for r in batch if not isinstance(r, Refusal))}
    await asyncio.gather(*(holder_of[id(t)].settle(t, Outcome(COMPLETED, 100, 50)) for t, _ in granted))
    rows = store.rows(TENANT, limit=1000)
    assert sorted(r["status"] for r in rows).count(COMPLETED) == 37
    assert sum(r["status"] == REFUSED for r in rows) == len(refusals)


async def test_concurrency_slots_come_back_when_a_request_ends(store, run):
    (a,) = holders(store, run, Limits(max_concurrent_requests=3), n=1)
    first = await asyncio.gather(*(a.admit(ask(), info()) for _ in range(4)))
    assert [isinstance(r, Refusal) for r in first] == [False, False, False, True]
    assert first[3].limit == "max_concurrent_requests"
    ticket, _ = first[0]
    await a.settle(ticket, Outcome(COMPLETED, 100, 50))
    assert not isinstance(await a.admit(ask(), info()), Refusal)


async def test_a_settlement_resolves_only_once_its_row_is_committed(store, run):
    (a,) = holders(store, run, Limits(tokens_per_day=10_000), n=1)
    tickets = [r for r, _ in await asyncio.gather(*(a.admit(ask(), info()) for _ in range(20)))]
    syncs = a.syncs
    waits = [a.settle(t, Outcome(COMPLETED, 100, 7)) for t in tickets]  # all end at once
    await asyncio.gather(*waits)
    rows = store.rows(TENANT, limit=100)
    assert len(rows) == 20 and {r["completion_tokens"] for r in rows} == {7}
    assert a.syncs - syncs <= 2  # grouped: the first row's sync, then everything that queued meanwhile
    assert store.spent(TENANT, day_key(utcnow())).tokens == 20 * 107


async def test_local_admissions_carry_headers_from_the_lease(store, run):
    (a,) = holders(store, run, Limits(requests_per_minute=100, tokens_per_minute=100_000), n=1)
    first = await a.admit(ask(), info())  # decided by the database: exact headers
    assert first[1].headers.remaining_requests == 99
    second = [await a.admit(ask(), info()) for _ in range(3)]
    for _, grant in second:
        assert isinstance(grant, Grant) and grant.headers.limit_requests == 100
        assert 0 <= grant.headers.remaining_requests <= 98


async def test_rows_a_failed_sync_carried_stay_with_the_lease_until_a_sync_commits(store, run, monkeypatch):
    """Including a row that ended while the failing sync ran (in no sync yet): nothing hangs,
    nothing is lost, and the store is not hammered while it is down."""
    (a,) = holders(store, run, Limits(max_concurrent_requests=5), n=1)
    (first, _), (second, _) = await asyncio.gather(a.admit(ask(), info()), a.admit(ask(), info()))
    real, real_settle, calls = store.sync, store.settle_sync, []
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def down(*args, **kw):
        calls.append(1)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
        raise ConnectionError("ledger down")
    monkeypatch.setattr(store, "sync", down)
    monkeypatch.setattr(store, "settle_sync", down)
    one = a.settle(first, Outcome(COMPLETED, 100, 5))  # its sync starts and blocks
    await asyncio.sleep(0.05)
    two = a.settle(second, Outcome(COMPLETED, 100, 6))  # ends while that sync runs
    release.set()
    await asyncio.sleep(0.3)
    assert not one.done() and not two.done() and not store.rows(TENANT)
    assert a.tick() is None and calls == [1]  # resting: about one try a second while the store is down
    again = a.settle(first, Outcome(CANCELLED, 100, 9))  # the gate's wait ran out; a retry keeps the first outcome
    monkeypatch.setattr(store, "sync", real)
    monkeypatch.setattr(store, "settle_sync", real_settle)
    for _ in range(40):
        a.tick()
        if one.done() and two.done() and again.done():
            break
        await asyncio.sleep(0.05)
    assert one.done() and two.done() and again.done()
    rows = sorted((r["status"], r["completion_tokens"]) for r in store.rows(TENANT))
    assert rows == [(COMPLETED, 5), (COMPLETED, 6)]


async def test_a_client_leaving_while_its_ask_syncs_frees_the_grant(store, run):
    (a,) = holders(store, run, Limits(max_concurrent_requests=1), n=1)
    task = asyncio.ensure_future(a.admit(ask(), info()))
    await asyncio.sleep(0)  # its sync is on the ledger thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(300):
        if store.rows(TENANT) and not a.busy:
            break
        await asyncio.sleep(0.01)
    (row,) = store.rows(TENANT)
    assert (row["status"], row["completion_tokens"]) == (CANCELLED, 0)
    assert not isinstance(await a.admit(ask(), info()), Refusal)  # the slot is free again


async def test_an_idle_lease_gives_everything_back_and_stops_syncing(store, run):
    limits = Limits(max_concurrent_requests=10, tokens_per_day=1_000_000)
    (a,) = holders(store, run, limits, n=1)
    tickets = [t for t, _ in await asyncio.gather(*(a.admit(ask(), info()) for _ in range(5)))]
    await asyncio.gather(*(a.settle(t, Outcome(COMPLETED, 100, 5)) for t in tickets))
    for _ in range(40):  # renewals: demand 0 -> the spare goes back
        await asyncio.sleep(0.05)
        a.tick()
        if a.lease.idle:
            break
    assert a.lease.idle
    (lease,) = store.lease_rows(TENANT)
    assert (lease["slots"], lease["tokens"]) == (0, 0)
    syncs = a.syncs
    await asyncio.sleep(0.6)
    assert a.tick() is None and a.syncs == syncs
