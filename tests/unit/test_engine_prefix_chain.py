"""common.engine_model's prefix cache of chains: a request reuses the longest cached run of its
chain from the start, including an earlier turn's generated answer, as soon as it is computed."""

import dataclasses

from common.engine_model import EngineModel, GPUProfile
from common.prefix_cache import ChainCache

TINY = GPUProfile(name="tiny", max_num_batched_tokens=100, max_num_seqs=8, kv_capacity_tokens=10_000,
                  base_s=0.01, prefill_s_per_token=0.001, decode_s_per_seq=0.002,
                  attention_s_per_kv_token=0.00001)


def engine(**changes) -> EngineModel:
    return EngineModel(dataclasses.replace(TINY, **changes))


def drain(e: EngineModel) -> dict[str, int]:
    """Step until idle; the prefill tokens each request computed (its first admission's chunks)."""
    prefilled: dict[str, int] = {}
    while not e.idle:
        result = e.step()
        for rid, r in result.requests.items():
            if r.scheduled_tokens > 1 or (r.scheduled_tokens == 1 and rid not in prefilled):
                prefilled[rid] = prefilled.get(rid, 0) + r.scheduled_tokens
    return prefilled


def test_a_later_turn_reuses_the_earlier_prompt_and_its_generated_answer():
    e = engine()
    turn1 = (("sys", 200), ("u0", 250), ("a0", 300))  # prompt 250, then its 50-token answer
    e.add("t1", 250, 50, chain=turn1)
    drain(e)
    assert e.prefix_match(turn1) == 300  # the answer's KV was cached as it was generated
    turn2 = (*turn1, ("u1", 320), ("a1", 340))
    e.add("t2", 320, 20, chain=turn2)
    assert drain(e)["t2"] == 20  # only the new user message is prefilled
    other = (("sys", 200), ("x0", 260))  # another chat of the same tenant shares the system prompt
    e.add("o", 260, 1, chain=other)
    assert drain(e)["o"] == 60


def test_a_prefix_is_shared_as_soon_as_it_is_computed():
    e = engine()
    e.add("a", 350, 1, chain=(("sys", 200), ("ua", 350)))
    e.step()
    e.step()  # a has computed its 200-token system prompt (two 100-token chunks), not its prompt
    assert e.prefix_match((("sys", 200),)) == 200 and e.prefix_match((("sys", 200), ("ua", 350))) == 200
    e.add("b", 250, 1, chain=(("sys", 200), ("ub", 250)))
    assert drain(e)["b"] == 50  # b, queued behind a, reused what a had computed


def test_the_last_token_is_always_computed_and_a_cut_chain_matches_up_to_the_gap():
    e = engine()
    e.add("a", 300, 1, chain=(("sys", 200), ("u", 300)))
    drain(e)
    e.add("same", 300, 1, chain=(("sys", 200), ("u", 300)))
    assert drain(e)["same"] == 1  # the whole prompt is cached: its last token still runs for its logits
    e.add("gap", 400, 1, chain=(("sys", 200), ("lost", 300), ("u2", 400)))
    assert drain(e)["gap"] == 200


def test_the_chain_lru_keeps_shared_roots_and_evicts_deep_segments_first():
    cache = ChainCache(1_000)
    cache.store((("sys", 400), ("c1", 700)))
    cache.store((("sys", 400), ("c2", 700)))  # 400 + 300 + 300
    cache.store((("other", 300),))  # 1 300 > 1 000: the least recently used segment goes
    assert "c1" not in cache and "sys" in cache and "c2" in cache and cache.used_tokens == 1_000
    cache.store((("sys", 400), ("c2", 700), ("c2-a", 900)))  # touches sys and c2, evicts "other"
    assert "other" not in cache and cache.match((("sys", 400), ("c2", 700), ("c2-a", 900))) == (3, 900)
    cache.discard(["c2"])
    assert cache.match((("sys", 400), ("c2", 700), ("c2-a", 900))) == (1, 400)  # c2-a is cut off


def test_one_prefix_key_is_a_chain_of_one():
    e = engine()
    e.add("a", 250, 1, prefix_key="sys", prefix_tokens=200)
    drain(e)
    assert e.prefix_cached("sys") == 200 == e.prefix_match((("sys", 200), ("more", 250)))
