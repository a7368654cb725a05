"""The ingress side of tenancy (TenancyGate, Account) on a real SQLite ledger: no Ray."""

import asyncio
import os
from decimal import Decimal

import pytest
import yaml

from common.protocol import delta_event, end_event, start_event
from router.http.errors import from_tenancy
from router.tenancy import gate as gate_module
from router.tenancy.errors import UsageQueryRefused
from router.tenancy.gate import TenancyGate, TenancySettings
from router.tenancy.settlement import Account, Ending
from router.tenancy.store import CANCELLED, RequestInfo
from router.tenancy.usage_report import parse_time

PRICES = {"tiers": {"standard": {"short": {"input": 0.5, "output": 1.5}}}}


@pytest.fixture
def make_gate(tmp_path):
    def make(limits: dict | None = None, ttl: float = 15.0, orphans=tuple, leases: bool = False) -> TenancyGate:
        (tmp_path / "tenants.yaml").write_text(yaml.safe_dump(
            {"tenants": {"acme": {"api_keys": ["sk-acme"], "limits": limits or {}}}}))
        (tmp_path / "prices.yaml").write_text(yaml.safe_dump(PRICES))
        return TenancyGate(TenancySettings(str(tmp_path / "tenants.yaml"), str(tmp_path / "prices.yaml"),
                                           f"sqlite:///{tmp_path / 'ledger.db'}", reload_s=0.01,
                                           reservation_ttl_s=ttl, pools=("short",), leases=leases), orphans)
    return make


def info(rid: str) -> RequestInfo:
    return RequestInfo(rid, "acme", client_request_id=rid, route="chat", model="m", pool="short")


async def test_a_client_leaving_during_the_reservation_leaves_no_reservation(make_gate):
    gate = make_gate({"max_concurrent_requests": 1})
    tenant = gate.authenticate("sk-acme")
    task = asyncio.ensure_future(gate.reserve(tenant, info("r1"), prompt_tokens=10, max_tokens=5, clampable=False))
    await asyncio.sleep(0)  # the transaction is on its thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(300):  # the grant is settled as cancelled once its transaction ends
        if gate.store.rows("acme") and not gate._live:
            break
        await asyncio.sleep(0.01)
    assert gate.store.in_flight("acme") == 0
    (row,) = gate.store.rows("acme")
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (CANCELLED, 0, 0)
    meter = await gate.reserve(tenant, info("r2"), prompt_tokens=10, max_tokens=5, clampable=False)
    assert meter.max_tokens == 5  # the concurrency slot is free again


async def test_a_settlement_the_ledger_refuses_is_retried_and_its_reservation_kept(make_gate, monkeypatch):
    monkeypatch.setattr(gate_module, "_SETTLE_BACKOFF_S", 0.0)
    gate = make_gate()
    tenant = gate.authenticate("sk-acme")
    meter = await gate.reserve(tenant, info("r1"), prompt_tokens=10, max_tokens=5, clampable=False)
    meter.observe(end_event(finish_reason="stop", prompt_tokens=10, completion_tokens=3, reasoning_tokens=0))
    real_settle, failures = gate.store.settle_many, []

    def flaky(*args):
        if len(failures) < gate_module._SETTLE_ATTEMPTS:
            failures.append(1)
            raise ConnectionError("ledger down")
        return real_settle(*args)

    monkeypatch.setattr(gate.store, "settle_many", flaky)
    assert await gate.settle(meter, Ending.COMPLETED) is None  # every attempt failed: no cost to report yet
    assert "r1" in gate._live and "r1" in gate._unsettled  # kept alive, queued for retry
    assert gate.store.in_flight("acme") == 1
    await gate._settle_once(*gate._unsettled["r1"], attempt=5)  # what the keeper's next round does
    assert not gate._live and not gate._unsettled and gate.store.in_flight("acme") == 0
    (row,) = gate.store.rows("acme")
    assert (row["completion_tokens"], row["cost_usd"]) == (3, Decimal("0.0000095"))


