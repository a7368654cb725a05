"""router/tenancy/leases.py: quota leases, pure (no database, no clock).

A small in-memory "database" (`Db` below) plays lease_store.py's part with the same rules (a
lease is live until expires_at + skew_s, counts in the minute window until 60 s after that, its
tokens and dollars count in the day and month of its last sync), so that many `Lease` holders can
be driven through random interleavings of admissions, endings, syncs, failed syncs, deaths and
time, while the test keeps the *real* usage apart and checks it against every limit at every step.
"""

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from router.tenancy.leases import Lease, Others, Policy, Report, Ticket, Units, grant, room, tenant_view, units_of
from router.tenancy.quota import (OUT_OF_BUDGET, WINDOW_S, Ask, Grant, Limits, Refusal, Spend,
                                  TenantState, day_key, month_key)

UTC = timezone.utc
T0 = datetime(2026, 3, 14, 12, 0, 0, tzinfo=UTC)
ZERO = Decimal(0)
IN, OUT = Decimal("0.000001"), Decimal("0.000003")  # dollars per token


def ask(prompt=10, max_tokens=10, clampable=False, priced=False) -> Ask:
    return Ask(prompt, max_tokens, clampable, IN if priced else ZERO, OUT if priced else ZERO)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Row:
    held: Units
    free: Units
    expires_at: datetime
    day: str
    month: str
    recall: bool = False


@dataclass
class Db:
    """The database side, in memory, by the rules lease_store.py implements in SQL."""

    limits: Limits
    policy: Policy
    rows: dict = field(default_factory=dict)
    ledger: list = field(default_factory=list)  # (started_at, tokens, usd) of settled requests
    fail_next: str | None = None  # "before": nothing committed; "after": committed, answer lost

    def base(self, now: datetime) -> TenantState:
        window = tuple((a, t) for a, t, _ in self.ledger if (now - a).total_seconds() < WINDOW_S)
        day = [(t, u) for a, t, u in self.ledger if day_key(a) == day_key(now)]
        month = [(t, u) for a, t, u in self.ledger if month_key(a) == month_key(now)]
        return TenantState(now, 0, window, Spend(sum(t for t, _ in day), sum((u for _, u in day), ZERO)),
                           Spend(sum(t for t, _ in month), sum((u for _, u in month), ZERO)))

    def others(self, lease_id: str, now: datetime) -> Others:
        live_since = now - timedelta(seconds=self.policy.skew_s)
        window_since = live_since - timedelta(seconds=WINDOW_S)
        o = Others(spare=Units.zero(self.limits))
        for lid, r in self.rows.items():
            if lid == lease_id:
                continue
            live = r.expires_at > live_since
            win = r.expires_at > window_since
            h = r.held
            o = Others(o.window_requests + ((h.requests or 0) if win else 0),
                       o.window_tokens + ((h.tokens or 0) if win else 0),
                       o.slots + ((h.slots or 0) if live else 0),
                       o.day + (Spend(h.tokens or 0, h.usd or ZERO) if live and r.day == day_key(now) else Spend()),
                       o.month + (Spend(h.tokens or 0, h.usd or ZERO) if live and r.month == month_key(now) else Spend()),
                       o.spare + (r.free if live else Units()), o.live + live)
        return o

    def sync(self, lease_id: str, report: Report, settled: list, now: datetime):
        fail, self.fail_next = self.fail_next, None
        if fail == "before":
            raise ConnectionError("database unreachable")
        for ticket_usage in settled:
            self.ledger.append(ticket_usage)
        own = self.rows.get(lease_id)
        result = grant(self.limits, self.base(now), self.others(lease_id, now), report,
                       recall=bool(own and own.recall))
        self.rows[lease_id] = Row(result.held, report.bridge + result.spare,
                                  now + timedelta(seconds=self.policy.ttl_s), day_key(now), month_key(now))
        if result.recallable:
            for lid, r in self.rows.items():
                if lid != lease_id and r.expires_at > now - timedelta(seconds=self.policy.skew_s):
                    r.recall = True
        if fail == "after":
            raise TimeoutError("commit outcome unknown")
        return result

    def settle_sync(self, lease_id: str, holding: Units, settled: list, now: datetime) -> bool:
        """LeaseStore.settle_sync: rows in, the live lease's holding lowered, no renewal."""
        fail, self.fail_next = self.fail_next, None
        if fail == "before":
            raise ConnectionError("database unreachable")
        self.ledger.extend(settled)
        row = self.rows.get(lease_id)
        recall = False
        if row is not None and row.expires_at > now - timedelta(seconds=self.policy.skew_s):
            assert all(h is None or h <= was for (_, h), (_, was) in zip(holding.items(), row.held.items()))
            row.held, recall = holding, row.recall
        if fail == "after":
            raise TimeoutError("commit outcome unknown")
        return recall


