import dataclasses
import math

import pytest

from common.engine_model import (
    H100_TP1,
    L40S_TP2,
    PROFILES,
    RTX4090_FP8_TP2,
    EngineModel,
    GPUProfile,
    StepResult,
)

# Round numbers so expected durations can be written out by hand.
TINY = GPUProfile(name="tiny", max_num_batched_tokens=100, max_num_seqs=8, kv_capacity_tokens=10_000,
                  base_s=0.01, prefill_s_per_token=0.001, decode_s_per_seq=0.002,
                  attention_s_per_kv_token=0.00001)


def tiny(**changes) -> EngineModel:
    return EngineModel(dataclasses.replace(TINY, **changes))


def run(engine: EngineModel, max_steps: int = 100_000) -> tuple[list[tuple[float, StepResult]], dict]:
    """Step until idle. Returns (end time, result) per step and, per request, its event times."""
    now, steps = 0.0, []
    events: dict[str, dict] = {}
    for _ in range(max_steps):
        if engine.idle:
            return steps, events
        result = engine.step()
        now += result.duration_s
        steps.append((now, result))
        for request_id, r in result.requests.items():
            e = events.setdefault(request_id, {"tokens": 0, "first": [], "finished": None})
            e["tokens"] += r.tokens
            if r.first_token:
                e["first"].append(now)
            if r.finished:
                e["finished"] = now
    raise AssertionError("engine did not drain")


def test_single_request_ttft_is_its_prefill_steps_then_one_token_per_decode_step():
    engine = tiny()
    engine.add("a", prompt_tokens=250, output_tokens=5)
    steps, events = run(engine)
    prefill = [engine.profile.step_s(100, 0, 100), engine.profile.step_s(100, 0, 200),
               engine.profile.step_s(50, 0, 250)]
    assert [r.duration_s for _, r in steps[:3]] == pytest.approx(prefill)
    assert [r.requests["a"].tokens for _, r in steps[:3]] == [0, 0, 1]
    assert events["a"]["first"] == [pytest.approx(sum(prefill))]
    decodes = [r for _, r in steps[3:]]
    assert len(decodes) == 4 and all(r.requests["a"].tokens == 1 and r.decoding_seqs == 1 for r in decodes)
    # Each decode step attends to one more token of context.
    assert [r.duration_s for r in decodes] == pytest.approx(
        [engine.profile.step_s(0, 1, 251 + i) for i in range(4)])
    assert events["a"]["tokens"] == 5 and decodes[-1].requests["a"].finished
    assert engine.idle and engine.stats().kv_usage == 0


def _throughput(concurrent: int) -> tuple[float, float]:
    engine = EngineModel(H100_TP1)
    for i in range(concurrent):
        engine.add(f"r{i}", prompt_tokens=500, output_tokens=200)
    steps, events = run(engine)
    total_s = steps[-1][0]
    per_request = [199 / (e["finished"] - e["first"][0]) for e in events.values()]  # decode tokens/s
    return concurrent * 200 / total_s, min(per_request)


def test_batching_raises_throughput_and_lowers_each_requests_token_rate():
    one, one_each = _throughput(1)
    many, many_each = _throughput(32)
    assert many > 10 * one  # 32 streams share each weight read
    assert many_each < one_each  # but each step is longer
    assert 40 < one_each < 50  # ~21 ms per decode step at batch 1 on H100 (see the calibration)


def test_long_prompt_prefills_in_chunks_while_running_decodes_keep_their_token():
    engine = tiny()
    engine.add("lone", prompt_tokens=450, output_tokens=1)
    steps, _ = run(engine)
    assert len(steps) == math.ceil(450 / 100)  # budget-sized chunks, nothing else running

    engine = tiny()
    engine.add("dec", prompt_tokens=10, output_tokens=50)
    engine.step()  # prefill + first token
    engine.add("long", prompt_tokens=350, output_tokens=2)
    chunks = []
    while True:
        result = engine.step()
        assert result.requests["dec"].tokens == 1 and result.decoding_seqs == 1
        chunks.append(result.requests["long"].scheduled_tokens)
        if result.requests["long"].first_token:
            break
    assert chunks == [99, 99, 99, 53]  # the decode takes 1 token of each step's budget of 100
    assert len(chunks) == math.ceil(350 / (100 - 1))


def test_max_num_seqs_makes_requests_wait_until_one_finishes():
    engine = tiny(max_num_seqs=2)
    engine.add("a", 10, 3)
    engine.add("b", 10, 8)
    engine.add("c", 10, 3)
    first = engine.step()
    assert set(first.requests) == {"a", "b"}
    assert (engine.stats().running, engine.stats().waiting) == (2, 1)
    engine.step()
    finish = engine.step()
    assert finish.requests["a"].finished and "c" not in finish.requests
    after = engine.step()
    assert after.requests["c"].scheduled_tokens == 10  # admitted the step after a slot freed
    _, events = run(engine)
    assert events["c"]["tokens"] == 2  # c's remaining tokens (1 already emitted)