async def test_the_keeper_bills_a_dead_ingress_s_requests_from_their_replicas_reports(make_gate):
    published: list[dict] = []
    gate = make_gate(ttl=0.5, orphans=lambda: published)
    tenant = gate.authenticate("sk-acme")
    await gate.reserve(tenant, info("cut"), prompt_tokens=10, max_tokens=500, clampable=False)
    gate._live.clear()  # as if another ingress, whose process died, had reserved it: nobody renews it
    published.append({"request_key": "cut", "prompt_tokens": 10, "completion_tokens": 200, "reasoning_tokens": 50,
                      "finished": False, "ended_at": 0.0, "replica": "rep-1", "node_id": "n-1",
                      "accelerator": "L4", "pool": "short"})
    assert await gate.bill_orphans() == 0  # its reservation has not expired: nothing billed yet
    assert gate.store.rows("acme") == []
    for _ in range(200):  # the keeper's rounds (every ttl / 3): expire, then bill
        if gate.store.rows("acme") and gate.store.rows("acme")[0]["replica"]:
            break
        await asyncio.sleep(0.02)
    (row,) = gate.store.rows("acme")
    # 10 x $0.5 + 200 x $1.5 per million (reasoning priced as output when the tier has no reasoning price)
    assert (row["status"], row["completion_tokens"], row["replica"], row["cost_usd"]) == (
        "expired", 200, "rep-1", Decimal("0.000305"))
    assert await gate.bill_orphans() == 0 and gate._orphans_done == {"cut"}  # billed once, then skipped
    published.clear()
    await gate.bill_orphans()
    assert gate._orphans_done == set()  # forgotten once no replica reports it
    gate._keeper.cancel()


async def test_a_lease_admitted_request_is_settled_by_its_lease_with_its_row(make_gate):
    gate = make_gate({"requests_per_minute": 50, "tokens_per_day": 100_000}, leases=True)
    tenant = gate.authenticate("sk-acme")
    accounts = await asyncio.gather(*(gate.reserve(tenant, info(f"r{i}"), prompt_tokens=10, max_tokens=5,
                                                   clampable=False) for i in range(8)))
    assert all(a.lease is not None for a in accounts) and gate.store.in_flight("acme") == 0  # no reservation rows
    assert {a.rate_headers["x-ratelimit-limit-requests"] for a in accounts} == {"50"}
    for a in accounts:
        a.observe(end_event(finish_reason="stop", prompt_tokens=10, completion_tokens=3, reasoning_tokens=0))
    costs = await asyncio.gather(*(gate.settle(a, Ending.COMPLETED) for a in accounts))
    assert costs == [Decimal("0.0000095")] * 8  # each returned once its row was committed
    rows = gate.store.rows("acme")
    assert sorted(r["request_id"] for r in rows) == [f"r{i}" for i in range(8)]
    assert {(r["status"], r["completion_tokens"]) for r in rows} == {("completed", 3)}
    assert any(r["requests"] for r in gate.store.lease_rows("acme"))  # spare for the next admissions
    await gate.close_leases()
    assert not any(r["requests"] or r["tokens"] for r in gate.store.lease_rows("acme"))  # all given back


async def test_a_lease_settlement_the_ledger_refuses_returns_no_cost_and_is_written_once_it_is_back(
        make_gate, monkeypatch):
    monkeypatch.setattr(gate_module, "_SETTLE_BACKOFF_S", 0.005)  # the gate waits 31 x this for the row
    gate = make_gate({"max_concurrent_requests": 4}, leases=True)
    tenant = gate.authenticate("sk-acme")
    account = await gate.reserve(tenant, info("r1"), prompt_tokens=10, max_tokens=5, clampable=False)
    account.observe(end_event(finish_reason="stop", prompt_tokens=10, completion_tokens=3, reasoning_tokens=0))
    real, real_settle = gate.store.sync, gate.store.settle_sync

    def down(*args, **kw):
        raise ConnectionError("ledger down")
    monkeypatch.setattr(gate.store, "sync", down)
    monkeypatch.setattr(gate.store, "settle_sync", down)
    assert await gate.settle(account, Ending.COMPLETED) is None  # not written yet: no cost to report
    monkeypatch.setattr(gate.store, "sync", real)
    monkeypatch.setattr(gate.store, "settle_sync", real_settle)
    for _ in range(100):  # the gate's lease ticker retries about once a second
        if gate.store.rows("acme"):
            break
        await asyncio.sleep(0.05)
    (row,) = gate.store.rows("acme")
    assert (row["status"], row["completion_tokens"]) == ("completed", 3)


