"""Calibrate the engine model's step-time constants against a real vLLM engine, then check it.

    python -m deployments.calibrate --model .run/tiny-magistral [--out profile.json] [--quick]
    python -m deployments.calibrate --config configs/production.yaml --pool long \\
        --model /models/Magistral-Small-2506 --out h100.json   # on a GPU node

1. Starts one vLLM V1 engine (AsyncLLM, the engine ray.serve.llm runs in a replica) with the
   pool's engine settings (--config/--pool; the CPU pool by default), prefix caching off, and
   deployments/step_timing.py's scheduler, which writes down every step the engine core takes:
   prefill tokens, decoding sequences, KV tokens in the batch, start and end.
2. Drives a designed set of requests (prefill-only, decode batches at short and long contexts,
   decodes mixed with arriving prompts), fits GPUProfile's four constants to the timed steps
   (common/step_fit.py: non-negative least squares) and takes max_num_batched_tokens,
   max_num_seqs and the KV capacity from the running engine.
3. Replays one seeded request trace (Poisson arrivals, varied prompt and output lengths, ignore_eos
   so every output has its exact length) on the real engine, measuring each request's TTFT and
   TPOT as its caller sees them, and on `EngineModel(fitted profile)` in virtual time with the
   same arrival times; prints p50 / p90 of both and the relative errors. The design's rounds and
   the trace's parts take turns, so that both see the machine in the same state.

The last line printed:
    calibration ttft_p50_err=... ttft_p90_err=... tpot_p50_err=... tpot_p90_err=... r2=...
Errors are (model - real) / real. --out writes the fitted profile, fit quality and the comparison
as JSON (common/step_fit.load_profile reads the profile back). See docs/calibration.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.engine_model import PROFILES, EngineModel, GPUProfile
from common.step_fit import StepFit, TimedStep, fit_step_times, predict, profile_to_dict, steps_from_records

DEFAULT_CONFIG = "configs/cpu-vllm.yaml"
DEFAULT_POOL = "cpu"
STEP_LOG_ENV = "CALIBRATE_STEP_LOG"  # deployments/step_timing.py reads it in the engine process
# Arguments of a pool's engine_kwargs that only the OpenAI server / parsers use: a timing run
# sends token ids and plain sampling, so they are left out of the engine.
SERVING_ONLY_KWARGS = ("reasoning_parser", "tool_call_parser", "enable_auto_tool_choice",
                       "structured_outputs_config")
FIRST_TOKEN_ID = 1000  # Tekken: ids below are control tokens; prompts are random ids above
BUSY_MACHINE_CPUS = 0.25  # other processes' CPU use above which the run's timings are suspect


# ---------------------------------------------------------------------------------------------
# Workloads (pure)


@dataclass(frozen=True)
class Req:
    request_id: str
    arrival_s: float  # offset from the start of its wave
    prompt_tokens: int
    output_tokens: int


def design_rounds(max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int, quick: bool,
                  decode_step_s: float, rounds: int, seed: int = 0) -> list[list[tuple[str, list[Req]]]]:
    """`rounds` rounds of waves whose steps separate the four constants. Each wave runs alone.

    Every round is a whole small design, so that rounds run at different times each see every
    kind of step (the engine's speed drifts on a shared machine; see calibrate()):
    - prefill: one prompt at a time with max_tokens 1, lengths log-spaced from 16 tokens to 1.5
      budgets (chunked at the top; a round takes every `rounds`-th length), then several prompts
      at once: steps with prefill tokens and no decoding.
    - decode: batches of 1..max_num_seqs sequences at a short, a middle and a long context,
      decoding together: steps with decoding sequences only, batch size and KV varied apart.
    - mixed: a decode batch running while prompts keep arriving (every ~6 decode steps, paced by
      `decode_step_s`, the warm-up's decode step time): steps with both.

    Every prompt length is jittered (+-20 %) so that no two steps compute the same number of
    tokens, as in real traffic: kernels cache per-shape work (the CPU engine's oneDNN matmuls keep
    32 primitives per layer, keyed by the token count; a prefill of a length seen before ran up to
    twice as fast here), and a design of round, repeated lengths would time the cached case only.
    """
    rng = np.random.default_rng(seed)
    budget = max_num_batched_tokens
    cap = max_model_len - 200
    n = 0

    def req(arrival: float, prompt: int, output: int) -> Req:
        nonlocal n
        n += 1
        jittered = int(round(prompt * rng.uniform(0.8, 1.2)))
        return Req(f"d{n}", arrival, max(2, min(jittered, cap)), output)

    lengths = np.geomspace(16, budget * 3 // 2, 16 if quick else 24).round().astype(int)
    groups = [(4, 128), (max(2, max_num_seqs), max(16, budget // (2 * max(2, max_num_seqs))))]
    if not quick:
        groups += [(2, 512), (3, budget // 2)]
    batches = sorted({1, 2, max(1, max_num_seqs // 2), max_num_seqs}) if quick else \
        sorted({1, 2, 3, 4, max(1, max_num_seqs // 2), max_num_seqs})
    contexts = [32, min(512, cap), min(2048, cap)]
    out = max(8, (96 if quick else 128) // rounds)  # decode steps per wave, over all rounds ~96 / 128
    running = max(1, max_num_seqs // 2)
    arrivals, spacing = max(2, (12 if quick else 16) // rounds), 6
    design = []
    for r in range(rounds):
        waves = [("prefill-single", [req(0.0, int(length), 1) for length in lengths[r::rounds]])]
        waves += [(f"prefill-{count}x{length}", [req(0.0, length, 1) for _ in range(count)]) for count, length in groups]
        waves += [(f"decode-{batch}x{context}", [req(0.0, context, out) for _ in range(batch)])
                  for context in contexts for batch in batches]
        mixed = [req(0.0, 64, (arrivals + 2) * spacing + 8) for _ in range(running)]
        mixed += [req((i + 1) * spacing * decode_step_s, [256, 1024, budget // 2, 96][(i + r) % 4], 4)
                  for i in range(arrivals)]
        waves.append(("mixed", mixed))
        design.append(waves)
    return design


def make_trace(seed: int, n: int, max_prompt: int, max_output: int, prompt_median: float = 700.0,
               prompt_range: tuple[int, int] = (120, 2048)) -> list[Req]:
    """A seeded trace at unit rate (arrival_s in mean inter-arrival times; scale it by 1 / rate).

    Prompts by default as bench/workload.py's chat class, the bulk of the traffic the fleet is
    sized for: log-normal, median 700 tokens (a system prompt and a few turns), sigma 0.6, within
    120..2048 (and max_prompt). Outputs uniform in 16..max_output: far shorter than Magistral's
    reasoning, to keep the run short; decode steps do not depend on how long an output will get.
    """
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0, n)
    gaps[0] = 0.0
    arrivals = np.cumsum(gaps)
    low, high = prompt_range[0], min(prompt_range[1], max_prompt)
    if not 1 <= low <= prompt_median <= high:
        raise ValueError(f"prompt median {prompt_median} outside the prompt range {low}..{high}")
    prompts = np.rint(rng.lognormal(math.log(prompt_median), 0.6, n))
    outside = (prompts < low) | (prompts > high)
    while outside.any():  # redraw, as bench/workload.py does: no spikes at the bounds
        prompts[outside] = np.rint(rng.lognormal(math.log(prompt_median), 0.6, int(outside.sum())))
        outside = (prompts < low) | (prompts > high)
    outputs = rng.integers(16, max_output + 1, n)
    return [Req(f"t{i}", float(a), int(p), int(o)) for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs))]


def scale_trace(trace: list[Req], rate_per_s: float) -> list[Req]:
    return [dataclasses.replace(r, arrival_s=r.arrival_s / rate_per_s) for r in trace]


def split_trace(trace: list[Req], parts: int) -> list[list[Req]]:
    """Consecutive parts of the trace, each starting at 0 (its first request's arrival)."""
    bounds = np.linspace(0, len(trace), parts + 1).round().astype(int)
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        chunk = trace[lo:hi]
        out.append([dataclasses.replace(r, arrival_s=r.arrival_s - chunk[0].arrival_s) for r in chunk])
    return out


# ---------------------------------------------------------------------------------------------
# The engine model's side (pure, virtual time)


@dataclass(frozen=True)
class Timing:
    arrival_s: float
    first_token_s: float  # absolute, same clock as arrival_s
    last_token_s: float
    output_tokens: int

    @property
    def ttft(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.last_token_s - self.first_token_s) / (self.output_tokens - 1)


def replay_on_model(profile: GPUProfile, trace: list[Req],
                    per_prefilling_request_s: float = 0.0) -> tuple[dict[str, Timing], list[TimedStep]]:
    """Run the trace through EngineModel in virtual time: requests join between steps.

    per_prefilling_request_s: a what-if, not engine_model.py's model: charge this much more per
    request in a step that is not decoding (vLLM computes logits and samples for every scheduled
    request, prompt chunks included, and engine_model.py charges decode_s_per_seq to decoding
    sequences only).
    """
    model = EngineModel(profile)
    pending = sorted(trace, key=lambda r: r.arrival_s)
    by_id = {r.request_id: r for r in trace}
    first: dict[str, float] = {}
    timings: dict[str, Timing] = {}
    steps: list[TimedStep] = []
    clock, index = 0.0, 0
    while index < len(pending) or not model.idle:
        while index < len(pending) and pending[index].arrival_s <= clock:
            r = pending[index]
            model.add(r.request_id, r.prompt_tokens, r.output_tokens)
            index += 1
        if model.idle:
            clock = pending[index].arrival_s
            continue
        result = model.step()
        if result.duration_s == 0.0:  # nothing fits now; wait for the next arrival
            if index >= len(pending):
                raise RuntimeError("engine model stalled with requests it can never schedule")
            clock = pending[index].arrival_s
            continue
        duration = result.duration_s + per_prefilling_request_s * (len(result.requests) - result.decoding_seqs)
        clock += duration
        steps.append(TimedStep(result.prefill_tokens, result.decoding_seqs, result.kv_tokens_in_batch, duration))
        for request_id, rs in result.requests.items():
            if rs.first_token:
                first[request_id] = clock
            if rs.finished:
                r = by_id[request_id]
                timings[request_id] = Timing(r.arrival_s, first[request_id], clock, r.output_tokens)
    return timings, steps


def busy_fraction(profile: GPUProfile, trace: list[Req]) -> float:
    timings, steps = replay_on_model(profile, trace)
    makespan = max(t.last_token_s for t in timings.values()) - min(r.arrival_s for r in trace)
    return sum(s.duration_s for s in steps) / makespan


def rate_for_busy_fraction(profile: GPUProfile, unit_trace: list[Req], target: float) -> float:
    """Arrival rate (requests/s) at which the model's engine is busy `target` of the time."""
    low, high = 1e-3, 1e4
    for _ in range(60):
        mid = math.sqrt(low * high)
        if busy_fraction(profile, scale_trace(unit_trace, mid)) < target:
            low = mid
        else:
            high = mid
    return math.sqrt(low * high)


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "mean": float(np.mean(values))}


def compare(real: dict[str, Timing], model: dict[str, Timing]) -> dict[str, Any]:
    ids = sorted(real)
    out: dict[str, Any] = {"requests": len(ids)}
    for metric in ("ttft", "tpot"):
        r_values = [getattr(real[i], metric) for i in ids if getattr(real[i], metric) is not None]
        m_values = [getattr(model[i], metric) for i in ids if getattr(model[i], metric) is not None]
        r_pct, m_pct = percentiles(r_values), percentiles(m_values)
        out[metric] = {"real": r_pct, "model": m_pct,
                       "err": {k: m_pct[k] / r_pct[k] - 1.0 for k in ("p50", "p90", "mean")}}
    return out


# ---------------------------------------------------------------------------------------------
# The real engine's side


def pool_engine_settings(config_path: str, pool_name: str) -> tuple[dict[str, Any], dict[str, str], int]:
    """(engine kwargs, env vars, max_model_len) of a pool in a serve config, as its replica gets them."""
    import yaml

    from common.config import AppConfig, VLLMEngine
    from deployments.vllm_config import engine_kwargs

    with open(config_path) as f:
        args = yaml.safe_load(f)["applications"][0]["args"]
    config = AppConfig.model_validate(args)
    pools = {p.name: p for p in config.pools}
    if pool_name not in pools:
        raise SystemExit(f"no pool {pool_name!r} in {config_path} (pools: {', '.join(pools)})")
    pool = pools[pool_name]
    if not isinstance(pool.engine, VLLMEngine):
        raise SystemExit(f"pool {pool_name!r} in {config_path} is not a vLLM pool")
    kwargs = engine_kwargs(pool)
    kwargs["model"] = pool.engine.model_source
    return kwargs, dict(pool.engine.env_vars), pool.max_model_len


class RealEngine:
    """One AsyncLLM with the step-recording scheduler; requests sent as token ids."""

    def __init__(self, engine_kwargs: dict[str, Any], step_log: Path, temperature: float, top_p: float) -> None:
        os.environ[STEP_LOG_ENV] = str(step_log)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        from deployments.step_timing import scheduler_for  # imported here: an error shows here, not in the engine

        fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        unknown = sorted(set(engine_kwargs) - fields)
        if unknown:
            print(f"engine: ignoring arguments vLLM's engine does not take: {', '.join(unknown)}", flush=True)
        args = AsyncEngineArgs(**{k: v for k, v in engine_kwargs.items() if k in fields})
        # As an OpenAI server (and ray.serve.llm) would: its default token budget, not the LLM class's.
        self.vllm_config = args.create_engine_config(UsageContext.OPENAI_API_SERVER)
        sched = self.vllm_config.scheduler_config
        # By name: the engine core process imports it (and a name survives the config's pickling).
        recording = scheduler_for(bool(sched.async_scheduling))
        sched.scheduler_cls = f"{recording.__module__}.{recording.__qualname__}"
        self.step_log = step_log
        self.temperature, self.top_p = temperature, top_p
        started = time.monotonic()
        self.engine = AsyncLLM.from_vllm_config(self.vllm_config, usage_context=UsageContext.OPENAI_API_SERVER,
                                                disable_log_stats=False)
        self.start_s = time.monotonic() - started
        self.vocab = self.vllm_config.model_config.get_vocab_size()
        self._rng = np.random.default_rng(12345)
        self.engine_side: dict[str, Timing | None] = {}

    @property
    def limits(self) -> dict[str, Any]:
        sched, cache = self.vllm_config.scheduler_config, self.vllm_config.cache_config
        return {"max_num_batched_tokens": sched.max_num_batched_tokens, "max_num_seqs": sched.max_num_seqs,
                "max_model_len": self.vllm_config.model_config.max_model_len,
                "kv_capacity_tokens": int((cache.num_gpu_blocks or 0) * cache.block_size),
                "block_size": cache.block_size, "async_scheduling": bool(sched.async_scheduling),
                "enable_prefix_caching": bool(cache.enable_prefix_caching),
                "enable_chunked_prefill": bool(sched.enable_chunked_prefill)}

    def _prompt(self, n: int) -> list[int]:
        return self._rng.integers(FIRST_TOKEN_ID, self.vocab, n).tolist()

    async def _one(self, r: Req, start: float, tag: str) -> Timing:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        delay = start + r.arrival_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        params = SamplingParams(max_tokens=r.output_tokens, ignore_eos=True, temperature=self.temperature,
                                top_p=self.top_p if self.temperature > 0 else 1.0,  # 0: greedy
                                output_kind=RequestOutputKind.DELTA)
        prompt = TokensPrompt(prompt_token_ids=self._prompt(r.prompt_tokens))
        sent = time.monotonic()
        first = last = None
        tokens = 0
        metrics = None
        async for out in self.engine.generate(prompt, params, f"{tag}-{r.request_id}"):
            now = time.monotonic()
            new = len(out.outputs[0].token_ids)
            if new and first is None:
                first = now
            if new:
                last = now
            tokens += new
            metrics = out.metrics
        if tokens != r.output_tokens or first is None or last is None:
            raise RuntimeError(f"{r.request_id}: got {tokens} tokens, wanted {r.output_tokens}")
        self.engine_side[f"{tag}-{r.request_id}"] = (
            Timing(metrics.queued_ts - start, metrics.first_token_ts - start, metrics.last_token_ts - start, tokens)
            if metrics is not None and metrics.first_token_ts else None)
        return Timing(sent - start, first - start, last - start, tokens)

    async def run(self, reqs: list[Req], tag: str) -> tuple[dict[str, Timing], float, float]:
        """Send the requests at their arrival offsets; (timings, start, end) on time.monotonic().

        Timings are the caller's: sent, first and last token received. The engine core's own
        timestamps of the same events (same monotonic clock) go to `engine_side`.
        """
        start = time.monotonic() + 0.05
        results = await asyncio.gather(*(self._one(r, start, tag) for r in reqs))
        return {r.request_id: t for r, t in zip(reqs, results)}, start, time.monotonic()

    def records(self, start: float, end: float) -> list[dict[str, Any]]:
        lines = self.step_log.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return [r for r in records if start <= r["t0"] <= end]

    def shutdown(self) -> None:
        engine, self.engine = self.engine, None
        engine.shutdown()
        del engine  # AsyncLLM.__del__ shuts down again: let it run now, not at interpreter exit


class CpuMeter:
    """CPU time other processes took while we ran: a shared machine stretches the engine's steps.

    Linux /proc: the machine's busy time (/proc/stat) minus that of this process and its
    descendants (the engine core and its worker), as a number of CPUs kept busy on average.
    """

    def __init__(self) -> None:
        self._tick = os.sysconf("SC_CLK_TCK")
        self._last = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float]:
        try:
            fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
            parents: dict[int, int] = {}
            cpu: dict[int, float] = {}
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    rest = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                pid = int(stat.parent.name)
                parents[pid], cpu[pid] = int(rest[1]), float(rest[11]) + float(rest[12])
            ours, frontier = {os.getpid()}, [os.getpid()]
            while frontier:
                parent = frontier.pop()
                children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in ours]
                ours.update(children)
                frontier += children
            return time.monotonic(), busy, sum(cpu.get(pid, 0.0) for pid in ours)
        except (OSError, ValueError, IndexError):
            return time.monotonic(), 0.0, 0.0

    def others(self) -> float:
        """CPUs other processes kept busy since the last call."""
        now = self._snapshot()
        (t0, busy0, ours0), (t1, busy1, ours1) = self._last, now
        self._last = now
        if t1 <= t0 or not busy1:
            return 0.0
        return max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / self._tick / (t1 - t0))


