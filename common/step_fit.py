"""Fit a GPUProfile's step-time constants to timed steps of a real vLLM engine.

Pure (numpy, no vLLM): deployments/calibrate.py measures the steps, this module fits

    duration_s = base_s + prefill_s_per_token * prefill_tokens + decode_s_per_seq * decoding_seqs
                 + attention_s_per_kv_token * kv_tokens_in_batch

(common/engine_model.py's `GPUProfile.step_s`) by non-negative least squares, and says how well
the line fits. A constant is a physical cost, so none may come out negative: a plain least-squares
fit on noisy steps happily trades a negative per-KV-token cost against a larger base.

By default each step's error is relative: a 20 ms decode step and a 400 ms prefill step count
alike, so the fit serves TPOT (many short decode steps) and TTFT (few long prefill steps)
together instead of matching the long steps only. The weight is 1 / the *predicted* duration,
refitted a few times (iteratively reweighted): weighting by the measured duration would favour
the steps that happened to run fast, and timing noise only ever makes steps longer, so the fit
would come out some 5-10 % low on a noisy machine. And
the two kinds of step, decode-only and with prefill, weigh the same in total however many of each
the measured workload produced (a design yields some 20 decode steps per prefill step; without
this the prefill cost, which decides TTFT, would be fitted to a handful of steps' worth of weight).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.engine_model import GPUProfile

CONSTANTS = ("base_s", "prefill_s_per_token", "decode_s_per_seq", "attention_s_per_kv_token")
_FEATURES = ("every step", "prefill_tokens", "decoding_seqs", "kv_tokens_in_batch")
# What to add to a design in which a constant cannot be told apart from the others.
_REMEDY = {
    "base_s": "steps of different sizes",
    "prefill_s_per_token": "prefill steps of several prompt lengths",
    "decode_s_per_seq": "decode steps with several batch sizes (decoding_seqs)",
    "attention_s_per_kv_token": "decode steps of one batch size at short and long contexts (kv_tokens_in_batch)",
}


@dataclass(frozen=True)
class TimedStep:
    """One engine step: what it computed (engine_model.StepResult's terms) and how long it took."""

    prefill_tokens: int
    decoding_seqs: int
    kv_tokens_in_batch: int
    duration_s: float


class DegenerateDesign(ValueError):
    """The steps cannot separate the four constants (a column of the design is missing or
    collinear with the others): no fit would mean anything."""


@dataclass(frozen=True)
class StepFit:
    profile: GPUProfile  # the base profile with the fitted constants and the engine's limits
    r2: float  # 1 - SS_res / SS_tot of the step durations (unweighted)
    mean_abs_rel_error: float  # mean over steps of |predicted - measured| / measured
    median_abs_rel_error: float
    total_rel_error: float  # sum(predicted) / sum(measured) - 1: drift over a whole run
    n_steps: int
    n_dropped: int  # outliers left out of the final fit (see fit_step_times' `trim`)
    clipped: tuple[str, ...]  # constants the non-negativity constraint held at 0
    weighting: str

    @property
    def constants(self) -> dict[str, float]:
        return {name: getattr(self.profile, name) for name in CONSTANTS}

    def summary(self) -> dict[str, Any]:
        return {"constants": self.constants, "r2": self.r2, "mean_abs_rel_error": self.mean_abs_rel_error,
                "median_abs_rel_error": self.median_abs_rel_error, "total_rel_error": self.total_rel_error,
                "n_steps": self.n_steps, "n_dropped": self.n_dropped, "clipped": list(self.clipped),
                "weighting": self.weighting}


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """min ||a x - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m, n = a.shape
    x = np.zeros(n)
    free = np.zeros(n, dtype=bool)  # the passive set: variables not held at zero
    tol = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(m, n)
    max_iter = max_iter or 30 * n
    for _ in range(max_iter):
        gradient = a.T @ (b - a @ x)
        candidates = np.where(~free, gradient, -np.inf)
        if free.all() or candidates.max() <= tol:
            break
        free[int(np.argmax(candidates))] = True
        while True:
            trial = np.zeros(n)
            trial[free] = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
            if (trial[free] > tol).all():
                x = trial
                break
            # Step from x toward trial until the first free variable reaches zero; hold it there.
            shrinking = free & (trial <= tol) & (x > trial)
            alpha = float(np.min(x[shrinking] / (x[shrinking] - trial[shrinking]))) if shrinking.any() else 0.0
            x = x + alpha * (trial - x)
            free &= x > tol
            x[~free] = 0.0
            if not free.any():
                break
    return x


def _design(steps: Sequence[TimedStep]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[1.0, s.prefill_tokens, s.decoding_seqs, s.kv_tokens_in_batch] for s in steps], dtype=float)
    y = np.array([s.duration_s for s in steps], dtype=float)
    return x, y


def check_design(steps: Sequence[TimedStep], min_steps: int = 8) -> None:
    """Raise DegenerateDesign unless the steps can separate all four constants."""
    if len(steps) < min_steps:
        raise DegenerateDesign(f"{len(steps)} steps: need at least {min_steps} to fit 4 constants")
    x, y = _design(steps)
    if (y <= 0).any() or not np.isfinite(y).all():
        raise DegenerateDesign("every step needs a positive, finite duration_s")
    for column, constant in zip(range(1, 4), CONSTANTS[1:]):
        if not x[:, column].any():
            raise DegenerateDesign(f"no step has any {_FEATURES[column]}: {constant} cannot be fitted; "
                                   f"add {_REMEDY[constant]}")
    # A column that the others reproduce (relative residual ~0) cannot be told apart from them.
    scaled = x / np.linalg.norm(x, axis=0)
    for column, constant in enumerate(CONSTANTS):
        others = np.delete(scaled, column, axis=1)
        coef = np.linalg.lstsq(others, scaled[:, column], rcond=None)[0]
        residual = np.linalg.norm(scaled[:, column] - others @ coef)
        if residual < 1e-3:
            raise DegenerateDesign(f"{_FEATURES[column]} is (almost) a combination of the other terms in these "
                                   f"steps: {constant} cannot be told apart; add {_REMEDY[constant]}")


def fit_step_times(steps: Iterable[TimedStep], base: GPUProfile, *, name: str | None = None,
                   max_num_batched_tokens: int | None = None, max_num_seqs: int | None = None,
                   kv_capacity_tokens: int | None = None,
                   weighting: Literal["relative", "absolute"] = "relative", balance: bool = True,
                   trim: float | None = 6.0) -> StepFit:
    """Fit the four step-time constants to `steps`; return `base` with them and the engine's limits.

    trim: after a first fit, drop steps whose relative error is more than `trim` times the median
    relative error away from it (a CPU engine sharing its cores sees the odd step stalled by
    another process), then fit again. None keeps every step.
    """
    steps = list(steps)
    check_design(steps)
    x, y = _design(steps)
    if weighting not in ("relative", "absolute"):
        raise ValueError(f"weighting must be 'relative' or 'absolute', not {weighting!r}")
    keep = np.ones(len(steps), dtype=bool)
    coef = _weighted_nnls(x, y, keep, weighting, balance)
    if trim is not None:
        rel = (x @ coef - y) / np.maximum(x @ coef, 1e-12)
        centre = np.median(rel)
        spread = np.median(np.abs(rel - centre)) or np.finfo(float).eps
        keep = np.abs(rel - centre) <= trim * spread
        if keep.sum() < len(steps):
            check_design([s for s, k in zip(steps, keep) if k])
            coef = _weighted_nnls(x, y, keep, weighting, balance)
    predicted = x @ coef
    rel_error = np.abs(predicted - y) / y
    ss_res = float(np.sum((y - predicted) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or float("inf")
    fitted = dict(zip(CONSTANTS, (float(c) for c in coef)))
    limits = {"max_num_batched_tokens": max_num_batched_tokens, "max_num_seqs": max_num_seqs,
              "kv_capacity_tokens": kv_capacity_tokens,
              "name": name}
    profile = dataclasses.replace(base, **fitted, **{k: v for k, v in limits.items() if v is not None})
    return StepFit(profile=profile, r2=1.0 - ss_res / ss_tot, mean_abs_rel_error=float(rel_error.mean()),
                   median_abs_rel_error=float(np.median(rel_error)),
                   total_rel_error=float(predicted.sum() / y.sum() - 1.0), n_steps=len(steps),
                   n_dropped=int((~keep).sum()), clipped=tuple(c for c, v in fitted.items() if v == 0.0),
                   weighting=weighting + (", balanced" if balance else ""))


def _weighted_nnls(x: np.ndarray, y: np.ndarray, keep: np.ndarray, weighting: str, balance: bool,
                   iterations: int = 4) -> np.ndarray:
    x, y = x[keep], y[keep]
    group_weight = np.ones_like(y)
    if balance:
        with_prefill = x[:, 1] > 0
        for group in (with_prefill, ~with_prefill):
            if group.any():
                group_weight[group] /= np.sqrt(group.sum())  # squared: each group's weights sum alike
    scale_by = y  # relative: first by the measured durations, then by the fit's own predictions
    for _ in range(iterations if weighting == "relative" else 1):
        w = group_weight / (scale_by if weighting == "relative" else 1.0)
        a = x * w[:, None]
        scale = np.linalg.norm(a, axis=0)  # columns differ by 4+ orders of magnitude: equalise them
        scale[scale == 0] = 1.0
        coef = nnls(a / scale, y * w) / scale
        scale_by = np.maximum(x @ coef, 0.05 * y)  # a prediction of ~0 would weigh one step alone
    return coef


def predict(profile: GPUProfile, steps: Iterable[TimedStep]) -> np.ndarray:
    return np.array([profile.step_s(s.prefill_tokens, s.decoding_seqs, s.kv_tokens_in_batch) for s in steps])


def steps_from_records(records: Iterable[Mapping[str, Any]]) -> list[TimedStep]:
    """Timed steps from deployments/step_timing.py's per-step records.

    A step's tokens leave the engine when its update_from_output() returns (t1), so a step is
    timed from the previous step's t1 to its own while the engine stays busy: that interval is
    all the engine loop spends per step (taking in new requests, scheduling, the forward pass,
    sampling, updating requests, publishing outputs), i.e. the cadence at which a busy engine
    emits tokens, which is what engine_model.py's duration_s stands for (its tokens come out at the
    end of the step). It also holds under async scheduling, where the next step is scheduled
    before the previous one's output is processed. A step that follows an idle engine is timed
    from its own schedule() (t0) to t1, plus the median loop overhead between busy steps.
    """
    records = sorted(records, key=lambda r: r["t0"])
    gaps = [max(0.0, cur["t0"] - prev["t1"]) for prev, cur in zip(records, records[1:]) if prev["busy"]]
    overhead = float(np.median(gaps)) if gaps else 0.0
    steps = []
    for i, record in enumerate(records):
        previous = records[i - 1] if i else None
        if previous is not None and previous["busy"]:
            duration = record["t1"] - previous["t1"]
        else:
            duration = record["t1"] - record["t0"] + overhead
        steps.append(TimedStep(int(record["prefill"]), int(record["decode"]), int(record["kv"]), float(duration)))
    return steps


def profile_to_dict(profile: GPUProfile) -> dict[str, Any]:
    return dataclasses.asdict(profile)


def profile_from_dict(data: Mapping[str, Any]) -> GPUProfile:
    fields = {f.name for f in dataclasses.fields(GPUProfile)}
    return GPUProfile(**{k: v for k, v in data.items() if k in fields})


def load_profile(path: str | Path) -> GPUProfile:
    """The fitted profile written by `python -m deployments.calibrate --out PATH`."""
    data = json.loads(Path(path).read_text())
    return profile_from_dict(data.get("profile", data))
