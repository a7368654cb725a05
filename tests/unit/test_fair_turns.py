"""router.pipeline.fair_turns: the fair queue live on an event loop, over published replica stats.

No Ray: the fleet is a list of (pool, replica, stats) rows the tests change, as replicas' reports
would; the placer and the queue's decisions are the real ones.
"""

import asyncio
import time

import pytest

from common import protocol as P
from common.config import FairnessConfig, Objectives
from common.engine_model import L40S_TP2, EngineStats, published_stats
from router.fairness.tiers import Tier
from router.pipeline.fair_turns import FairTurns, Shed, allowed_for_replacement
from router.routing.placer import Placer, PoolTerms
from router.routing.pools import PoolLimits

TERMS = {"short": PoolTerms("short", L40S_TP2, 5.2, 40_960)}
CHAT = 700  # prompt tokens


def row(replica: str, **engine) -> tuple[str, str, dict]:
    stats = EngineStats(**{"running": 0, "waiting": 0, "kv_usage": 0.0, "queued_tokens": 0, **engine})
    return ("short", replica, {**published_stats(stats, "L40S_TP2"), P.STAT_TIME: time.time()})


IDLE = [row("r1")]
SWAMPED = [row("r1", running=8, waiting=40, prefill_tokens=400_000, kv_usage=0.9)]  # seconds of prefill queued


class Fleet:
    def __init__(self, rows, **fairness):
        self.rows = list(rows)
        self.placer = Placer(TERMS, Objectives())
        self.lengths: list[dict] = []
        config = FairnessConfig(enabled=True, retry_interval_s=0.01, **fairness)
        self.turns = FairTurns(config, self.placer, lambda: self.placer.views(self.rows, time.time()), L40S_TP2,
                               on_lengths=lambda lengths: self.lengths.append(dict(lengths)))

    def place(self, key: str):
        """What Pipeline.admit does: place over the fleet as it is, and book the placement."""
        placement = self.placer.place(self.placer.views(self.rows, time.time()), CHAT, {"short"})
        self.placer.dispatched(placement, key, time.time())
        return placement

    async def turn(self, key: str, tenant: str = "acme", tier: Tier = Tier.STANDARD):
        return await self.turns.turn(key, tenant, tier, self.place(key), {"short"})

    def booked(self) -> int:
        """Requests the placer counts as dispatched to r1 since its stats."""
        return self.placer.view("short", "r1", self.rows[0][2], time.time()).waiting - self.rows[0][2][P.STAT_WAITING]


def test_an_idle_fleet_admits_at_once_where_the_request_was_placed():
    async def main():
        fleet = Fleet(IDLE)
        placement = fleet.place("k1")
        turn = await fleet.turns.turn("k1", "acme", Tier.STANDARD, placement, {"short"})
        assert turn.decision == "admit" and turn.placement is placement and turn.waited_s == 0.0
        assert fleet.booked() == 1 and fleet.turns.held() == 0
        assert "k1" in fleet.turns.queue.charges  # its tenant is charged at dispatch
    asyncio.run(main())


def test_a_request_held_while_the_fleet_is_swamped_goes_when_room_frees():
    async def main():
        fleet = Fleet(SWAMPED, extra_wait_s={"standard": 5.0})
        task = asyncio.create_task(fleet.turn("k1"))
        await asyncio.sleep(0.05)
        assert not task.done() and fleet.turns.held() == 1
        assert fleet.booked() == 0  # held: its first placement is not counted on the replica
        assert fleet.lengths[-1][Tier.STANDARD] == 1
        fleet.rows = [row("r1")]  # the replica drained
        turn = await asyncio.wait_for(task, 1.0)
        assert turn.decision == "queue" and turn.waited_s > 0.04 and turn.placement.pool == "short"
        assert fleet.booked() == 1 and fleet.turns.held() == 0
        await asyncio.sleep(0.03)
        assert fleet.lengths[-1][Tier.STANDARD] == 0
    asyncio.run(main())


