"""The simulator's `router` policy runs the router's own booking code (router.routing.load_book):
a LoadBook per pool as the ingress keeps, a LoadBook per replica as TokenLoadRouter keeps."""

import dataclasses
import random

import pytest

import bench.fleet_sim as fleet_sim
from bench.sim import fleets, simulator
from bench.sim.policies import POLICIES, RouterPolicy, make_policy
from bench.workload import Job, generate
from common.protocol import work_tokens
from router.routing.load_book import LoadBook, ranked
from router.routing.pools import choose_pool


def job(i: int, prompt: int, output: int = 100) -> Job:
    return Job(f"t{i}", 0.0, prompt, output, None, 0)


def granted_work(prompt: int, pool_len: int) -> int:
    """What the ingress books: the prompt plus the completion the pool leaves room for."""
    return work_tokens(prompt, pool_len - prompt)


def test_router_books_on_queue_route_and_releases_on_finish():
    fleet = simulator.build_fleet(fleet_sim.mixed_fleet(1, 2))
    policy = RouterPolicy()
    assert isinstance(policy.pool_book, LoadBook) and isinstance(policy.replica_book, LoadBook)
    short, long = job(1, 3000), job(2, 20_000)
    short_work, long_work = granted_work(3000, 16_384), granted_work(20_000, 40_960)

    assert policy.queue(short, fleet) == "short"
    # Queued: the pool carries the work (as the ingress books before routing); no replica yet.
    assert policy.pool_book.booked_on(short.job_id) == "short"
    assert policy.pool_book.tokens("short") == short_work and policy.pool_book.requests("short") == 1
    assert policy.replica_book.snapshot_tokens() == {}

    replica = policy.choose(short, fleet)
    fleet.hold(replica)
    policy.on_route(short, replica)
    assert policy.replica_book.booked_on(short.job_id) == replica.replica_id
    assert policy.replica_book.load(replica.replica_id).local_tokens == short_work
    assert policy.replica_book.load(replica.replica_id).local_requests == 1
    assert policy.replica_book.snapshot_tokens() == {replica.replica_id: short_work}

    assert policy.queue(long, fleet) == "long"
    other = policy.choose(long, fleet)
    fleet.hold(other)
    policy.on_route(long, other)
    assert other.replica_id == "long-0"
    assert policy.pool_book.snapshot_tokens() == {"short": short_work, "long": long_work}
    assert policy.replica_book.snapshot_tokens() == {replica.replica_id: short_work, "long-0": long_work}

    policy.on_finish(short, replica)
    fleet.release(replica)
    assert policy.pool_book.tokens("short") == 0 and policy.pool_book.requests("short") == 0
    assert policy.replica_book.tokens(replica.replica_id) == 0
    assert policy.replica_book.requests(replica.replica_id) == 0
    assert policy.pool_book.booked_on(short.job_id) is None and policy.replica_book.booked_on(short.job_id) is None
    policy.on_finish(long, other)
    assert policy.pool_book.snapshot_tokens() == {} and policy.replica_book.snapshot_tokens() == {}


def test_router_choice_and_spill_read_the_books():
    """Every choice is the first of ranked() over the replica book's loads (the replicas with
    room), and every pool is choose_pool's over the pool book's outstanding tokens."""
    short = fleets.short_pool(4)
    short = dataclasses.replace(short, limits=dataclasses.replace(short.limits, spill_at_outstanding_tokens=60_000))
    fleet = simulator.build_fleet((short, fleets.long_pool(1)))
    for replica in fleet.replicas:
        replica.max_ongoing = 6
    policy, rng = RouterPolicy(), random.Random(11)
    routed: list[tuple[Job, object]] = []
    spilled = waited = 0
    for i in range(600):
        if routed and (rng.random() < 0.4 or not fleet.with_room()):
            j, replica = routed.pop(rng.randrange(len(routed)))
            policy.on_finish(j, replica)
            fleet.release(replica)
            continue
        j = job(i, rng.choice((300, 2000, 7000, 8000, 15_000)))
        expected_pool = choose_pool(j.prompt_tokens, None, fleet.pools, policy.pool_book.snapshot_tokens(),
                                    fleet.cap).pool.name
        pool = policy.queue(j, fleet)
        assert pool == expected_pool
        spilled += j.prompt_tokens <= 8_192 and pool == "long"
        candidates = fleet.with_room(pool)
        replica = policy.choose(j, fleet)
        if not candidates:
            assert replica is None
            waited += 1
            policy.on_finish(j, fleet.by_pool[pool][0])  # give up on it: releasing what is unrouted is harmless
            continue
        loads = [policy.replica_book.load(r.replica_id) for r in candidates]
        assert replica.replica_id == ranked(loads)[0].replica_id
        fleet.hold(replica)
        policy.on_route(j, replica)
        routed.append((j, replica))
    assert spilled > 20 and waited > 20  # both paths taken
    assert sum(policy.replica_book.requests(r.replica_id) for r in fleet.replicas) == len(routed)
    assert sum(policy.pool_book.snapshot_tokens().values()) == sum(policy.replica_book.snapshot_tokens().values())


def test_a_whole_simulation_leaves_both_books_empty():
    policy = RouterPolicy()
    jobs = generate(1.0, 40.0, seed=2)
    records: list[dict] = []
    result = fleet_sim.simulate(fleet_sim.mixed_fleet(1, 2), jobs, policy, duration_s=40.0, records=records)
    assert result.policy == "router" and result.unfinished == 0
    assert {r["pool"] for r in records} == {"short", "long"}
    assert policy.pool_book.snapshot_tokens() == {} and policy.replica_book.snapshot_tokens() == {}


def test_registry_names():
    assert POLICIES == ("round_robin", "pow2", "length_only", "router")
    assert isinstance(make_policy("router"), RouterPolicy)
    assert [make_policy(name).name for name in POLICIES] == list(POLICIES)
    with pytest.raises(ValueError, match="renamed 'router'"):
        make_policy("ours")


def test_fleet_sim_keeps_its_public_names():
    assert fleet_sim.simulate is simulator.simulate and fleet_sim.Result is simulator.Result
    assert fleet_sim.SLO is fleets.SLO and fleet_sim.mixed_fleet is fleets.mixed_fleet
    assert fleet_sim.short_pool is fleets.short_pool and fleet_sim.long_pool is fleets.long_pool
    assert [p.name for p in fleet_sim.mixed_fleet(1, 2)] == ["short", "long"]
    assert callable(fleet_sim.main) and fleet_sim.QUICK.cheapest_policies == ("predicted",)  # the default policy