# ---------------------------------------------------------------------------------------------
# The run


def _fmt_ms(values: dict[str, float]) -> str:
    return f"p50 {values['p50'] * 1000:8.1f} ms  p90 {values['p90'] * 1000:8.1f} ms"


async def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    engine_kwargs, env_vars, max_model_len = pool_engine_settings(args.config, args.pool)
    if args.model:
        engine_kwargs["model"] = args.model
    for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        if getattr(args, key) is not None:
            engine_kwargs[key] = getattr(args, key)
    for name, value in env_vars.items():
        os.environ.setdefault(name, value)
    for key in SERVING_ONLY_KWARGS:
        engine_kwargs.pop(key, None)
    engine_kwargs["enable_prefix_caching"] = False  # steps must compute every token they are charged
    engine_kwargs.setdefault("max_model_len", max_model_len)
    print(f"engine: {json.dumps(engine_kwargs, sort_keys=True, default=str)}", flush=True)

    step_log = Path(args.step_log or tempfile.mkstemp(prefix="calibrate-steps-", suffix=".jsonl")[1])
    step_log.write_text("")
    engine = RealEngine(engine_kwargs, step_log, args.temperature, args.top_p)
    # The engine shares the machine: other busy processes stretch its steps at random. Say so.
    meter = CpuMeter()
    try:
        limits = engine.limits
        print(f"engine started in {engine.start_s:.1f} s: {json.dumps(limits)}", flush=True)
        budget, seqs = limits["max_num_batched_tokens"], limits["max_num_seqs"]

        _, start, end = await engine.run([Req(f"w{i}", 0.0, 64 * (i + 1), 16) for i in range(seqs)], "warmup")
        warm = [s for s in steps_from_records(engine.records(start - 0.01, end)) if not s.prefill_tokens]
        decode_step_s = float(np.median([s.duration_s for s in warm])) if warm else 0.05
        # Every field is fitted (the step constants) or read from the engine (its limits).
        base = GPUProfile(name="", max_num_batched_tokens=1, max_num_seqs=1, kv_capacity_tokens=1, base_s=0.0,
                          prefill_s_per_token=0.0, decode_s_per_seq=0.0, attention_s_per_kv_token=0.0)

        def fit_records(records: list[dict[str, Any]]) -> StepFit:
            return fit_step_times(steps_from_records(records), base, name=args.name or f"{args.pool}-fitted",
                                  max_num_batched_tokens=budget, max_num_seqs=seqs,
                                  kv_capacity_tokens=limits["kv_capacity_tokens"])

        # The design and the trace take turns (design, trace part, design, ..., trace part, design),
        # each round of the design a whole small design: the engine's speed drifts by 10-20 % over
        # seconds on a shared machine (even with no other process busy here), and the fit should
        # see the engine in the conditions the trace saw. The first round's fit paces the trace.
        parts_n = 3 if args.quick else 4
        rounds = design_rounds(budget, seqs, limits["max_model_len"], args.quick, decode_step_s, parts_n + 1)
        t_design = time.monotonic()
        design_records = await _run_waves(engine, rounds[0])
        design_s = time.monotonic() - t_design
        others: dict[str, list[float]] = {"design": [meter.others()], "trace": []}
        preliminary = fit_records(design_records)  # only to pace the trace

        unit = make_trace(args.seed, args.trace_requests or (40 if args.quick else 80),
                          max_prompt=limits["max_model_len"] - args.max_output - 1, max_output=args.max_output,
                          prompt_median=args.trace_prompt_median, prompt_range=tuple(args.trace_prompt_range))
        rate = args.trace_rate or rate_for_busy_fraction(preliminary.profile, unit, args.busy)
        parts = split_trace(scale_trace(unit, rate), parts_n)
        print(f"trace: {len(unit)} requests at {rate:.2f} req/s (model busy {args.busy:.0%} of the time), in {parts_n} "
              f"parts of {', '.join(f'{p[-1].arrival_s:.1f}' for p in parts)} s of arrivals", flush=True)
        real: dict[str, Timing] = {}
        tags: dict[str, str] = {}
        trace_steps: list[TimedStep] = []
        busy_spans: list[tuple[float, float, float]] = []
        windows = []
        for i, part in enumerate(parts):
            timings, start, end = await engine.run(part, f"trace{i}")
            real.update(timings)
            tags.update({r.request_id: f"trace{i}-{r.request_id}" for r in part})
            part_records = engine.records(start - 0.01, end)
            trace_steps += steps_from_records(part_records)
            busy_spans += [(start, r["t0"], r["t1"]) for r in part_records]  # to tell an idle engine
            windows.append([start, end])
            others["trace"].append(meter.others())
            t_design = time.monotonic()
            design_records += await _run_waves(engine, rounds[i + 1])
            design_s += time.monotonic() - t_design
            others["design"].append(meter.others())
        fit = fit_records(design_records)
        print(f"design: {fit.n_steps} steps in {design_s:.1f} s, in turns with the trace", flush=True)
        _print_fit(fit)
    finally:
        engine.shutdown()

    # The model replays each part of the trace with the arrivals the real engine saw (the sends,
    # a few ms off the schedule), from an empty engine as the real one started each part.
    model: dict[str, Timing] = {}
    model_steps: list[TimedStep] = []
    sent_parts = [[dataclasses.replace(r, arrival_s=real[r.request_id].arrival_s) for r in part] for part in parts]
    for sent in sent_parts:
        timings, steps = replay_on_model(fit.profile, sent)
        model.update(timings)
        model_steps += steps
    comparison = compare(real, model)
    # Where the real TTFT goes, from the engine core's own timestamps (same monotonic clock): before
    # the core takes the request in (front end, IPC, and the step in progress: the core adds
    # requests between steps), in the core (queued to first token out), delivering the token.
    core = {request_id: engine.engine_side.get(tag) for request_id, tag in tags.items()}
    ttft_parts = None
    if all(core.values()):
        # A request sent while no step ran reaches the core at once: its wait is the front end's.
        part_start = {r.request_id: w[0] for part, w in zip(parts, windows) for r in part}
        idle = [i for i in real if not any(t0 <= part_start[i] + real[i].arrival_s <= t1 for _, t0, t1 in busy_spans)]
        ttft_parts = {name: 1000 * float(np.median(values)) if values else None for name, values in (
            ("before_core_ms", [core[i].arrival_s - real[i].arrival_s for i in real]),
            ("front_end_in_ms", [core[i].arrival_s - real[i].arrival_s for i in idle]),
            ("in_core_ms", [core[i].first_token_s - core[i].arrival_s for i in real]),
            ("delivery_ms", [real[i].first_token_s - core[i].first_token_s for i in real]))}
    # The same comparison with the tokens timed where the engine core emits them (the request
    # still timed from its send): what the front end's delivery adds is left out.
    at_core = None
    if all(core.values()):
        at_core = compare({i: dataclasses.replace(real[i], first_token_s=core[i].first_token_s,
                                                  last_token_s=core[i].last_token_s) for i in real}, model)
    what_if = _per_request_what_if(design_records, fit.profile, sent_parts, real)
    holdout = _holdout(fit.profile, trace_steps)
    scheduling = {"real_steps": len(trace_steps), "model_steps": len(model_steps),
                  "real_busy_s": sum(s.duration_s for s in trace_steps),
                  "model_busy_s": sum(s.duration_s for s in model_steps),
                  "real_mean_decoding_seqs": float(np.mean([s.decoding_seqs for s in trace_steps])),
                  "model_mean_decoding_seqs": float(np.mean([s.decoding_seqs for s in model_steps]))}
    if ttft_parts is not None:
        front_in = ttft_parts["front_end_in_ms"]
        print(f"real TTFT, p50 of each part: {ttft_parts['before_core_ms']:.1f} ms before the engine core takes the "
              f"request (front end + the step in progress), {ttft_parts['in_core_ms']:.1f} ms in the core, "
              f"{ttft_parts['delivery_ms']:.1f} ms delivering the token; the front end alone (request sent to an "
              f"idle engine) takes " + (f"{front_in:.1f} ms" if front_in is not None else "?") + " to reach the core. "
              f"The engine model has no front end.", flush=True)
    if at_core is not None:
        print(f"with tokens timed as the engine core emits them (front end's delivery left out): error TTFT p50 "
              f"{at_core['ttft']['err']['p50']:+.1%} p90 {at_core['ttft']['err']['p90']:+.1%}, TPOT p50 "
              f"{at_core['tpot']['err']['p50']:+.1%} p90 {at_core['tpot']['err']['p90']:+.1%}", flush=True)
    print(f"what-if (not engine_model.py): the per-sequence cost charged to every scheduled request, prompt "
          f"chunks too (vLLM computes logits and samples for each), refitted: R^2 {what_if['r2']:.3f}, cost "
          f"{what_if['per_request_s']:.4g} s/request; error TTFT p50 {what_if['ttft']['err']['p50']:+.1%} "
          f"p90 {what_if['ttft']['err']['p90']:+.1%}, TPOT p50 {what_if['tpot']['err']['p50']:+.1%} "
          f"p90 {what_if['tpot']['err']['p90']:+.1%}", flush=True)
    _print_comparison(comparison, holdout, scheduling)
    busiest = max(max(v) for v in others.values())
    print(f"other processes kept up to {max(others['design']):.2f} of {os.cpu_count()} CPUs busy during the design, "
          f"up to {max(others['trace']):.2f} during the trace", flush=True)
    if busiest > BUSY_MACHINE_CPUS:
        print(f"WARNING: other processes took CPU time from the engine (up to {busiest:.2f} CPUs): its steps were "
              f"stretched at random and these figures are noisy; rerun on a quiet machine", flush=True)
    report = {"profile": profile_to_dict(fit.profile), "fit": fit.summary(), "engine": limits,
              "engine_kwargs": {k: str(v) for k, v in engine_kwargs.items()},
              "sampling": {"temperature": args.temperature, "top_p": args.top_p},
              "design_steps": fit.n_steps, "trace": {"requests": len(unit), "rate_per_s": rate,
                                                          "seed": args.seed, "parts": parts_n, "windows": windows},
              "comparison": comparison, "comparison_at_engine_core": at_core, "ttft_parts_p50": ttft_parts, "per_request_what_if": what_if,
              "trace_steps_holdout": holdout,
              "requests": {r.request_id: {"prompt": r.prompt_tokens, "output": r.output_tokens,
                                          "real": dataclasses.astuple(real[r.request_id]),
                                          "core": dataclasses.astuple(core[r.request_id]) if core[r.request_id] else None,
                                          "model": dataclasses.astuple(model[r.request_id])}
                           for part in parts for r in part}, "scheduling": scheduling,
              "other_processes_cpus": others, "cpus": os.cpu_count(), "step_log": str(step_log)}
    c = comparison
    print(f"calibration ttft_p50_err={c['ttft']['err']['p50']:+.3f} ttft_p90_err={c['ttft']['err']['p90']:+.3f} "
          f"tpot_p50_err={c['tpot']['err']['p50']:+.3f} tpot_p90_err={c['tpot']['err']['p90']:+.3f} "
          f"r2={fit.r2:.3f}", flush=True)
    return report