async def test_a_dead_ingress_s_lease_admitted_request_gets_a_billed_row_from_its_replica_s_report(make_gate):
    dead = make_gate({"tokens_per_day": 100_000}, leases=True)
    tenant = dead.authenticate("sk-acme")
    account = await dead.reserve(tenant, info("cut"), prompt_tokens=10, max_tokens=500, clampable=False)
    report = {"request_key": "cut", "prompt_tokens": 10, "completion_tokens": 200, "reasoning_tokens": 0,
              "finished": False, "ended_at": 0.0, "replica": "rep-1", "node_id": "n-1", "accelerator": "L4",
              "pool": "short", "ledger": account.info.as_report()}  # what the job carried to the replica
    live = make_gate({"tokens_per_day": 100_000}, leases=True, orphans=lambda: [report])
    assert await live.bill_orphans() == 1
    (row,) = live.store.rows("acme")
    assert (row["status"], row["completion_tokens"], row["replica"], row["cost_usd"]) == (
        "expired", 200, "rep-1", Decimal("0.000305"))
    assert row["started_at"] == account.info.started_at and row["client_request_id"] == "cut"
    day = account.info.started_at.strftime("%Y-%m-%d")
    assert live.store.spent("acme", day).tokens == 210
    assert await live.bill_orphans() == 0  # billed once
    # The dying ingress's own settlement, had it reached the ledger late, changes nothing.
    account.observe(end_event(finish_reason="stop", prompt_tokens=10, completion_tokens=500, reasoning_tokens=0))
    await dead.settle(account, Ending.COMPLETED)
    assert live.store.spent("acme", day).tokens == 210 and len(live.store.rows("acme")) == 1


async def test_an_orphan_report_for_a_live_reservation_waits_for_its_expiry(make_gate):
    gate = make_gate(ttl=60)
    tenant = gate.authenticate("sk-acme")
    account = await gate.reserve(tenant, info("held"), prompt_tokens=10, max_tokens=5, clampable=False)
    report = {"request_key": "held", "prompt_tokens": 10, "completion_tokens": 2, "finished": False,
              "replica": "rep-1", "pool": "short", "ledger": account.info.as_report()}
    gate._orphans = lambda: [report]
    assert await gate.bill_orphans() == 0 and gate.store.rows("acme") == []
    assert gate.store.in_flight("acme") == 1


def test_account_takes_the_engines_prompt_count_from_deltas(make_gate):
    gate = make_gate()
    from router.tenancy.quota import Grant, RateHeaders
    meter = Account(info("r1"), gate.prices.get().prices(None, "short"),
                              Grant(100, 140, Decimal(0), None, RateHeaders()), prompt_tokens=40)  # a byte bound
    meter.observe(start_event(replica="x", node_id="n", pool="short", accelerator="a", prompt_tokens=None,
                              max_tokens=None))
    delta = delta_event(content="hi", completion_tokens=2, reasoning_tokens=1, prompt_tokens=17)
    assert meter.usage_with(delta)["prompt_tokens"] == 17  # what the client is told it is billed
    meter.observe(delta)
    outcome = meter.close(Ending.CANCELLED)
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.reasoning_tokens) == (17, 2, 1)


def test_a_reloaded_prices_file_that_drops_a_pool_is_not_used(make_gate, tmp_path):
    gate = make_gate()
    before = gate.prices.get()
    (tmp_path / "prices.yaml").write_text(yaml.safe_dump({"tiers": {"standard": {"long": {"input": 1, "output": 2}}}}))
    os.utime(tmp_path / "prices.yaml", ns=(1, 1))
    import time
    time.sleep(0.02)
    assert gate.prices.get() is before


def test_a_reloaded_tenants_file_naming_an_unknown_tier_is_not_used(make_gate, tmp_path):
    gate = make_gate()
    before = gate.tenants.get()
    (tmp_path / "tenants.yaml").write_text(yaml.safe_dump({"tenants": {"acme": {"api_keys": ["sk-new"], "tier": "gold"}}}))
    os.utime(tmp_path / "tenants.yaml", ns=(1, 1))
    import time
    time.sleep(0.02)
    assert gate.tenants.get() is before and gate.authenticate("sk-new") is None


@pytest.mark.parametrize("text", ["9999-12-31T23:00:00-02:00", "0001-01-01T00:30:00+01:00", "tomorrow", "1e400"])
def test_usage_times_out_of_range_are_400s(text):
    with pytest.raises(UsageQueryRefused) as exc:
        parse_time(text, "from")
    assert from_tenancy(exc.value).status == 400


def test_usage_times_are_utc():
    assert parse_time("2026-11-22T01:00:00+02:00", "from").isoformat() == "2026-11-21T23:00:00+00:00"
    assert parse_time("0", "to").isoformat() == "1970-01-01T00:00:00+00:00"
