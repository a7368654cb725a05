"""The benchmarks' own arithmetic: prompts of the intended size, SLO judging, percentiles."""

import pytest

from bench.fleet_sim import SLO
from bench.http_timing import Sample, percentile
from bench.routing import TIME_SCALE, body_for, judge
from bench.workload import Job
from common.tokens import TekkenCounter


def test_rendered_prompts_have_the_jobs_token_count():
    counter = TekkenCounter()
    for prompt, prefix in ((300, 0), (2_000, 600), (25_000, 1_500)):
        job = Job("j7", 0.0, prompt, 100, f"sys-{prefix}" if prefix else None, prefix)
        body = body_for(job)
        counted = counter.count_chat(body["messages"])
        assert abs(counted - prompt) <= max(5, 0.01 * prompt), (prompt, counted)
        assert body["max_tokens"] == 100 and body["ignore_eos"] and body["stream"]
        if prefix:
            system = counter.count_text(body["messages"][0]["content"])
            assert abs(system - prefix) <= 10
    # one system prompt per prefix key: the replica's prefix cache sees them as shared
    a, b = (body_for(Job(f"j{i}", 0.0, 900, 10, "sys-1", 350)) for i in (1, 2))
    assert a["messages"][0] == b["messages"][0] and a["messages"][1] != b["messages"][1]


def test_judge_scales_times_back_to_the_gpu_and_applies_both_objectives():
    slo = SLO()
    jobs = [Job(f"j{i}", 10.0 + i, 1_000, 101, None, 0) for i in range(4)]
    fast = 0.5 / TIME_SCALE  # 0.5 GPU-seconds to the first token
    outcomes = [
        (jobs[0], Sample(200, 0, fast + 100 * 0.05 / TIME_SCALE, fast, completion_tokens=101)),  # good
        (jobs[1], Sample(200, 0, fast + 100 * 0.2 / TIME_SCALE, fast, completion_tokens=101)),  # TPOT 200 ms
        (jobs[2], Sample(200, 0, 3.0, 2.0 / TIME_SCALE * 2, completion_tokens=101)),  # TTFT 4 s > 1.1 s
        (jobs[3], None),  # never finished
    ]
    row = judge("router", outcomes, duration_s=100.0, slo=slo)
    assert row["measured"] == 4 and row["good"] == 1 and row["unfinished"] == 1
    assert row["goodput_rps"] == pytest.approx(1 / 90)
    assert row["ttft_p50_s"] == pytest.approx(0.5) and row["ttft_p99_s"] == float("inf")
    early = judge("router", [(Job("w", 1.0, 10, 2, None, 0), None)], duration_s=100.0, slo=slo)
    assert early["measured"] == 0  # arrived during the warm-up: not judged


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) != percentile([], 50)  # nan