async def _run_waves(engine: RealEngine, waves: list[tuple[str, list[Req]]]) -> list[dict[str, Any]]:
    """Run each wave alone; the step records of all of them."""
    records: list[dict[str, Any]] = []
    for name, wave in waves:
        _, start, end = await engine.run(wave, name)
        records += engine.records(start - 0.01, end)
    return records


def _per_request_what_if(records: list[dict[str, Any]], fitted: GPUProfile, sent_parts: list[list[Req]],
                         real: dict[str, Timing]) -> dict[str, Any]:
    """Refit with the per-sequence term counting every scheduled request (not only the decoding
    ones), and replay the trace charging it so: what engine_model.py would predict with that term."""
    steps = [dataclasses.replace(step, decoding_seqs=int(record["reqs"]))
             for record, step in zip(sorted(records, key=lambda r: r["t0"]), steps_from_records(records))]
    fit = fit_step_times(steps, fitted)
    timings: dict[str, Timing] = {}
    for sent in sent_parts:
        timings.update(replay_on_model(fit.profile, sent, per_prefilling_request_s=fit.profile.decode_s_per_seq)[0])
    out = compare(real, timings)
    out.update(r2=fit.r2, constants=fit.constants, per_request_s=fit.profile.decode_s_per_seq)
    return out