def test_kv_capacity_makes_requests_wait_until_kv_frees():
    engine = tiny(kv_capacity_tokens=250, max_num_batched_tokens=1000)
    for name in "abc":
        engine.add(name, prompt_tokens=100, output_tokens=10)
    first = engine.step()
    assert set(first.requests) == {"a", "b"}  # c's 100 prompt tokens do not fit in the 50 left
    assert engine.stats().waiting == 1
    steps, events = run(engine)
    c_start = next(i for i, (_, r) in enumerate(steps) if "c" in r.requests)
    assert steps[c_start - 1][1].requests["a"].finished  # it starts as soon as others finish
    assert all(not r.preempted for _, r in steps)
    assert events["c"]["tokens"] == 10


def test_preemption_frees_kv_and_the_preempted_request_recomputes_and_completes():
    engine = tiny(kv_capacity_tokens=250, max_num_batched_tokens=1000)
    engine.add("a", prompt_tokens=100, output_tokens=100)
    engine.add("b", prompt_tokens=100, output_tokens=100)
    kv_before = None
    steps = []
    while not engine.idle:
        kv_before = engine.stats().kv_usage
        result = engine.step()
        steps.append(result)
        assert 0 <= engine.stats().kv_usage <= 1
        if result.preempted:
            break
    assert result.preempted == ("b",)  # the most recently admitted
    assert "b" not in result.requests and result.requests["a"].tokens == 1
    assert engine.stats().kv_usage < kv_before and engine.stats().waiting == 1
    b_tokens_before = sum(r.requests["b"].tokens for r in steps if "b" in r.requests)
    assert 0 < b_tokens_before < 100

    rest, events = run(engine)
    # b recomputes its prompt and the tokens it had generated, in one prefill chunk, then goes on.
    recompute = next(r.requests["b"] for _, r in rest if "b" in r.requests)
    assert recompute.scheduled_tokens == 100 + b_tokens_before and recompute.tokens == 1
    assert not recompute.first_token and events["b"]["first"] == []
    assert b_tokens_before + events["b"]["tokens"] == 100
    assert events["b"]["finished"] > events["a"]["finished"]
    assert all("a" not in r.preempted for _, r in rest)


def test_prefix_cache_hit_skips_the_prefix_and_shortens_ttft():
    engine = tiny()
    engine.add("a", prompt_tokens=250, output_tokens=1, prefix_key="sys", prefix_tokens=200)
    steps_a, events_a = run(engine)
    assert engine.prefix_cached("sys") == 200
    engine.add("b", prompt_tokens=250, output_tokens=1, prefix_key="sys", prefix_tokens=200)
    steps_b, events_b = run(engine)
    assert len(steps_a) == 3 and len(steps_b) == 1
    assert steps_b[0][1].prefill_tokens == 50  # the 200 cached tokens are skipped
    ttft_a, ttft_b = events_a["a"]["first"][0], events_b["b"]["first"][0]
    assert ttft_b == pytest.approx(engine.profile.step_s(50, 0, 250))
    assert ttft_a - ttft_b == pytest.approx(  # the two steps that prefilled the 200 prefix tokens
        engine.profile.step_s(100, 0, 100) + engine.profile.step_s(100, 0, 200))

    # A different prefix misses.
    engine.add("c", prompt_tokens=250, output_tokens=1, prefix_key="other", prefix_tokens=200)
    assert len(run(engine)[0]) == 3


def test_cached_prefixes_live_in_free_kv_and_give_way_least_recently_used_first():
    engine = tiny(kv_capacity_tokens=330)

    def finish(key: str, tokens: int = 100) -> None:
        engine.add(key + "-req", prompt_tokens=tokens + 5, output_tokens=1, prefix_key=key, prefix_tokens=tokens)
        run(engine)

    for key in "abc":
        finish(key)
    assert [engine.prefix_cached(k) for k in "abc"] == [100, 100, 100]
    # Cached segments no request uses are free KV: not in use, not counted in the published usage.
    assert engine.kv_used_tokens == 0 and engine.kv_cached_free_tokens == 300 and engine.stats().kv_usage == 0
    finish("a")  # a hit: "a" becomes the most recently used, "b" the least
    finish("d")  # 105 tokens in use + 400 cached > 330: the least recently used segment goes
    assert [engine.prefix_cached(k) for k in "abcd"] == [100, 0, 100, 100]
    finish("big", 300)  # needs nearly the whole pool: every cached segment gives way
    assert [engine.prefix_cached(k) for k in "acd"] == [0, 0, 0] and engine.prefix_cached("big") == 300


