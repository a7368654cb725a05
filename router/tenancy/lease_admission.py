"""One tenant's quota lease at one ingress, on the event loop: admit in memory, sync in the background.

The arithmetic is router/tenancy/leases.py (`Lease`), the database side lease_store.py
(`LeaseStore.sync`, one transaction). This adapter runs a lease for the live ingress:

- `admit` takes a request's worst case out of the lease's free units in microseconds. When they
  do not cover it, the request asks the database in a sync of its own (decided by quota.decide
  over the whole tenant, as a reservation is); while another sync runs it waits for that one and
  tries the lease again. A refusal that only other ingresses' spare units caused (`recallable`)
  is retried until their next syncs give that spare back, for at most `recall_wait_s`.
- `settle` hands the request's ledger row to the lease and resolves once a sync has committed
  it: the rows of every request that ended while a sync ran go in the next one (a group commit;
  durable before the caller sends a last byte, as with per-request reservations). A sync that
  fails keeps its rows for the next, tried about once a second by the ticker.
- `tick` (every fraction of a second, from the gate) starts the sync the lease says is due:
  renewal, low free units, a recall. An idle lease holds nothing and is not synced.

One sync runs at a time per lease. A sync that fails keeps what both outcomes leave the lease
(Lease.abort_sync); its rows go again in the next one (idempotent on request id).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from datetime import datetime

from router.tenancy.lease_store import LeaseStore, Settlement
from router.tenancy.leases import Lease, SyncGrant, Ticket
from router.tenancy.quota import Ask, Grant, Limits, Refusal
from router.tenancy.store import CANCELLED, Outcome, RequestInfo, utcnow

logger = logging.getLogger("ray.serve")

Run = Callable[..., Awaitable]  # run(fn): runs a blocking store call on the ledger threads

_RECALL_POLL_S = 0.05
_RETRY_AFTER_FAILURE_S = 1.0
_GATHER_S = 0.0005


class LeasedTenant:
    def __init__(self, store: LeaseStore, tenant: str, limits: Limits, ingress_id: str, run: Run, *,
                 recall_wait_s: float | None = None):
        self.store, self.tenant, self.limits, self.ingress_id = store, tenant, limits, ingress_id
        self.lease_id = uuid.uuid4().hex  # one per (ingress, tenant, limits): a limits change starts another
        self.lease = Lease(limits, store.policy)
        self._run = run
        # Long enough for every other lease to see a recall and give its spare back: each syncs
        # at least every renew_s, the first sync learns of the recall, the next returns the spare.
        self.recall_wait_s = 2 * store.policy.renew_s + 1.0 if recall_wait_s is None else recall_wait_s
        self._sync: asyncio.Task | None = None
        self._waiting: dict[str, list[asyncio.Future]] = {}  # request id -> settlement waiters
        self._failed_at: float | None = None  # loop time of the last failed sync
        self._gathering: asyncio.TimerHandle | None = None  # the next group's sync, about to start
        self.syncs = 0

    # ---- admission ------------------------------------------------------------------------
    async def admit(self, ask: Ask, info: RequestInfo) -> tuple[Ticket, Grant] | Refusal:
        """The request's ticket and grant (headers included), or the database's refusal."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.recall_wait_s
        again = False
        while True:
            ticket = self.lease.admit(ask, utcnow(), info, again=again)
            again = True
            if ticket is not None:
                return ticket, self._local_grant(ask)
            if self._sync is not None and not self._sync.done():
                await _quietly(self._sync)  # its spare may cover this request: try again after it
                continue
            final = loop.time() >= give_up  # a refusal now is the answer (and gets its row)
            sync = self._start_sync(ask, info, final=final)
            try:
                result, ticket = await asyncio.shield(sync)
            except asyncio.CancelledError:  # the client left: a grant made for it ends unused
                sync.add_done_callback(self._release_unused)
                raise
            if ticket is not None:
                return ticket, result.decision
            if result.recallable and not final:
                await asyncio.sleep(_RECALL_POLL_S)  # other leases give back their spare at their next sync
                continue
            return result.decision

    def _local_grant(self, ask: Ask) -> Grant:
        return Grant(ask.max_tokens, *ask.worst_case(), None, self.lease.headers())

    def _release_unused(self, sync: asyncio.Task) -> None:
        if not sync.cancelled() and sync.exception() is None:
            _, ticket = sync.result()
            if ticket is not None:
                self.settle(ticket, Outcome(CANCELLED, error="client left before dispatch"))

    # ---- settlement -----------------------------------------------------------------------
    def settle(self, ticket: Ticket, outcome: Outcome, finished_at: datetime | None = None) -> asyncio.Future:
        """A future that resolves once the request's ledger row is committed. While the store is
        down the row stays with the lease and goes in every sync until one commits; the caller
        bounds its wait (cancelling the future does not drop the row). A second call for the same
        ticket waits for the same row: the first outcome stays."""
        if not ticket.finished:
            info: RequestInfo = ticket.payload
            row = Settlement(replace(info, started_at=ticket.admitted_at), outcome, finished_at or utcnow())
            self.lease.finish(ticket, row)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(ticket.payload.info.request_id, []).append(waiter)
        self._kick()
        return waiter

    def _kick(self) -> None:
        if (self.lease.pending and (self._sync is None or self._sync.done()) and self._gathering is None
                and not self._resting()):
            self._start_group()

    def _start_group(self) -> None:
        """The rows waiting, in a settle-only sync when nothing else is due (no grant, no state
        read: about half the statements), else in a full one."""
        if not self.lease.settle_only(utcnow()):
            self._start_sync()
            return
        holding, rows = self.lease.begin_settle()
        self._sync = asyncio.get_running_loop().create_task(self._settled(holding, rows))
        self._sync.add_done_callback(self._log_failure)

    def _gather_next_group(self) -> None:
        """After a commit of several rows, wait a moment before the next group's sync: the
        requests it just released are resuming, and their next rows should share that sync
        rather than each start one (one request at a time never waits)."""
        def go() -> None:
            self._gathering = None
            self._kick()
        if self._gathering is None:
            self._gathering = asyncio.get_running_loop().call_later(_GATHER_S, go)

    def _resting(self) -> bool:
        """The last sync failed under a second ago: the store is down, do not hammer it."""
        return self._failed_at is not None and asyncio.get_running_loop().time() - self._failed_at < _RETRY_AFTER_FAILURE_S

    # ---- syncing --------------------------------------------------------------------------
    def tick(self, now: datetime | None = None) -> str | None:
        """Start the sync the lease says is due (None: none due, or one already runs)."""
        if self.lease.idle or (self._sync is not None and not self._sync.done()) or self._resting():
            return None
        reason = self.lease.sync_due(now or utcnow())
        if reason == "settle":
            self._start_group()
        elif reason is not None:
            self._start_sync()
        return reason

    def _start_sync(self, ask: Ask | None = None, info: RequestInfo | None = None, *,
                    returning: bool = False, final: bool = False) -> asyncio.Task:
        now = utcnow()
        report, rows = self.lease.begin_sync(now, ask, returning=returning)
        self._sync = asyncio.get_running_loop().create_task(self._synced(report, rows, now, ask, info, final))
        self._sync.add_done_callback(self._log_failure)
        return self._sync

    def _log_failure(self, sync: asyncio.Task) -> None:
        if not sync.cancelled() and sync.exception() is not None:  # retrieved: retried by tick or settle
            logger.warning("lease sync of tenant %s failed: %s", self.tenant, type(sync.exception()).__name__)

    async def _synced(self, report, rows: list[Settlement], now: datetime, ask: Ask | None,
                      info: RequestInfo | None, final: bool) -> tuple[SyncGrant, Ticket | None]:
        try:
            result = await self._run(partial(self.store.sync, self.lease_id, self.tenant, self.ingress_id,
                                             self.limits, report, rows, ask_info=info if ask is not None else None,
                                             now=now, final=final))
        except BaseException:
            self._failed()
            raise
        ticket = self.lease.end_sync(result, info)
        self._committed(rows)
        return result, ticket

    async def _settled(self, holding, rows: list[Settlement]) -> None:
        try:
            recall = await self._run(partial(self.store.settle_sync, self.lease_id, self.tenant, holding, rows))
        except BaseException:
            self._failed()
            raise
        self.lease.end_settle(recall)
        self._committed(rows)

    def _failed(self) -> None:
        """A sync failed (or its outcome is unknown): its rows stay with the lease (abort_sync) and
        their waiters keep waiting; the ticker retries about once a second until the store is
        back. A waiter bounds its own wait."""
        self.lease.abort_sync()
        self._failed_at = asyncio.get_running_loop().time()

    def _committed(self, rows: list[Settlement]) -> None:
        self.syncs += 1
        self._failed_at = None
        for row in rows:
            for waiter in self._waiting.pop(row.info.request_id, ()):
                if not waiter.done():
                    waiter.set_result(True)
        if len(rows) > 1 or self.lease.pending:  # concurrent requests: more will end as these resume
            self._gather_next_group()

    async def close(self) -> None:
        """Give every free unit back (an ingress that stops, or limits that changed): the rows
        still waiting go with it; what is in use stays held until it is settled."""
        while self._sync is not None and not self._sync.done():
            await _quietly(self._sync)
        if not self.lease.idle:
            await _quietly(self._start_sync(returning=True))

    @property
    def busy(self) -> bool:
        """Requests admitted here are still running or unsettled."""
        return any(v for _, v in self.lease.in_use.items()) or bool(self.lease.pending) or bool(self._waiting)


async def _quietly(task: asyncio.Future) -> None:
    """Wait for a sync without taking on its error (its own callers handle that)."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():  # we were cancelled, not the sync
            raise
    except Exception:  # noqa: BLE001
        pass


__all__ = ["LeasedTenant"]
