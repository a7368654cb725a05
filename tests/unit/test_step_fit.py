"""common/step_fit.py: NNLS fit of the engine model's step-time constants (no vLLM)."""

import dataclasses
import json

import numpy as np
import pytest

from common.engine_model import H100_TP1, EngineModel
from common.step_fit import (
    CONSTANTS,
    DegenerateDesign,
    TimedStep,
    fit_step_times,
    load_profile,
    nnls,
    predict,
    profile_to_dict,
    steps_from_records,
)

TRUE = dataclasses.replace(H100_TP1, base_s=0.012, prefill_s_per_token=30e-6, decode_s_per_seq=0.011,
                           attention_s_per_kv_token=1.2e-7)


def designed_steps(profile, rng, noise=0.03, n=400):
    """Prefill-only, decode-only (batch and context varied apart) and mixed steps, timed by
    `profile` with multiplicative noise."""
    steps = []
    for i in range(n):
        kind = i % 3
        if kind == 0:  # prefill only: one prompt chunk
            prefill = int(rng.integers(16, 2048))
            decode, kv = 0, prefill + int(rng.integers(0, 2)) * int(rng.integers(0, 2048))
        elif kind == 1:  # decode only
            prefill, decode = 0, int(rng.integers(1, 9))
            kv = decode * int(rng.integers(16, 3000))
        else:  # mixed
            prefill, decode = int(rng.integers(16, 1024)), int(rng.integers(1, 8))
            kv = prefill + decode * int(rng.integers(16, 3000))
        t = profile.step_s(prefill, decode, kv) * (1 + noise * rng.standard_normal())
        steps.append(TimedStep(prefill, decode, kv, t))
    return steps


def test_recovers_known_constants_from_noisy_steps():
    steps = designed_steps(TRUE, np.random.default_rng(1), n=1200)
    fit = fit_step_times(steps, H100_TP1, name="cpu", max_num_batched_tokens=2048, max_num_seqs=8,
                         kv_capacity_tokens=2_000_000)
    for name in ("base_s", "prefill_s_per_token", "decode_s_per_seq"):
        assert getattr(fit.profile, name) == pytest.approx(getattr(TRUE, name), rel=0.1), name
    # KV reads are ~1-3 % of these steps (as on the CPU engine): under 3 % noise they are the
    # least determined constant.
    assert fit.profile.attention_s_per_kv_token == pytest.approx(TRUE.attention_s_per_kv_token, rel=0.35)
    assert fit.r2 > 0.95 and fit.median_abs_rel_error < 0.05 and abs(fit.total_rel_error) < 0.02
    # The engine's limits replace the base profile's; nothing else of the base survives.
    p = fit.profile
    assert (p.name, p.max_num_batched_tokens, p.max_num_seqs, p.kv_capacity_tokens) == ("cpu", 2048, 8, 2_000_000)


@pytest.mark.parametrize("weighting", ["relative", "absolute"])
def test_exact_steps_are_fitted_exactly(weighting):
    steps = designed_steps(TRUE, np.random.default_rng(2), noise=0.0, n=60)
    fit = fit_step_times(steps, H100_TP1, weighting=weighting, trim=None)
    for name in CONSTANTS:
        assert getattr(fit.profile, name) == pytest.approx(getattr(TRUE, name), rel=1e-6)
    assert fit.r2 == pytest.approx(1.0) and fit.n_dropped == 0


def test_constants_are_never_negative():
    # True attention cost 0: noise would push a plain least-squares fit below zero.
    zero_attention = dataclasses.replace(TRUE, attention_s_per_kv_token=0.0)
    for seed in range(8):
        steps = designed_steps(zero_attention, np.random.default_rng(seed), noise=0.1, n=80)
        fit = fit_step_times(steps, H100_TP1)
        assert all(v >= 0 for v in fit.constants.values()), fit.constants
        lstsq = np.linalg.lstsq(np.array([[1, s.prefill_tokens, s.decoding_seqs, s.kv_tokens_in_batch] for s in steps],
                                         dtype=float), np.array([s.duration_s for s in steps]), rcond=None)[0]
        if lstsq[3] < 0:  # where least squares goes negative, NNLS holds the constant at 0
            assert fit.profile.attention_s_per_kv_token == 0.0 and "attention_s_per_kv_token" in fit.clipped