def test_running_requests_share_a_cached_prefix_and_hold_its_kv_once():
    engine = tiny(max_num_batched_tokens=1_000)
    engine.add("first", prompt_tokens=250, output_tokens=1, prefix_key="sys", prefix_tokens=200)
    run(engine)
    for name in ("a", "b", "c"):
        engine.add(name, prompt_tokens=250, output_tokens=50, prefix_key="sys", prefix_tokens=200)
    result = engine.step()  # all three admitted: each prefills only its own 50 tokens
    assert result.prefill_tokens == 150
    assert engine.kv_used_tokens == 200 + 3 * 50  # the system prompt once, not three times
    while not engine.idle:
        engine.step()
    assert engine.kv_used_tokens == 0 and engine.prefix_cached("sys") == 200


def test_a_shared_prefix_lets_more_requests_run_than_private_copies_would():
    # 1 000 tokens of KV: three 300-token contexts fit privately; all six when 250 of each are shared.
    def admitted(shared: bool) -> int:
        engine = tiny(kv_capacity_tokens=1_000, max_num_batched_tokens=2_000)
        key = (lambda i: "sys") if shared else (lambda i: f"sys{i}")
        engine.add("warm", prompt_tokens=255, output_tokens=1, prefix_key="sys", prefix_tokens=250)
        run(engine)
        for i in range(6):
            engine.add(f"r{i}", prompt_tokens=300, output_tokens=20, prefix_key=key(i), prefix_tokens=250)
        engine.step()
        return engine.stats().running

    assert admitted(shared=False) == 3 and admitted(shared=True) == 6


def test_cancel_frees_kv():
    engine = tiny()
    engine.add("a", prompt_tokens=150, output_tokens=10)
    engine.add("w", prompt_tokens=10, output_tokens=10)
    engine.step()
    assert engine.stats().kv_usage == pytest.approx(100 / 10_000)
    assert engine.cancel("a")
    assert engine.stats().kv_usage == 0 and engine.stats().running == 0
    assert not engine.cancel("a")
    assert engine.cancel("w") and engine.idle
    assert engine.step().duration_s == 0.0 and engine.stats().queued_tokens == 0


def test_stats_stay_consistent_until_everything_finishes():
    engine = EngineModel(L40S_TP2)
    sizes = [(300 + 13 * i, 20 + 7 * i) for i in range(80)]  # more than max_num_seqs, fits the KV
    for i, (prompt, output) in enumerate(sizes):
        engine.add(f"r{i}", prompt, output, prefix_key="sys" if i % 2 else None, prefix_tokens=200 if i % 2 else 0)
    stats = engine.stats()
    assert stats.queued_tokens == sum(p + o for p, o in sizes) and stats.waiting == 80
    previous = stats.queued_tokens
    while not engine.idle:
        result = engine.step()
        stats = engine.stats()
        assert 0 <= stats.kv_usage <= 1
        assert stats.running <= L40S_TP2.max_num_seqs and stats.running + stats.waiting <= 80
        assert result.prefill_tokens + result.decoding_seqs <= L40S_TP2.max_num_batched_tokens
        assert not result.preempted and stats.queued_tokens <= previous
        previous = stats.queued_tokens
    final = engine.stats()
    assert dataclasses.replace(final, prefilled_total=0) == type(stats)(running=0, waiting=0, kv_usage=0.0,
                                                                        queued_tokens=0)
    # Every prompt was prefilled, less the system prompt each later "sys" request found cached.
    prompts = sum(p for p, _ in sizes)
    assert prompts - 39 * 200 <= final.prefilled_total < prompts


def test_deterministic():
    def trace():
        engine = EngineModel(RTX4090_FP8_TP2)
        for i in range(40):
            engine.add(f"r{i}", 1000 + 37 * i, 50 + i)
        return run(engine)

    assert trace() == trace()


def test_add_rejects_bad_requests():
    engine = tiny(kv_capacity_tokens=1000)
    engine.add("a", 10, 10)
    with pytest.raises(ValueError):
        engine.add("a", 10, 10)
    with pytest.raises(ValueError):
        engine.add("b", 990, 11)  # could never fit in the KV cache
    with pytest.raises(ValueError):
        engine.add("c", 10, 0)
    with pytest.raises(ValueError):
        engine.add("d", 10, 1, prefix_key="k", prefix_tokens=11)


