"""router.routing.predict: the latency a replica's engine model predicts, and the order it gives."""

import dataclasses

from common.engine_model import H100_TP1, L40S_TP2, EngineModel
from router.routing.predict import ReplicaView, RequestShape, holds, pick, predict, rank

CHAT = RequestShape(prompt_tokens=700, likely_output_tokens=900, ttft_limit_s=1.07, tpot_limit_s=0.08)
DOC = RequestShape(prompt_tokens=16_000, likely_output_tokens=900, ttft_limit_s=2.6, tpot_limit_s=0.08)


def view(name="r", profile=H100_TP1, usd=7.0, **state) -> ReplicaView:
    return ReplicaView(name, "pool", profile, usd, 40_960, **state)


def test_an_idle_replica_predicts_its_profiles_prefill_and_step_time():
    p = predict(view(), CHAT)
    assert abs(p.ttft_s - (H100_TP1.base_s + 700 * H100_TP1.prefill_s_per_token)) < 1e-9
    assert H100_TP1.base_s < p.tpot_s < 0.03 and p.meets and not p.waits_for_room


def test_prefill_queued_ahead_and_a_busy_batch_delay_the_first_token():
    idle = predict(view(), DOC).ttft_s
    queued = predict(view(queued_prefill_tokens=20_000), DOC).ttft_s
    busy = predict(view(running=40, kv_tokens=100_000), DOC).ttft_s
    assert idle < busy < queued


def test_a_cached_prefix_shortens_the_prefill():
    assert predict(view(prefix_cached_tokens=600), CHAT).ttft_s < predict(view(), CHAT).ttft_s


def test_one_more_sequence_on_a_big_batch_costs_time_per_token():
    assert predict(view(running=40, kv_tokens=120_000), CHAT).tpot_s > predict(view(running=2, kv_tokens=2_000), CHAT).tpot_s


def test_no_room_adds_a_wait_for_running_sequences_to_finish():
    full = predict(view(running=H100_TP1.max_num_seqs, kv_tokens=100_000), CHAT)
    assert full.waits_for_room and full.ttft_s > predict(view(running=H100_TP1.max_num_seqs - 2, kv_tokens=100_000), CHAT).ttft_s


def test_the_filter_follows_the_context_and_the_kv():
    assert holds(view(), DOC)
    assert not holds(dataclasses.replace(view(), max_model_len=12_000), DOC)
    small = dataclasses.replace(H100_TP1, kv_capacity_tokens=10_000)
    assert not holds(view(profile=small), DOC)


def test_the_cheaper_class_wins_while_it_keeps_the_objectives_and_not_past_that():
    cheap, dear = view("cheap", usd=1.0), view("dear", usd=7.0)
    assert [p.replica_id for p in pick([dear, cheap], CHAT)] == ["cheap", "dear"]
    swamped = view("cheap", usd=1.0, queued_prefill_tokens=60_000)  # its chats would wait seconds
    assert pick([dear, swamped], CHAT)[0].replica_id == "dear"


def test_the_same_class_is_ranked_by_load_not_by_batching_discounts():
    a, b = view("a", running=30, kv_tokens=40_000), view("b", running=1, kv_tokens=1_000)
    assert pick([a, b], CHAT)[0].replica_id == "b"


def test_when_nothing_meets_the_objectives_the_least_missing_comes_first():
    worse = view("worse", profile=L40S_TP2, usd=1.0, queued_prefill_tokens=80_000)
    bad = view("bad", queued_prefill_tokens=40_000)
    order = rank([predict(worse, DOC), predict(bad, DOC)])
    assert not order[0].meets and [p.replica_id for p in order] == ["bad", "worse"]


def test_the_engine_model_reports_the_prefill_it_still_has_to_do():
    engine = EngineModel(L40S_TP2)
    engine.add("a", 5_000, 10)
    assert engine.stats().prefill_tokens == 5_000
    engine.step()  # one 2 048-token chunk
    assert engine.stats().prefill_tokens == 5_000 - L40S_TP2.max_num_batched_tokens
    assert engine.kv_used_tokens == L40S_TP2.max_num_batched_tokens