class Holder:
    """An ingress: a Lease, its requests in flight, and the real usage it caused."""

    def __init__(self, name: str, db: Db, world: "World"):
        self.name, self.db, self.world = name, db, world
        self.lease = Lease(db.limits, db.policy)
        self.running: list[Ticket] = []
        self.dead = False

    def sync(self, now, ask_: Ask | None = None):
        report, payloads = self.lease.begin_sync(now, ask_)
        try:
            result = self.db.sync(self.name, report, payloads, now)
        except (ConnectionError, TimeoutError):
            self.lease.abort_sync()
            return None
        ticket = self.lease.end_sync(result, payload=None)
        return result, ticket

    def settle(self, now) -> None:
        holding, payloads = self.lease.begin_settle()
        try:
            recall = self.db.settle_sync(self.name, holding, payloads, now)
        except (ConnectionError, TimeoutError):
            self.lease.abort_sync()
            return
        self.lease.end_settle(recall)

    def request(self, now, a: Ask) -> bool:
        ticket = self.lease.admit(a, now)
        if ticket is None:
            out = self.sync(now, a)
            if out is None or out[1] is None:
                return False
            ticket = out[1]
        self.world.admitted(ticket, now)
        self.running.append(ticket)
        return True

    def end(self, now, rng: random.Random):
        ticket = self.running.pop(rng.randrange(len(self.running)))
        used_tokens = rng.randint(0, ticket.units.tokens) if ticket.units.tokens is not None else 0
        used_usd = (ticket.units.usd * rng.randint(0, 100) / 100).quantize(Decimal(10) ** -12) \
            if ticket.units.usd is not None else ZERO
        self.lease.finish(ticket, payload=self.world.ended(ticket, used_tokens, used_usd))


@dataclass
class World:
    """The real usage, kept apart from what anyone counts: what the limits must bound."""

    limits: Limits
    admissions: list = field(default_factory=list)  # (at, worst tokens)
    live: dict = field(default_factory=dict)  # id(ticket) -> (at, worst tokens, worst usd)
    done: list = field(default_factory=list)  # (at, real tokens, real usd)

    def admitted(self, ticket: Ticket, now):
        self.admissions.append(now)
        self.live[id(ticket)] = (now, ticket.units.tokens or 0, ticket.units.usd or ZERO)

    def ended(self, ticket: Ticket, tokens: int, usd: Decimal) -> tuple:
        a, _, _ = self.live.pop(id(ticket))
        self.done.append((a, tokens, usd))
        return self.done[-1]

    def check(self, now):
        """Every limit holds for the real usage, counting the running requests at their worst case."""
        L = self.limits
        recent = [a for a in self.admissions if (now - a).total_seconds() < WINDOW_S]
        if L.requests_per_minute is not None:
            assert len(recent) <= L.requests_per_minute
        if L.max_concurrent_requests is not None:
            assert len(self.live) <= L.max_concurrent_requests
        entries = [(a, t, u) for a, t, u in self.done] + list(self.live.values())
        if L.tokens_per_minute is not None:
            assert sum(t for a, t, _ in entries if (now - a).total_seconds() < WINDOW_S) <= L.tokens_per_minute
        for limit, key, pick in ((L.tokens_per_day, day_key, 1), (L.tokens_per_month, month_key, 1),
                                 (L.usd_per_day, day_key, 2), (L.usd_per_month, month_key, 2)):
            if limit is not None:
                assert sum((e[pick] for e in entries if key(e[0]) == key(now)), ZERO) <= limit


LIMIT_SETS = [
    Limits(requests_per_minute=40),
    Limits(tokens_per_minute=900),
    Limits(max_concurrent_requests=5),
    Limits(tokens_per_day=2_000),
    Limits(tokens_per_month=2_500),
    Limits(usd_per_day=Decimal("0.004")),
    Limits(usd_per_month=Decimal("0.0051")),
    Limits(requests_per_minute=30, tokens_per_minute=800, max_concurrent_requests=4, tokens_per_day=3000,
           usd_per_day=Decimal("0.006")),
]