def test_nnls_matches_known_solutions():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert nnls(a, np.array([1.0, 2.0, 3.0])) == pytest.approx([1.0, 2.0])
    assert nnls(a, np.array([-1.0, 2.0, 1.0])) == pytest.approx([0.0, 1.5])  # unconstrained x0 < 0
    assert nnls(a, np.array([-1.0, -1.0, -1.0])) == pytest.approx([0.0, 0.0])


def test_outliers_are_left_out():
    rng = np.random.default_rng(3)
    steps = designed_steps(TRUE, rng, noise=0.02)
    stalled = [dataclasses.replace(s, duration_s=s.duration_s * 20) for s in steps[:8]]  # another process ran
    fit = fit_step_times(stalled + steps[8:], H100_TP1)
    assert fit.n_dropped >= 8
    assert fit.profile.base_s == pytest.approx(TRUE.base_s, rel=0.1)


def test_no_decode_steps_is_a_clear_error():
    steps = [TimedStep(p, 0, p, TRUE.step_s(p, 0, p)) for p in range(64, 2048, 64)]
    with pytest.raises(DegenerateDesign, match="decoding_seqs.*decode_s_per_seq"):
        fit_step_times(steps, H100_TP1)


def test_one_batch_size_only_is_a_clear_error():
    # Every decode step has 4 sequences at the same context: KV is a fixed multiple of the batch,
    # so a cost per sequence and a cost per KV token explain the same steps.
    steps = [TimedStep(p, 0, 0, TRUE.step_s(p, 0, 0)) for p in range(64, 2048, 64)]
    steps += [TimedStep(0, 4, 4000, TRUE.step_s(0, 4, 4000)) for _ in range(30)]
    with pytest.raises(DegenerateDesign, match="cannot be told apart"):
        fit_step_times(steps, H100_TP1)


def test_too_few_steps_and_bad_durations_are_errors():
    with pytest.raises(DegenerateDesign, match="at least"):
        fit_step_times([TimedStep(1, 1, 1, 0.01)] * 3, H100_TP1)
    steps = designed_steps(TRUE, np.random.default_rng(4), n=30)
    with pytest.raises(DegenerateDesign, match="positive"):
        fit_step_times(steps[:-1] + [dataclasses.replace(steps[-1], duration_s=0.0)], H100_TP1)


def test_steps_from_records_times_busy_steps_end_to_end():
    records = [  # engine idle, a request arrives: 3 busy steps, then idle, then one more step
        {"t0": 10.000, "t1": 10.050, "busy": True, "prefill": 100, "decode": 0, "kv": 100},
        {"t0": 10.052, "t1": 10.070, "busy": True, "prefill": 0, "decode": 1, "kv": 101},
        {"t0": 10.074, "t1": 10.090, "busy": False, "prefill": 0, "decode": 1, "kv": 102},
        {"t0": 12.000, "t1": 12.040, "busy": False, "prefill": 50, "decode": 0, "kv": 50},
    ]
    steps = steps_from_records(reversed(records))  # order does not matter: sorted by t0
    overhead = 0.003  # median of the gaps after busy steps (2 ms, 4 ms)
    assert [s.duration_s for s in steps] == pytest.approx([0.050 + overhead, 0.020, 0.020, 0.040 + overhead])
    assert [(s.prefill_tokens, s.decoding_seqs, s.kv_tokens_in_batch) for s in steps] == \
        [(100, 0, 100), (0, 1, 101), (0, 1, 102), (50, 0, 50)]


def test_steps_from_records_under_async_scheduling():
    # The next step is scheduled before the previous one's output is processed: t1 to t1.
    records = [{"t0": 0.00, "t1": 0.030, "busy": True, "prefill": 10, "decode": 0, "kv": 10},
               {"t0": 0.01, "t1": 0.050, "busy": True, "prefill": 0, "decode": 1, "kv": 11},
               {"t0": 0.035, "t1": 0.070, "busy": False, "prefill": 0, "decode": 1, "kv": 12}]
    assert [s.duration_s for s in steps_from_records(records)] == pytest.approx([0.030, 0.020, 0.020])