def _holdout(profile: GPUProfile, steps: list[TimedStep]) -> dict[str, float]:
    """The fitted line on the trace's own real steps (never seen by the fit)."""
    measured = np.array([s.duration_s for s in steps])
    predicted = predict(profile, steps)
    return {"steps": len(steps), "mean_abs_rel_error": float(np.mean(np.abs(predicted - measured) / measured)),
            "total_rel_error": float(predicted.sum() / measured.sum() - 1.0)}


def _print_fit(fit: StepFit) -> None:
    p = fit.profile
    print(f"fit over {fit.n_steps} steps ({fit.n_dropped} outliers left out, {fit.weighting} weighting): "
          f"R^2 {fit.r2:.3f}, median |error| {fit.median_abs_rel_error:.1%}, "
          f"mean |error| {fit.mean_abs_rel_error:.1%}, total {fit.total_rel_error:+.1%}", flush=True)
    print(f"  base_s={p.base_s:.6g}  prefill_s_per_token={p.prefill_s_per_token:.6g}  "
          f"decode_s_per_seq={p.decode_s_per_seq:.6g}  attention_s_per_kv_token={p.attention_s_per_kv_token:.6g}"
          + (f"  (held at 0: {', '.join(fit.clipped)})" if fit.clipped else ""), flush=True)