def test_profiles_follow_their_sources():
    assert PROFILES == {"H100_TP1": H100_TP1, "L40S_TP2": L40S_TP2, "RTX4090_FP8_TP2": RTX4090_FP8_TP2}
    kv_bytes_per_token = 40 * 8 * 128 * 2 * 2
    assert kv_bytes_per_token == 160 * 1024
    # Batch-1 decode: one HBM H100 beats two GDDR6 L40S (each reading half the bf16 weights); two
    # 4090s reading half the FP8 weights each land near the H100.
    decode = {name: p.step_s(0, 1, 1000) for name, p in PROFILES.items()}
    assert decode["H100_TP1"] < decode["RTX4090_FP8_TP2"] < decode["L40S_TP2"]
    assert 0.018 < decode["H100_TP1"] < 0.025 and 0.035 < decode["L40S_TP2"] < 0.045
    # Prefill is compute-bound: H100 fastest; the 4090s pay all-reduces through host memory.
    assert H100_TP1.prefill_s_per_token < L40S_TP2.prefill_s_per_token < RTX4090_FP8_TP2.prefill_s_per_token
    assert 10_000 < 1 / H100_TP1.prefill_s_per_token < 15_000
    # KV: two L40S hold more than one H100 (each card has half the weights); 2x24 GB the least.
    assert L40S_TP2.kv_capacity_tokens > H100_TP1.kv_capacity_tokens > RTX4090_FP8_TP2.kv_capacity_tokens
    h100_kv_gib = 81559 / 1024 * 0.90 - 23.6e9 * 2 / 2**30 - 3  # 81,559 MiB card, 0.90, weights, overhead
    assert H100_TP1.kv_capacity_tokens == pytest.approx(h100_kv_gib * 2**30 / kv_bytes_per_token, rel=0.05)
    for p in PROFILES.values():
        assert p.max_num_batched_tokens in (2048, 8192)  # vLLM's OpenAI-server defaults


def test_throughput_rises_with_batch_size_up_to_the_kv_limit_then_requests_queue_and_ttft_grows():
    """What routing depends on: below the KV limit more requests per replica means more tokens per
    second (batching is nearly free); beyond it, throughput stops rising and requests queue."""
    profile = dataclasses.replace(H100_TP1, max_num_seqs=1024)  # let KV, not max_num_seqs, bind
    per_request = 4_000 + 1_000  # prompt + output: 32 requests fill the 160k-token KV cache
    assert profile.kv_capacity_tokens // per_request == 32

    def offered(n: int) -> tuple[float, float]:
        engine = EngineModel(profile)
        for i in range(n):
            engine.add(f"r{i}", 4_000, 1_000)
        steps, events = run(engine)
        throughput = n * 1_000 / steps[-1][0]
        return throughput, max(e["first"][-1] for e in events.values())

    runs = {n: offered(n) for n in (1, 4, 8, 16, 32, 64)}
    for smaller, larger in ((1, 4), (4, 8), (8, 16), (16, 32)):
        assert runs[larger][0] > 1.3 * runs[smaller][0], runs
    assert runs[64][0] < 1.1 * runs[32][0], runs  # past the KV limit: no more throughput
    assert runs[64][1] > 3 * runs[32][1], runs  # ... but the last request waits far longer for its first token


def first_tokens_order(scheduling: str) -> list[str]:
    engine = EngineModel(dataclasses.replace(TINY, max_num_seqs=1), scheduling=scheduling)
    engine.add("running", prompt_tokens=50, output_tokens=5, priority=1)
    engine.step()
    engine.add("batch", prompt_tokens=50, output_tokens=1, priority=2)
    engine.add("standard", prompt_tokens=50, output_tokens=1, priority=1)
    engine.add("interactive", prompt_tokens=50, output_tokens=1, priority=0)
    _, events = run(engine)
    return sorted(events, key=lambda rid: events[rid]["first"][0] if events[rid]["first"] else 0.0)


def test_priority_scheduling_serves_waiting_requests_by_priority_then_arrival():
    assert first_tokens_order("fcfs") == ["running", "batch", "standard", "interactive"]
    assert first_tokens_order("priority") == ["running", "interactive", "standard", "batch"]


def test_priority_scheduling_preempts_the_lowest_priority_not_the_newest():
    def preempted(scheduling: str) -> tuple[str, ...]:
        engine = EngineModel(dataclasses.replace(TINY, kv_capacity_tokens=400, max_num_batched_tokens=400),
                             scheduling=scheduling)
        engine.add("low", prompt_tokens=100, output_tokens=200, priority=2)
        engine.add("high", prompt_tokens=100, output_tokens=200, priority=0)
        out: list[str] = []
        while not engine.idle and not out:
            out.extend(engine.step().preempted)
        return tuple(out)

    assert preempted("fcfs") == ("high",)  # the most recently admitted
    assert preempted("priority") == ("low",)


def test_an_unknown_scheduling_policy_is_refused():
    with pytest.raises(ValueError, match="fcfs"):
        EngineModel(TINY, scheduling="sjf")
