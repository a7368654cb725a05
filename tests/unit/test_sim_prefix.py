"""The simulator's prefix-heavy workload and the policies that use prefix chains: the predicted
policy reads the placer's memory (never the engine's cache), prefix_affinity matches chains."""

import collections
import dataclasses

import pytest

from bench.sim.fleets import mixed_fleet
from bench.sim.policies import Fleet, PrefixAffinity, Replica
from bench.sim.simulator import simulate
from bench.workload import PREFIX_HEAVY_MIX, Job, generate, generate_conversations
from common.engine_model import EngineModel, H100_TP1, L40S_TP2
from router.routing.pools import PoolLimits

MIX = PREFIX_HEAVY_MIX


def test_conversations_are_deterministic_and_each_turn_extends_the_last_with_its_answer():
    jobs = generate(4.0, 400.0, seed=5, mix=MIX)
    assert jobs == generate_conversations(4.0, 400.0, seed=5) != generate(4.0, 400.0, seed=6, mix=MIX)
    assert [j.arrival_s for j in jobs] == sorted(j.arrival_s for j in jobs)
    turns = collections.defaultdict(list)
    for j in jobs:
        turns[j.job_id.split("t")[0]].append(j)
    systems = {}
    for conversation in turns.values():
        first = conversation[0]
        assert first.chain[0] == (first.prefix_key, first.prefix_tokens)
        assert MIX.system_prompt_range[0] <= first.prefix_tokens <= MIX.system_prompt_range[1]
        assert systems.setdefault(first.prefix_key, first.prefix_tokens) == first.prefix_tokens  # one per tenant
        for previous, turn in zip(conversation, conversation[1:]):
            assert turn.chain[:len(previous.chain)] == previous.chain  # its prompt, its answer, then more
            assert turn.prompt_tokens > previous.prompt_tokens + previous.output_tokens
            # The next message comes after the previous answer could have streamed at the objectives.
            assert turn.arrival_s >= previous.arrival_s + MIX.answer_ttft_s + previous.output_tokens * MIX.answer_tpot_s
        for turn in conversation:
            assert turn.prompt_chain == turn.chain[:-1] and turn.prompt_chain[-1][1] == turn.prompt_tokens
            assert turn.prefix_chain[-1][1] == turn.prompt_tokens + turn.output_tokens
    assert 30 <= len(systems) <= MIX.tenants
    popular = collections.Counter(j.prefix_key for j in jobs).most_common()
    assert popular[0][1] > 3 * popular[len(popular) // 2][1]  # a few big tenants, a long tail


def live_working_set(jobs, at: float) -> int:
    """Tokens the fleet must hold at `at` to serve every live conversation from cache: each one's
    latest context (its last turn's prompt and answer, past the system prompt) plus the system
    prompts of the tenants they belong to."""
    conversations = collections.defaultdict(list)
    for j in jobs:
        conversations[j.job_id.split("t")[0]].append(j)
    contexts, systems = 0, {}
    for turns in conversations.values():
        last = turns[-1]
        ends = last.arrival_s + MIX.answer_ttft_s + last.output_tokens * MIX.answer_tpot_s
        if turns[0].arrival_s <= at <= ends:
            current = [t for t in turns if t.arrival_s <= at][-1]
            contexts += current.prompt_tokens + current.output_tokens - current.prefix_tokens
            systems[current.prefix_key] = current.prefix_tokens
    return contexts + sum(systems.values())


def test_the_working_set_exceeds_one_replicas_kv_and_fits_the_fleets():
    jobs = generate(4.0, 540.0, seed=1, mix=MIX)
    fleet_kv = 2 * H100_TP1.kv_capacity_tokens + 6 * L40S_TP2.kv_capacity_tokens
    for at in (400.0, 450.0, 500.0):  # the judged window
        assert 3 * max(H100_TP1.kv_capacity_tokens, L40S_TP2.kv_capacity_tokens) < live_working_set(jobs, at) < fleet_kv
    judged = [j for j in jobs if j.arrival_s >= 360.0]
    assert len(judged) / 180.0 == pytest.approx(4.0, rel=0.2)  # near the nominal rate after the warm-up


def test_the_old_mixes_share_one_prefix_then_the_whole_prompt():
    job = Job("j", 0.0, 900, 10, "sys-1", 600)
    assert job.prefix_chain == job.prompt_chain == (("sys-1", 600), ("j", 900))
    assert Job("j", 0.0, 900, 10, None, 0).prefix_chain == (("j", 900),)


def test_prefix_affinity_follows_the_longest_chain_match_else_the_smallest_tree():
    fleet = Fleet([PoolLimits("p", 40_960, 40_959, 10**9)], [Replica(f"r{i}", "p", 64) for i in range(3)])
    policy = PrefixAffinity(seed=1)
    sys_a = ("sysA", 3_000)

    def route(job: Job) -> str:
        replica = policy.choose(job, fleet)
        fleet.hold(replica)
        policy.on_route(job, replica)
        return replica.replica_id

    t0 = Job("c1t0", 0.0, 3_200, 100, "sysA", 3_000, (sys_a, ("c1u0", 3_200), ("c1a0", 3_300)))
    first = route(t0)
    other = route(Job("d1t0", 0.0, 2_100, 100, "sysB", 2_000, (("sysB", 2_000), ("d1u0", 2_100))))
    assert other != first  # no match: the replica whose tree is smallest
    t1 = Job("c1t1", 0.0, 3_400, 100, "sysA", 3_000, (*t0.chain, ("c1u1", 3_400), ("c1a1", 3_500)))
    assert route(t1) == first  # the conversation's next turn: the longest match
    c2 = Job("c2t0", 0.0, 3_100, 100, "sysA", 3_000, (sys_a, ("c2u0", 3_100), ("c2a0", 3_200)))
    assert route(c2) == first  # the tenant's system prompt alone matches most of the prompt
    for _ in range(12):  # imbalanced (max - min > 10 requests): power of two, blind to prefixes
        fleet.hold(fleet.replicas[int(first[1])])
    assert route(dataclasses.replace(c2, job_id="c3t0")) != first


def test_the_predicted_policy_uses_the_placers_memory_not_the_engines_cache(monkeypatch):
    def peek(*_):
        raise AssertionError("a routing policy looked into the engine's prefix cache")

    monkeypatch.setattr(EngineModel, "prefix_cached", peek)
    monkeypatch.setattr(EngineModel, "prefix_match", peek)
    # Few tenants, so that every conversation fits in the prefix caches: its later turns go back to
    # the replica holding it (light load: nothing to yield to).
    jobs = generate(1.0, 300.0, seed=3, mix=dataclasses.replace(MIX, tenants=6))
    records: list[dict] = []
    result = simulate(mixed_fleet(1, 2), jobs, "predicted", duration_s=300.0, records=records)
    assert result.goodput_fraction > 0.9
    where = {r["job_id"]: r["replica"] for r in records}
    by_conversation = collections.defaultdict(list)
    for j in jobs:
        by_conversation[j.job_id.split("t")[0]].append(where[j.job_id])
    later = [(a, b) for replicas in by_conversation.values() for a, b in zip(replicas, replicas[1:])]
    assert len(later) > 50 and sum(a == b for a, b in later) / len(later) > 0.8
