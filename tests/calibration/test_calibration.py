"""The engine model, calibrated on the real vLLM CPU engine, predicts that engine's latencies.

In its own folder so that it runs first, before the shared Ray cluster of the cluster tests starts
(wall-clock timings need a quiet machine; in CI the cluster kept 0.4 CPUs busy and the check skipped).

Runs `python -m deployments.calibrate --quick --temperature 0` on the tiny model in a subprocess
(its own engine, whose ~4 GiB go when the process exits): fit the step-time constants to the
engine's timed steps, then replay one seeded trace on the engine and on EngineModel(fitted
profile). The issue's target: TTFT and TPOT p50 of the model within 20 % of the real engine's.

Greedy sampling, not Magistral's top-p: on this CPU, top-p over a 131k vocabulary costs ~11 ms
for every request in a step, prompt chunks included, while engine_model.py charges its
per-sequence cost to decoding sequences only, so with top-p the fit cannot get both prefill and
decode steps right (measured: TTFT p50 +14 %, TPOT p50 +25 to +36 %). On a GPU that sampling cost
is a fraction of a millisecond in a 20+ ms step. docs/calibration.md has the figures and the
engine model change that closes the gap (TTFT -10 %, TPOT -1 % in the tool's what-if).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
P50_TOLERANCE = 0.20  # the target: |model / real - 1| at p50, TTFT and TPOT
# The fitted line over the designed steps: a sanity floor, not the target. 0.92-0.95 here on a quiet
# machine, 0.76 and 0.85 in a CI run whose p50 errors were +5/+12 % and -14/+5 % (step wall times
# scatter with the CPU's speed, which lowers R^2 without biasing the fit: its total error was -2 %
# and +0.2 %). Below 0.6 the line explains too little of the steps to be a model of the engine.
MIN_R2 = 0.6
QUIET_CPUS = 0.25  # other processes' CPU use (in CPUs) above which wall-clock timings are not comparable
RUN_TIMEOUT_S = 330  # engine start 20-90 s + ~60 s of requests; 85-95 s in all on a quiet machine


def run_calibration(tiny_model_dir: Path, out: Path) -> tuple[str, float]:
    """Run the tool in its own process group; stop the group (engine core, worker) if it hangs."""
    cmd = [sys.executable, "-m", "deployments.calibrate", "--model", str(tiny_model_dir), "--quick",
           "--temperature", "0", "--out", str(out), "--step-log", str(out.with_suffix(".steps.jsonl"))]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        pytest.fail(f"calibration did not finish in {RUN_TIMEOUT_S} s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-6000:]
    return output, time.monotonic() - started


def one_run(tiny_model_dir: Path, out: Path) -> tuple[bool | None, dict, dict]:
    """One calibration: its structural checks asserted; (within the targets, None when the machine
    was too busy to tell; the p50 errors; the fit)."""
    output, elapsed = run_calibration(tiny_model_dir, out)
    report = json.loads(out.read_text())
    ours = [line for line in output.splitlines() if not line.startswith(("(", " ", "[", "Triton", "/"))]
    print(f"calibration took {elapsed:.0f} s", *ours[-14:], sep="\n")  # shown with -s, and on failure

    last = [line for line in output.splitlines() if line.startswith("calibration ")][-1]
    assert [kv.split("=")[0] for kv in last.split()[1:]] == \
        ["ttft_p50_err", "ttft_p90_err", "tpot_p50_err", "tpot_p90_err", "r2"]

    profile, fit, engine = report["profile"], report["fit"], report["engine"]
    assert all(profile[k] >= 0 for k in ("base_s", "prefill_s_per_token", "decode_s_per_seq",
                                          "attention_s_per_kv_token"))
    # The engine's own limits, not a GPU's.
    assert profile["max_num_batched_tokens"] == engine["max_num_batched_tokens"] == 2048
    assert profile["max_num_seqs"] == engine["max_num_seqs"] == 8
    assert profile["kv_capacity_tokens"] == engine["kv_capacity_tokens"] > 0
    assert not engine["enable_prefix_caching"] and not engine["async_scheduling"]

    errors = {metric: report["comparison"][metric]["err"]["p50"] for metric in ("ttft", "tpot")}
    within = fit["r2"] >= MIN_R2 and all(abs(e) <= P50_TOLERANCE for e in errors.values())
    busy = max(max(cpus) for cpus in report["other_processes_cpus"].values())
    return (None if not within and busy > QUIET_CPUS else within), errors, fit


RUNS = 3  # the majority of up to three quick runs decides


@pytest.mark.timeout(RUNS * RUN_TIMEOUT_S + 60)
def test_fitted_engine_model_predicts_the_cpu_engine(tiny_model_dir, tmp_path):
    """One quick run's p50 errors spread about +-10 points around the model's own bias (this
    machine's speed drifts 10-20 % over seconds even when nothing else runs: docs/calibration.md),
    so a single run near the 20 % line passes or fails by chance (measured: 2 of 4 quiet runs at
    -22 % and +22 %). The check takes the majority of up to three runs: a model that is really
    off fails most of them."""
    verdicts, seen = [], []
    for i in range(RUNS):
        within, errors, fit = one_run(tiny_model_dir, tmp_path / f"cpu-profile-{i}.json")
        seen.append((within, {k: round(v, 3) for k, v in errors.items()}, round(fit["r2"], 3)))
        verdicts.append(within)
        if verdicts.count(True) * 2 > RUNS or verdicts.count(False) * 2 > RUNS:
            break
    if verdicts.count(True) * 2 <= RUNS and verdicts.count(False) * 2 <= RUNS:
        pytest.skip(f"other processes kept the CPU busy during the runs, so the engine's wall-clock steps were "
                    f"stretched at random: {seen}; rerun on a quiet machine")
    assert verdicts.count(True) * 2 > RUNS, f"most runs missed TTFT/TPOT p50 within {P50_TOLERANCE:.0%} or R^2 " \
                                            f">= {MIN_R2}: {seen}"