def test_a_held_request_is_shed_with_retry_after_when_its_bounded_wait_runs_out():
    async def main():
        fleet = Fleet(SWAMPED, max_wait_s={"standard": 0.1})
        started = time.monotonic()
        with pytest.raises(Shed) as shed:
            await fleet.turn("k1")
        waited = time.monotonic() - started
        assert 0.09 <= waited < 0.5 and shed.value.queued and shed.value.waited_s == pytest.approx(waited, abs=0.05)
        assert shed.value.status == 503 and shed.value.code == "overloaded"  # a lone tenant: the fleet is full
        assert int(shed.value.headers["retry-after"]) >= 1
        assert fleet.turns.held() == 0 and fleet.turns.queue.charges == {} and fleet.booked() == 0
    asyncio.run(main())


def test_a_held_request_whose_client_leaves_is_removed_and_charged_nothing():
    async def main():
        fleet = Fleet(SWAMPED, extra_wait_s={"standard": 5.0})
        task = asyncio.create_task(fleet.turn("k1"))
        await asyncio.sleep(0.03)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fleet.turns.held() == 0 and fleet.turns.queue.charges == {}
        fleet.rows = [row("r1")]
        await asyncio.sleep(0.05)
        assert fleet.booked() == 0  # never dispatched
    asyncio.run(main())


def test_held_requests_go_least_served_tenant_first_and_higher_tier_first():
    async def main():
        fleet = Fleet(IDLE, extra_wait_s={"standard": 5.0, "batch": 5.0})
        for i in range(3):  # the noisy tenant has been served
            await fleet.turn(f"served-{i}", tenant="noisy")
        fleet.rows = SWAMPED
        order: list[str] = []

        async def wait(key, tenant, tier=Tier.STANDARD):
            await fleet.turn(key, tenant, tier)
            order.append(key)

        tasks = [asyncio.create_task(wait(f"noisy-{i}", "noisy")) for i in range(3)]
        await asyncio.sleep(0.02)
        tasks.append(asyncio.create_task(wait("quiet", "quiet")))
        tasks.append(asyncio.create_task(wait("nightly", "quiet", Tier.BATCH)))
        await asyncio.sleep(0.02)
        tasks.append(asyncio.create_task(wait("urgent", "noisy", Tier.INTERACTIVE)))
        await asyncio.sleep(0.02)
        assert fleet.turns.held() == 6
        fleet.rows = [row(f"r{i}") for i in range(3)]  # room for all of them
        await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
        assert order[0] == "urgent"  # the higher tier first, whoever sends it
        # Then the standard tier: the quiet tenant, lifted to the noisy one's counter on arrival (no
        # credit for idle time: VTC), goes after the noisy tenant's earliest deadline and before
        # the rest of its backlog.
        assert order[1:4] == ["noisy-0", "quiet", "noisy-1"]
        assert order[-1] == "nightly"
    asyncio.run(main())


def test_finished_charges_the_actual_cost_and_frees_the_tenants_in_flight_share():
    async def main():
        fleet = Fleet(IDLE)
        turn = await fleet.turn("k1")
        assert fleet.turns.queue.in_flight.total > 0
        fleet.turns.finished("k1", (turn.placement, CHAT, 40))
        assert fleet.turns.queue.charges == {} and fleet.turns.queue.in_flight.total == 0
        fleet.turns.finished("k1", (turn.placement, CHAT, 40))  # twice (a stream's close after its end): no-op
        fleet.turns.finished("never-dispatched", None)
    asyncio.run(main())


def test_replacement_keeps_to_pools_that_hold_the_admitted_context():
    pools = [PoolLimits("short", 16_384, 16_383, 1), PoolLimits("long", 40_960, 40_959, 1)]
    assert allowed_for_replacement(pools, 40_960, 40_960) == {"long"}
    assert allowed_for_replacement(pools, 16_384, 40_960) == {"short", "long"}
