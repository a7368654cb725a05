"""The ingress side of tenancy: who is calling, may the request start, and what it cost.

`TenancyGate` authenticates keys against the (reloading) tenants file, reserves each request's
worst case before it reaches a replica (out of this ingress's quota lease in memory with
`leases`, router/tenancy/lease_admission.py; else one reservation row per request, group-
committed), and settles it from what the replica reported: `settle(account, ending)` is the one way a request ends, by the billing rules of
router/tenancy/settlement.py. Refusals are exceptions of router/tenancy/errors.py (the HTTP
edge maps them). Database work runs on a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from router.tenancy.directory import ReloadingFile, Tenant, TenantDirectory
from router.tenancy.errors import LedgerUnavailable, QuotaRefused
from router.tenancy.group_commit import GroupCommit
from router.tenancy.lease_admission import LeasedTenant
from router.tenancy.lease_store import LeaseStore
from router.tenancy.leases import Policy, Ticket
from router.tenancy.pricing import PriceTable
from router.tenancy.quota import Ask, Grant, Refusal
from router.tenancy.settlement import Account, Ending
from router.tenancy.store import CANCELLED, OrphanUsage, Outcome, RequestInfo, utcnow

logger = logging.getLogger("ray.serve")

_SETTLE_ATTEMPTS = 5
_SETTLE_BACKOFF_S = 0.2
_LEASE_TICK_S = 0.1


@dataclass(frozen=True)
class TenancySettings:
    tenants_file: str
    prices_file: str
    ledger_url: str
    reload_s: float = 2.0
    reservation_ttl_s: float = 15.0
    pools: tuple[str, ...] = ()  # served pools: a prices file must price them all
    # Admit out of per-ingress quota leases in memory (router/tenancy/lease_admission.py) instead
    # of one reservation row per request; a lease not synced for reservation_ttl_s is dead.
    leases: bool = False


class TenancyGate:
    def __init__(self, settings: TenancySettings, orphans: Callable[[], Iterable[dict]] = tuple):
        """orphans: the usage replicas publish for requests whose ingress died (router/fleet_stats.py)."""
        self.settings = settings
        # A reloaded file is checked as the deploy checks it; one that fails keeps the last good.
        self.prices = ReloadingFile(settings.prices_file, self._checked_prices, settings.reload_s)
        self.tenants = ReloadingFile(settings.tenants_file, self._checked_tenants, settings.reload_s)
        ttl = settings.reservation_ttl_s
        # A LeaseStore either way: per-request reservations count live leases too.
        self.store = LeaseStore(settings.ledger_url, reservation_ttl_s=ttl,
                                policy=Policy(ttl_s=ttl, renew_s=min(2.0, ttl / 3)))
        self.ingress_id = uuid.uuid4().hex
        # SQLite takes one writer at a time: more threads would only wait on its lock. Reads
        # (/v1/usage) have their own threads, so a long report never holds up an admission.
        workers = 1 if self.store.engine.dialect.name == "sqlite" else 8
        self._db = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ledger")
        self._reads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ledger-read")
        self._live: set[str] = set()  # reservations this ingress still serves or has yet to settle
        self._unsettled: dict[str, tuple[RequestInfo, Outcome]] = {}  # settlements to retry
        self._keeper: asyncio.Task | None = None
        self._lease_ticker: asyncio.Task | None = None
        self._leased: dict[str, LeasedTenant] = {}  # tenant -> its lease here (settings.leases)
        self._retiring: list[LeasedTenant] = []  # leases of limits since changed: settle, then return
        self._orphans = orphans
        # Group commits per tenant: its reservations in one queue, its settlements in another.
        self._reserving: dict[str, GroupCommit] = {}
        self._settling: dict[str, GroupCommit] = {}
        self._orphans_done: set[str] = set()  # reported orphans already billed (or settled otherwise)
        try:  # built on the serving loop (Serve's replica constructor): keep from the start, so
            self._ensure_keeper()  # an idle ingress still expires and bills a dead one's requests
        except RuntimeError:  # no loop yet (tests, tools): started by the first reservation
            pass

    def _checked_prices(self, data: dict) -> PriceTable:
        table = PriceTable.from_dict(data)
        table.check_covers(list(self.settings.pools))
        return table

    def _checked_tenants(self, data: dict) -> TenantDirectory:
        directory = TenantDirectory.from_dict(data)
        tiers = self.prices.get().tiers
        unknown = {t.name: t.tier for t in directory.tenants.values() if t.tier is not None and t.tier not in tiers}
        if unknown:
            raise ValueError(f"tenants with a price tier the prices file does not have: {unknown}")
        return directory

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def _reservations(self, tenant: str) -> GroupCommit:
        group = self._reserving.get(tenant)
        if group is None:
            group = self._reserving[tenant] = GroupCommit(
                self._run, lambda batch: self.store.reserve_many(self.ingress_id, batch))
        return group

    def _settlements(self, tenant: str) -> GroupCommit:
        group = self._settling.get(tenant)
        if group is None:
            group = self._settling[tenant] = GroupCommit(self._run, lambda batch: self.store.settle_many(batch))
        return group

    def authenticate(self, key: str | None) -> Tenant | None:
        try:
            self._ensure_keeper()  # once per process in effect: a no-op while it runs
        except RuntimeError:  # called off the event loop (tools)
            pass
        return self.tenants.get().authenticate(key)

    # ---- reservation ----------------------------------------------------------------------
    async def reserve(self, tenant: Tenant, info: RequestInfo, *, prompt_tokens: int, max_tokens: int,
                      clampable: bool) -> Account:
        """Reserve the worst case, or raise QuotaRefused (LedgerUnavailable when the store is down)."""
        self._ensure_keeper()
        prices = self.prices.get().prices(tenant.tier, info.pool)
        ask = Ask(prompt_tokens, max_tokens, clampable, prices.input / 1_000_000, prices.completion_max / 1_000_000)
        if self.settings.leases:
            return await self._admit_leased(tenant, info, ask, prices, prompt_tokens)
        pending = self._reservations(info.tenant).submit((info, tenant.limits, ask))
        try:
            decision = await asyncio.shield(pending)
        except asyncio.CancelledError:  # the client left while the transaction ran: undo a grant
            pending.add_done_callback(lambda done: self._undo(info, done))
            raise
        except Exception as exc:  # noqa: BLE001 - no store, no admission: fail closed
            raise _store_down(info, exc) from exc
        if isinstance(decision, Refusal):
            raise QuotaRefused(decision)
        self._live.add(info.request_id)
        return Account(info, prices, decision, prompt_tokens)

    async def _admit_leased(self, tenant: Tenant, info: RequestInfo, ask: Ask, prices, prompt_tokens: int) -> Account:
        holder = self._lease_for(tenant)
        try:
            decision = await holder.admit(ask, info)
        except Exception as exc:  # noqa: BLE001 - no store, no admission: fail closed
            raise _store_down(info, exc) from exc
        if isinstance(decision, Refusal):
            raise QuotaRefused(decision)
        ticket, grant = decision
        account = Account(replace(info, started_at=ticket.admitted_at), prices, grant, prompt_tokens)
        account.lease = Leased(holder, ticket)
        return account

    def _lease_for(self, tenant: Tenant) -> LeasedTenant:
        holder = self._leased.get(tenant.name)
        if holder is not None and holder.limits != tenant.limits:  # the tenants file changed them
            self._retiring.append(holder)
            holder = None
        if holder is None:
            holder = self._leased[tenant.name] = LeasedTenant(self.store, tenant.name, tenant.limits,
                                                              self.ingress_id, self._run)
        return holder

    def _undo(self, info: RequestInfo, done: asyncio.Future) -> None:
        if not done.cancelled() and done.exception() is None and isinstance(done.result(), Grant):
            self._live.add(info.request_id)
            self._start_settling(info, Outcome(CANCELLED, error="client left before dispatch"))

    # ---- settlement -----------------------------------------------------------------------
    def settle(self, account: Account, ending: Ending, error: str | None = None, *,
               client_left: bool = False) -> "asyncio.Future[Decimal | None]":
        """The one way a request is settled: close its account by the billing rules and write its
        ledger row, retried until written. Returns a future of the cost (None if the store is
        unavailable: the row is then retried in the background and the reservation kept alive);
        awaiting it is optional (a client that left waits for nothing). Cancelling the waiter
        does not cancel the write. A second call only returns the first one's future."""
        outcome = account.close(ending, error, client_left=client_left)
        if outcome is not None:
            account.settling = asyncio.ensure_future(self._written(account, outcome))
        return asyncio.shield(account.settling)

    async def _written(self, account: Account, outcome: Outcome) -> Decimal | None:
        return account.cost if await self._settle_with_retries(account.info, outcome, account.lease) else None

    def _start_settling(self, info: RequestInfo, outcome: Outcome) -> asyncio.Future:
        return asyncio.ensure_future(self._settle_with_retries(info, outcome))

    async def _settle_with_retries(self, info: RequestInfo, outcome: Outcome, lease: "Leased | None" = None) -> bool:
        if lease is not None:
            return await self._settle_leased(info, lease, outcome)
        for attempt in range(_SETTLE_ATTEMPTS):
            if await self._settle_once(info, outcome, attempt):
                return True
            await asyncio.sleep(_SETTLE_BACKOFF_S * 2 ** attempt)
        logger.error("request %s (tenant %s) not yet in the ledger; retrying in the background",
                     info.request_id, info.tenant)
        self._unsettled[info.request_id] = (info, outcome)
        return False

    async def _settle_leased(self, info: RequestInfo, lease: "Leased", outcome: Outcome) -> bool:
        """The row goes with the lease's next sync, and stays with the lease until one commits
        (the lease retries while the store is down): wait as long as the retries above would."""
        try:
            await asyncio.wait_for(lease.holder.settle(lease.ticket, outcome), _SETTLE_BACKOFF_S * (2 ** _SETTLE_ATTEMPTS - 1))
            return True
        except asyncio.TimeoutError:
            logger.error("request %s (tenant %s) not yet in the ledger; its lease retries it", info.request_id,
                         info.tenant)
            return False

    async def _settle_once(self, info: RequestInfo, outcome: Outcome, attempt: int) -> bool:
        try:
            await self._settlements(info.tenant).submit((info, outcome, utcnow()))
        except Exception as exc:  # noqa: BLE001 - retried; settle is idempotent
            logger.warning("settling %s failed (attempt %d): %s", info.request_id, attempt + 1, type(exc).__name__)
            return False
        self._live.discard(info.request_id)
        self._unsettled.pop(info.request_id, None)
        return True

    # ---- reading --------------------------------------------------------------------------
    async def usage(self, tenant: str | None, start: datetime | None, end: datetime | None, pool: str | None,
                    limit: int) -> tuple[list[dict], list[dict]]:
        loop = asyncio.get_running_loop()
        try:
            totals = await loop.run_in_executor(self._reads, self.store.totals, tenant, start, end, pool)
            rows = await loop.run_in_executor(self._reads, self.store.rows, tenant, start, end, pool, limit + 1)
        except Exception as exc:  # noqa: BLE001 - the ledger is down: say so, not a 500
            logger.error("usage query failed: %s", type(exc).__name__)
            raise LedgerUnavailable("The usage ledger is unavailable; retry shortly.") from exc
        return totals, rows

    # ---- keeping reservations alive -------------------------------------------------------
    def _ensure_keeper(self) -> None:
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep())
        if self.settings.leases and (self._lease_ticker is None or self._lease_ticker.done()):
            self._lease_ticker = asyncio.get_running_loop().create_task(self._tick_leases())

    async def _tick_leases(self) -> None:
        """Start the syncs leases need (renewal, low free units, a recall); return the leases of
        changed limits once their requests are settled. In-memory checks: no I/O unless due."""
        while True:
            await asyncio.sleep(_LEASE_TICK_S)
            for holder in [*self._leased.values(), *self._retiring]:
                try:
                    if holder in self._retiring and not holder.busy:
                        self._retiring.remove(holder)
                        asyncio.ensure_future(holder.close())
                    else:
                        holder.tick()
                except Exception:  # noqa: BLE001 - one lease's trouble must not stop the others' renewals
                    logger.exception("lease of tenant %s: tick failed", holder.tenant)

    async def close_leases(self) -> None:
        """Give back every lease's free units (the ingress is stopping): no budget waits for expiry."""
        for holder in [*self._leased.values(), *self._retiring]:
            try:
                await holder.close()
            except Exception as exc:  # noqa: BLE001 - the lease then expires on its own
                logger.warning("returning the lease of tenant %s failed: %s", holder.tenant, type(exc).__name__)

    async def _keep(self) -> None:
        """Renew the reservations of requests this ingress still serves (so an orphan expires),
        retry settlements the ledger refused, and drop any ingress's expired reservations."""
        interval = self.settings.reservation_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if self._live:
                    await self._run(self.store.renew, self.ingress_id, list(self._live))
                for info, outcome in list(self._unsettled.values()):
                    await self._settle_once(info, outcome, _SETTLE_ATTEMPTS)
                dropped = await self._run(self.store.expire)
                if dropped:
                    logger.warning("dropped %d reservations whose ingress stopped renewing them", dropped)
                await self.bill_orphans()
            except Exception as exc:  # noqa: BLE001 - try again next round
                logger.warning("renewing reservations failed: %s", type(exc).__name__)

    async def bill_orphans(self) -> int:
        """Bill the expired rows of requests whose ingress died with what their replicas report
        they generated. A report stays published for minutes: each is billed once, then skipped."""
        reports = []
        for published in self._orphans():
            try:
                report = orphan_usage(published)
            except (KeyError, TypeError, ValueError):  # a malformed entry: skip it, bill the rest
                logger.warning("ignoring a malformed orphan report: %r", published)
                continue
            if report.replica:  # the row's guard is "no replica named yet": a report must name one
                reports.append(report)
        reported = {r.request_id for r in reports}
        pending = [r for r in reports if r.request_id not in self._orphans_done]
        billed, done = await self._run(self.store.bill_orphans, pending, self._orphan_cost) if pending else (0, set())
        self._orphans_done = (self._orphans_done | done) & reported
        if billed:
            logger.warning("billed %d requests whose ingress died, from their replicas' counts", billed)
        return billed

    def _orphan_cost(self, tenant: str, report: OrphanUsage) -> Decimal:
        known = self.tenants.get().tenants.get(tenant)
        prices = self.prices.get().prices(known.tier if known else None, report.pool or "")
        return prices.cost(report.prompt_tokens, report.completion_tokens, report.reasoning_tokens)


def _store_down(info: RequestInfo, exc: Exception) -> LedgerUnavailable:
    logger.error("quota store unavailable, refusing request %s: %s", info.request_id, type(exc).__name__)
    return LedgerUnavailable("Quota service unavailable; retry shortly.")


@dataclass(frozen=True)
class Leased:
    """An account admitted out of a lease: its row is written by that lease's next sync."""

    holder: LeasedTenant
    ticket: Ticket


def orphan_usage(report: dict) -> OrphanUsage:
    """A replica's published orphan (deployments/caller_watch.py Usage + its identity)."""
    ledger = report.get("ledger")
    info = RequestInfo.from_report(ledger) if ledger else None
    if info is not None and info.request_id != report["request_key"]:
        raise ValueError("an orphan report whose ledger fields name another request")
    return OrphanUsage(report["request_key"], int(report["prompt_tokens"]), int(report["completion_tokens"]),
                       int(report.get("reasoning_tokens") or 0), bool(report.get("finished")),
                       report.get("replica"), report.get("node_id"), report.get("accelerator"), report.get("pool"),
                       info)


__all__ = ["Account", "Ending", "TenancyGate", "TenancySettings"]