def test_a_request_goes_to_the_class_that_just_holds_its_objectives():
    """A chat meets its objectives on both classes and takes the slower one, leaving the fast
    one to a long document, which only the fast class can start in time."""
    h100, l40s = view("h100", profile=H100_TP1, usd=7.0), view("l40s", profile=L40S_TP2, usd=5.2)
    assert pick([h100, l40s], CHAT)[0].replica_id == "l40s"
    assert pick([h100, l40s], DOC)[0].replica_id == "h100"
    assert not predict(l40s, DOC).meets  # 16k tokens in 2 048-token chunks: over 2.6 s even idle
    busy_l40s = view("l40s", profile=L40S_TP2, usd=5.2, running=L40S_TP2.max_num_seqs, kv_tokens=180_000)
    assert pick([h100, busy_l40s], CHAT)[0].replica_id == "h100"  # fit yields to load


def test_replicas_of_a_class_are_ranked_by_one_load_measure_whatever_the_request():
    """A chat and a long RAG prompt both pick the emptier replica: ranking each by its own predicted
    miss would send chats away from long contexts and segregate request kinds."""
    long_contexts = view("a", profile=L40S_TP2, running=10, kv_tokens=90_000)
    many_chats = view("b", profile=L40S_TP2, running=40, kv_tokens=60_000)
    rag = RequestShape(prompt_tokens=6_000, likely_output_tokens=900, ttft_limit_s=1.6, tpot_limit_s=0.08)
    assert pick([long_contexts, many_chats], CHAT)[0].replica_id == pick([long_contexts, many_chats], rag)[0].replica_id


def test_a_request_that_misses_anyway_avoids_a_class_that_cannot_serve_it_even_idle():
    loaded_h100 = view("h100", profile=H100_TP1, queued_prefill_tokens=60_000, running=40, kv_tokens=120_000)
    idle_l40s = view("l40s", profile=L40S_TP2)
    order = pick([idle_l40s, loaded_h100], DOC)
    assert not order[0].meets and order[0].replica_id == "h100"


def test_attention_reads_every_sequences_context_even_where_their_kv_is_shared():
    # 40 chats sharing a 4k system prompt hold it once in KV, but each reads it every step.
    shared = view(running=40, kv_tokens=4_000 + 40 * 500, context_tokens=40 * 4_500)
    unshared_estimate = view(running=40, kv_tokens=4_000 + 40 * 500)
    assert predict(shared, CHAT).tpot_s > predict(unshared_estimate, CHAT).tpot_s + 40 * 4_000 * 0.9 * H100_TP1.attention_s_per_kv_token


def test_prompts_flowing_in_stretch_the_time_per_token():
    calm = predict(view(running=20, kv_tokens=40_000), CHAT).tpot_s
    # Half the GPU's time going to prefill doubles every step's duration for the decodes.
    busy = predict(view(running=20, kv_tokens=40_000, prefill_tokens_per_s=0.5 / H100_TP1.prefill_s_per_token), CHAT).tpot_s
    assert abs(busy - 2 * calm) < 1e-9


def test_a_cached_prefix_needs_no_kv_again():
    room = dict(running=10, kv_tokens=H100_TP1.kv_capacity_tokens - 2_000)
    doc = dataclasses.replace(DOC, likely_output_tokens=500)
    assert predict(view(**room), doc).waits_for_room
    assert not predict(view(**room, prefix_cached_tokens=15_000), doc).waits_for_room


def test_the_replica_holding_most_of_the_prompt_keeps_it_while_it_meets_the_objectives():
    holder = view("holder", L40S_TP2, 5.2, running=30, kv_tokens=120_000, context_tokens=150_000,
                  prefix_cached_tokens=650)
    faster_class = view("h100", H100_TP1, 7.0)
    emptier = view("empty", L40S_TP2, 5.2)
    order = [p.replica_id for p in pick([faster_class, emptier, holder], CHAT)]
    assert order[0] == "holder" and pick([holder], CHAT)[0].meets
    # Holding less than half of the prompt is not enough to outrank the emptier replica.
    small_hit = dataclasses.replace(holder, prefix_cached_tokens=300)
    assert pick([faster_class, emptier, small_hit], CHAT)[0].replica_id == "empty"
    # Once the holder would make the request late, affinity yields.
    late = dataclasses.replace(holder, running=60, context_tokens=400_000)
    assert not pick([late], CHAT)[0].meets and pick([faster_class, emptier, late], CHAT)[0].replica_id == "empty"