@pytest.mark.parametrize("limits", LIMIT_SETS, ids=lambda L: ",".join(k for k, v in vars(L).items() if v is not None))
@pytest.mark.parametrize("seed", range(3))
def test_many_holders_never_admit_beyond_any_limit(limits, seed):
    """4 ingresses, random asks, endings, syncs (some failing before or after their commit),
    deaths and time: the real usage stays within every limit at every step. A live ingress
    renews every renew_s (as its keeper does); one that dies takes its requests with it."""
    rng = random.Random(seed)
    policy = Policy(ttl_s=5, renew_s=1, horizon_s=1, skew_s=0.5, settle_batch=4, settle_s=0.2)
    db, world = Db(limits, policy), World(limits)
    holders = [Holder(f"ingress-{i}", db, world) for i in range(4)]
    now, admitted, refused, settle_only = at(0), 0, 0, 0
    for _ in range(700):
        now += timedelta(seconds=rng.choice((0, 0, 0.01, 0.05, 0.3, 2.0)))
        for other in holders:  # every live ingress renews on time (its keeper); this one succeeds
            if not other.dead and other.lease.sync_due(now) in ("new", "renew"):
                other.sync(now)
        h = rng.choice(holders)
        if h.dead:
            continue
        roll = rng.random()
        if roll < 0.5:
            a = ask(rng.randint(1, 30), rng.randint(1, 40), clampable=rng.random() < 0.3, priced=True)
            admitted_now = h.request(now, a)
            admitted += admitted_now
            refused += not admitted_now
        elif roll < 0.8 and h.running:
            h.end(now, rng)
            if h.lease.settle_only(now) and rng.random() < 0.5:  # a busy ingress settles at once
                db.fail_next = rng.choice((None, None, None, "before", "after"))
                h.settle(now)
                settle_only += 1
        elif roll < 0.9:
            db.fail_next = rng.choice((None, None, "before", "after"))
            if h.lease.settle_only(now) and rng.random() < 0.6:
                h.settle(now)  # the rows alone, as a busy ingress settles between renewals
                settle_only += 1
            elif h.lease.sync_due(now) or rng.random() < 0.5:
                h.sync(now)
        elif roll < 0.905:
            # It stops syncing; its requests die with it (their callers are gone), and what it
            # had not yet settled never reaches the ledger: unbilled, so uncounted (issue 18
            # item 4 bills it from the replica's count; the group commit makes it only requests
            # whose client never got a complete answer).
            h.dead = True
            while h.running:
                world.ended(h.running.pop(), 0, ZERO)
            for ticket in h.lease._settled + h.lease._reported:
                world.done.remove(ticket.payload)
        world.check(now)
    assert admitted > 20 and refused > 0  # the limits were reached, and requests passed
    assert settle_only > 10


def test_sum_of_grants_never_exceeds_the_limit_across_holders():
    """Every holder asking for as much as it can: the units held never add up past the limit."""
    limits = Limits(requests_per_minute=1000, tokens_per_day=50_000, max_concurrent_requests=64)
    policy = Policy(horizon_s=100)  # greedy targets: only the limit and the share stop them
    db = Db(limits, policy)
    rng = random.Random(1)
    leases = [Lease(limits, policy) for _ in range(8)]
    for step in range(200):
        i = rng.randrange(8)
        lease = leases[i]
        lease._demand.requests, lease._demand.tokens = 10_000, 10_000_000  # a huge recent demand
        report, _ = lease.begin_sync(at(step * 0.01))
        lease.end_sync(db.sync(f"l{i}", report, [], at(step * 0.01)))
        total = Units.zero(limits)
        for row in db.rows.values():
            total = total + row.held
        assert total.requests <= 1000 and total.tokens <= 50_000 and total.slots <= 64
    assert total.requests > 900 and total.tokens > 45_000  # and nearly all of it is out


def test_an_idle_lease_gives_everything_back_at_its_next_renewal():
    limits = Limits(requests_per_minute=600, max_concurrent_requests=10, tokens_per_day=100_000)
    db = Db(limits, Policy(renew_s=1))
    lease = Lease(limits, db.policy)
    now = at(0)
    for _ in range(3):  # busy: 50 requests per sync interval
        report, _ = lease.begin_sync(now)
        lease.end_sync(db.sync("a", report, [], now))
        for _ in range(50):
            t = lease.admit(ask(), now)
            if t:
                lease.finish(t, payload=(now, 20, ZERO))
        now += timedelta(seconds=1)
    assert lease.free.requests > 0
    report, settled = lease.begin_sync(now)
    lease.end_sync(db.sync("a", report, settled, now))  # settles; the last interval was busy
    now += timedelta(seconds=1)
    assert lease.sync_due(now) == "renew"
    report, settled = lease.begin_sync(now)  # an idle interval: demand 0
    result = db.sync("a", report, settled, now)
    lease.end_sync(result)
    assert db.rows["a"].held == Units(0, 0, None, 0)
    assert lease.free == Units(0, 0, None, 0)