def test_fitted_profile_round_trips_through_json_and_drives_the_engine_model(tmp_path):
    steps = designed_steps(TRUE, np.random.default_rng(5))
    fit = fit_step_times(steps, H100_TP1, name="cpu-fitted", max_num_batched_tokens=2048, max_num_seqs=8,
                         kv_capacity_tokens=100_000)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"profile": profile_to_dict(fit.profile), "fit": fit.summary()}))
    assert load_profile(path) == fit.profile
    model = EngineModel(load_profile(path))
    model.add("a", 300, 5)
    result = model.step()
    assert result.duration_s == pytest.approx(predict(fit.profile, [TimedStep(300, 0, 300, 0.0)])[0])


def test_balance_gives_prefill_steps_the_weight_of_decode_steps():
    # Decode steps follow one line, prefill steps cost 2 ms more than it says (a cost the linear
    # form cannot hold). Outnumbered 20:1, the prefill steps barely move an unbalanced fit.
    rng = np.random.default_rng(6)
    decode = [TimedStep(0, b, b * c, TRUE.step_s(0, b, b * c))
              for b, c in zip(rng.integers(1, 9, 2000), rng.integers(16, 3000, 2000))]
    prefill = [TimedStep(p, 0, p, TRUE.step_s(p, 0, p) + 0.002) for p in rng.integers(16, 2048, 100)]
    errors = {}
    for balance in (False, True):
        fit = fit_step_times(decode + prefill, H100_TP1, balance=balance, trim=None)
        pred = predict(fit.profile, prefill)
        errors[balance] = float(np.median(np.abs(pred / [s.duration_s for s in prefill] - 1)))
    assert errors[True] < errors[False] / 2


def test_the_designed_workload_separates_the_constants():
    """calibrate's design, run on the engine model itself, gives back the model's constants."""
    from deployments.calibrate import design_rounds, replay_on_model

    profile = dataclasses.replace(TRUE, max_num_batched_tokens=2048, max_num_seqs=8, kv_capacity_tokens=2_000_000)
    for quick, rounds in ((True, 4), (False, 5)):
        design = design_rounds(2048, 8, 40_960, quick, decode_step_s=0.03, rounds=rounds)
        for steps_of in (design[:1], design):  # the first round alone paces the trace
            steps = [step for waves in steps_of for _, wave in waves for step in replay_on_model(profile, wave)[1]]
            fit = fit_step_times(steps, H100_TP1, trim=None)
            for name in CONSTANTS:
                assert getattr(fit.profile, name) == pytest.approx(getattr(TRUE, name), rel=1e-6), (quick, name)


def test_model_replay_times_requests_in_virtual_time():
    from deployments.calibrate import Req, compare, make_trace, replay_on_model, scale_trace

    profile = dataclasses.replace(TRUE, max_num_batched_tokens=2048, max_num_seqs=8, kv_capacity_tokens=100_000)
    timings, steps = replay_on_model(profile, [Req("a", 1.0, 300, 3)])
    prefill, decode = profile.step_s(300, 0, 300), profile.step_s(0, 1, 301)
    assert timings["a"].ttft == pytest.approx(prefill)
    assert timings["a"].tpot == pytest.approx((decode + profile.step_s(0, 1, 302)) / 2)
    assert len(steps) == 3
    trace = scale_trace(make_trace(seed=7, n=30, max_prompt=4096, max_output=64), rate_per_s=2.0)
    assert trace == scale_trace(make_trace(seed=7, n=30, max_prompt=4096, max_output=64), rate_per_s=2.0)
    timings, _ = replay_on_model(profile, trace)
    assert set(timings) == {r.request_id for r in trace}
    same = compare(timings, timings)
    assert same["ttft"]["err"]["p50"] == same["tpot"]["err"]["p90"] == 0.0