def _print_comparison(c: dict[str, Any], holdout: dict[str, float], scheduling: dict[str, Any]) -> None:
    print(f"fitted line on the trace's {holdout['steps']} real steps: mean |error| "
          f"{holdout['mean_abs_rel_error']:.1%}, total {holdout['total_rel_error']:+.1%}", flush=True)
    print(f"scheduling: real {scheduling['real_steps']} steps / {scheduling['real_busy_s']:.2f} s busy, "
          f"model {scheduling['model_steps']} steps / {scheduling['model_busy_s']:.2f} s busy; mean decoding "
          f"seqs per step real {scheduling['real_mean_decoding_seqs']:.2f}, "
          f"model {scheduling['model_mean_decoding_seqs']:.2f}", flush=True)
    for metric in ("ttft", "tpot"):
        m = c[metric]
        print(f"{metric.upper()}  real  {_fmt_ms(m['real'])}", flush=True)
        print(f"{metric.upper()}  model {_fmt_ms(m['model'])}   error p50 {m['err']['p50']:+.1%}  "
              f"p90 {m['err']['p90']:+.1%}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory or hub id (default: the pool's model_source)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="serve config whose pool's engine settings to use")
    parser.add_argument("--pool", default=DEFAULT_POOL)
    parser.add_argument("--out", help="write the fitted profile and the comparison here (JSON)")
    parser.add_argument("--quick", action="store_true", help="a shorter design and trace (tests)")
    parser.add_argument("--name", help="name of the fitted profile (default: POOL-fitted)")
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--max-num-batched-tokens", type=int)
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--temperature", type=float, default=0.7, help="Magistral's recommended sampling")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=7, help="the trace's seed")
    parser.add_argument("--trace-requests", type=int)
    parser.add_argument("--trace-rate", type=float, help="requests/s (default: the rate at which the fitted "
                        "model's engine is busy --busy of the time)")
    parser.add_argument("--busy", type=float, default=0.6)
    parser.add_argument("--trace-prompt-median", type=float, default=700.0,
                        help="the trace's prompts: log-normal with this median (default: chat-sized)")
    parser.add_argument("--trace-prompt-range", type=int, nargs=2, default=[120, 2048], metavar=("LOW", "HIGH"))
    parser.add_argument("--max-output", type=int, default=96)
    parser.add_argument("--step-log", help="keep the engine's per-step records here (JSON lines)")
    args = parser.parse_args(argv)
    # SIGTERM like Ctrl-C: the engine's own processes are shut down on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = asyncio.run(calibrate(args))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":  # the engine's processes are spawned: keep this guard
    sys.exit(main())