def test_spare_is_sized_to_the_recent_rate_and_capped_by_a_share_of_what_is_left():
    limits = Limits(requests_per_minute=100_000, tokens_per_day=10**9)
    policy = Policy(horizon_s=2)
    db = Db(limits, policy)
    lease = Lease(limits, policy)
    report, _ = lease.begin_sync(at(0))
    lease.end_sync(db.sync("a", report, [], at(0)))
    for _ in range(300):  # 300 requests of 20 tokens in the next 0.5 s: 600/s, 12 000 tokens/s
        lease.admit(ask(), at(0.25))
    report, _ = lease.begin_sync(at(0.5))
    result = db.sync("a", report, [], at(0.5))
    lease.end_sync(result)
    # rate averaged with the previous interval's (0): ~300/s; horizon 2 s -> ~600 requests free
    assert 500 <= lease.free.requests <= 700, lease.free
    assert 10_000 <= lease.free.tokens <= 14_000, lease.free
    # A second holder asking for the moon gets at most half of what is left (two live leases).
    other = Lease(limits, policy)
    other._demand.requests, other._demand.tokens = 10**9, 10**12
    report, _ = other.begin_sync(at(0.5))
    result = db.sync("b", report, [], at(0.5))
    left = room(limits, tenant_view(limits, db.base(at(0.5)), db.others("b", at(0.5)), report.keep))
    assert result.spare.requests == left.requests // 2


def test_syncs_closer_than_the_rate_window_keep_measuring_instead_of_dropping_the_rate():
    """A busy ingress syncs for every group of settlements, a few ms apart: most of those
    intervals hold no admission, and each must not read as an idle lease (spare back to 0,
    every admission then a database round trip)."""
    limits = Limits(requests_per_minute=100_000, tokens_per_day=10**9)
    policy = Policy(horizon_s=1, rate_window_s=0.25)
    db = Db(limits, policy)
    lease = Lease(limits, policy)
    report, _ = lease.begin_sync(at(0))
    lease.end_sync(db.sync("a", report, [], at(0)))
    now, missed = 0.0, []
    for step in range(400):  # 1 admission per 5 ms (200/s), a sync every 2.5 ms, for 1 s
        now += 0.0025
        if step % 2 == 0:
            t = lease.admit(ask(), at(now))
            if t is None:  # would go to the database
                missed.append(now)
            else:
                lease.finish(t, payload=(at(now), 20, ZERO))
        report, settled = lease.begin_sync(at(now))
        lease.end_sync(db.sync("a", report, settled, at(now)))
    # Only while the first window measures (no rate known yet) do admissions miss the lease.
    assert missed and max(missed) <= 0.26, missed
    assert lease.free.requests >= 50  # ~200/s x 1 s
    # A whole window without an admission is idle: the spare goes back.
    report, settled = lease.begin_sync(at(now + 0.3))
    lease.end_sync(db.sync("a", report, settled, at(now + 0.3)))
    assert lease.free.requests == 0


def test_a_dead_lease_frees_slots_and_budgets_after_ttl_and_skew_and_its_window_a_minute_later():
    limits = Limits(requests_per_minute=10, max_concurrent_requests=4, tokens_per_day=1000)
    policy = Policy(ttl_s=5, skew_s=1, horizon_s=100)
    db = Db(limits, policy)
    dead = Lease(limits, policy)
    dead._demand.requests, dead._demand.tokens, dead._demand.peak_slots = 100, 100_000, 100
    report, _ = dead.begin_sync(at(0))
    dead.end_sync(db.sync("dead", report, [], at(0)))
    assert dead.free.slots == 4 and dead.free.tokens == 1000 and dead.free.requests == 10
    assert dead.admit(ask(), at(4.99)) is not None  # still before its deadline
    assert dead.admit(ask(), at(5.0)) is None  # its deadline: ttl after the sync started

    for t, slots, tokens, requests in ((5.9, 0, 0, 0), (6.01, 4, 1000, 0), (65.9, 4, 1000, 0), (66.01, 4, 1000, 10)):
        g = grant(limits, db.base(at(t)), db.others("other", at(t)), Report(Units.zero(limits), Units.zero(limits),
                                                                             Units(100, 10**6, None, 100)))
        assert (g.spare.slots, g.spare.tokens, g.spare.requests) == (slots, tokens, requests), t


def test_admission_never_crosses_the_utc_day_of_its_lease():
    limits = Limits(tokens_per_day=10_000)
    db = Db(limits, Policy(ttl_s=30))
    lease = Lease(limits, db.policy)
    late = datetime(2026, 3, 14, 23, 59, 50, tzinfo=UTC)
    lease._demand.requests, lease._demand.tokens = 10, 1000
    report, _ = lease.begin_sync(late)
    lease.end_sync(db.sync("a", report, [], late))
    assert lease.deadline == datetime(2026, 3, 15, tzinfo=UTC)  # not late + 30 s
    assert lease.admit(ask(), late + timedelta(seconds=9)) is not None
    assert lease.admit(ask(), late + timedelta(seconds=10)) is None  # the next day needs a new sync


def test_each_limit_kind_admits_exactly_its_limit_through_leases():
    """Two holders, one request at a time, alternating: exactly what the limit allows passes."""
    cases = [
        (Limits(requests_per_minute=7), ask(), 7),
        (Limits(tokens_per_minute=200), ask(10, 10), 10),
        (Limits(tokens_per_day=205), ask(10, 10), 10),
        (Limits(tokens_per_month=199), ask(10, 10), 9),
        (Limits(usd_per_day=Decimal("0.00040")), ask(10, 10, priced=True), 10),  # 0.00004 each
        (Limits(usd_per_month=Decimal("0.000399999999")), ask(10, 10, priced=True), 9),
        (Limits(max_concurrent_requests=3), ask(), 3),
    ]
    for limits, a, allowed in cases:
        policy = Policy(horizon_s=1)
        db = Db(limits, policy)
        world = World(limits)
        holders = [Holder("a", db, world), Holder("b", db, world)]
        admitted = 0
        for i in range(40):
            h = holders[i % 2]
            if h.request(at(i * 0.01), a):
                admitted += 1
            elif h.lease.recallable:  # the other holder's spare: it gives it back at its next sync
                holders[(i + 1) % 2].sync(at(i * 0.01))
                admitted += h.request(at(i * 0.01), a)
        assert admitted == allowed, (limits, admitted)


def test_a_clamp_only_the_others_spare_causes_waits_for_it_unless_final():
    """A clampable ask the tenant's real room would give more than the room left beside another
    lease's unused spare: cutting it now would give a shorter answer, and a second clamped
    request later, than one reservation per request gives."""
    limits = Limits(tokens_per_day=1000)
    policy = Policy(horizon_s=1)
    db = Db(limits, policy)
    a = Lease(limits, policy)
    a._demand.requests, a._demand.tokens = 1, 400
    report, _ = a.begin_sync(at(0))
    a.end_sync(db.sync("a", report, [], at(0)))
    spare = a.free.tokens
    assert spare > 0
    db.ledger.append((at(0), 950 - spare, ZERO))  # 50 tokens left beside a's spare
    b = Lease(limits, policy)
    report, _ = b.begin_sync(at(1), ask(10, 1000, clampable=True))
    waiting = grant(limits, db.base(at(1)), db.others("b", at(1)), report, final=False)
    assert waiting.decision is None and waiting.recallable and waiting.held == Units(None, 0, None, None)
    now = grant(limits, db.base(at(1)), db.others("b", at(1)), report, final=True)
    assert isinstance(now.decision, Grant) and now.decision.max_tokens == 40  # what the waiter finally takes
    report_a, _ = a.begin_sync(at(1.1), returning=True)  # a gives its spare back (a recall, or idle)
    a.end_sync(db.sync("a", report_a, [], at(1.1)))
    lifted = grant(limits, db.base(at(1.2)), db.others("b", at(1.2)), report, final=False)
    assert isinstance(lifted.decision, Grant) and lifted.decision.max_tokens == 40 + spare


def test_a_recallable_refusal_is_lifted_once_the_other_lease_syncs():
    limits = Limits(tokens_per_day=1000)
    policy = Policy(horizon_s=100)
    db = Db(limits, policy)
    a, b = Lease(limits, policy), Lease(limits, policy)
    a._demand.requests, a._demand.tokens = 10, 10**6
    report, _ = a.begin_sync(at(0))
    a.end_sync(db.sync("a", report, [], at(0)))
    assert a.free.tokens == 1000  # alone: it may take everything (a share of 1)
    report, _ = b.begin_sync(at(1), ask(100, 100))
    result = db.sync("b", report, [], at(1))
    b.end_sync(result)
    assert isinstance(result.decision, Refusal) and result.recallable and db.rows["a"].recall
    report, _ = a.begin_sync(at(1.1))  # a's next sync: told to give back, it grants nothing more
    result = db.sync("a", report, [], at(1.1))
    a.end_sync(result)
    assert result.recall and result.spare.tokens == 0
    assert a.sync_due(at(1.1)) == "recall"
    report, _ = a.begin_sync(at(1.2))  # and the bridge goes with the next one
    a.end_sync(db.sync("a", report, [], at(1.2)))
    report, _ = b.begin_sync(at(1.3), ask(100, 100))
    result = db.sync("b", report, [], at(1.3))
    assert isinstance(result.decision, Grant)


def test_a_refusal_no_recall_can_lift_is_final_and_says_which_limit():
    limits = Limits(tokens_per_day=150)
    db = Db(limits, Policy())
    db.ledger.append((at(0), 100, ZERO))
    lease = Lease(limits, db.policy)
    report, _ = lease.begin_sync(at(1), ask(30, 30))
    result = db.sync("a", report, [], at(1))
    assert isinstance(result.decision, Refusal) and not result.recallable
    assert result.decision.code == OUT_OF_BUDGET and result.decision.limit == "tokens_per_day"
    assert lease.end_sync(result) is None


def test_a_clampable_ask_is_clamped_to_the_tenants_room_not_to_the_slice():
    limits = Limits(tokens_per_day=1000)
    db = Db(limits, Policy(horizon_s=1))
    lease = Lease(limits, db.policy)
    lease._demand.requests, lease._demand.tokens = 1, 50
    report, _ = lease.begin_sync(at(0))
    lease.end_sync(db.sync("a", report, [], at(0)))
    assert lease.free.tokens < 200
    a = ask(100, 5000, clampable=True)
    assert lease.admit(a, at(0.1)) is None  # never clamped locally
    report, _ = lease.begin_sync(at(0.1), a)
    result = db.sync("a", report, [], at(0.1))
    ticket = lease.end_sync(result)
    assert result.decision.max_tokens == 1000 - report.keep.tokens - 100  # the bridge it kept counts
    assert ticket.units.tokens == 100 + result.decision.max_tokens
    assert result.decision.clamped_from == 5000


def test_an_aborted_sync_never_leaves_the_lease_more_than_the_database_holds():
    limits = Limits(requests_per_minute=1000, tokens_per_day=100_000, max_concurrent_requests=50)
    for outcome in ("before", "after"):
        db = Db(limits, Policy(horizon_s=1))
        lease = Lease(limits, db.policy)
        lease._demand.requests, lease._demand.tokens, lease._demand.peak_slots = 200, 4000, 20
        report, _ = lease.begin_sync(at(0))
        lease.end_sync(db.sync("a", report, [], at(0)))
        tickets = [lease.admit(ask(), at(0.5)) for _ in range(20)]
        for t in tickets[:10]:
            lease.finish(t, payload=(t.admitted_at, 5, ZERO))
        report, settled = lease.begin_sync(at(1))  # idle-ish rate: most free units go back
        db.fail_next = outcome
        with pytest.raises((ConnectionError, TimeoutError)):
            db.sync("a", report, settled, at(1))
        lease.abort_sync()
        held = db.rows["a"].held  # "before": the old holding; "after": the new one
        mine = lease.in_use + lease.free
        assert mine.requests <= held.requests + 10 * (outcome == "after") and mine.slots <= held.slots
        # the 10 settled requests are reported again; their rows are idempotent (request ids)
        assert lease.pending == 10


def test_units_arithmetic_keeps_untracked_kinds_unlimited():
    limits = Limits(requests_per_minute=5)
    z = Units.zero(limits)
    assert z == Units(0, None, None, None)
    assert units_of(limits, 100, Decimal(1)) == Units(1, None, None, None)
    assert Units(2, None, None, None).covers(Units(1, 10**9, Decimal(10**9), 10**9))
    assert not Units(0, None, None, None).covers(Units(1))
    assert (Units(3, 5, Decimal("1.5"), 2) - Units(1, 2, Decimal("0.5"), 1)) == Units(2, 3, Decimal("1.0"), 1)
