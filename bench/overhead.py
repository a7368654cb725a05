"""What the router's features cost: the full router against a bare Ray Serve ingress, A B A B.

    .venv/bin/python -m bench.overhead [--quick]

Starts a Ray head of its own and deploys, side by side, the same zero-delay stub replicas behind
  (a) bare    a Ray Serve FastAPI pass-through (bench/bare_ingress.py): no features, and
  (b) router  the full router with every feature on: API keys, exact Tekken counts where the byte
              bound does not decide, the context cap, quotas (requests, tokens, concurrency, spend
              per day) reserved and settled in the ledger, pricing, spans of every process exported
              over OTLP/HTTP to a receiver in this process, metrics, TokenLoadRouter.
Closed-loop load at several concurrencies, non-streaming and streaming, in rounds that alternate
A B A B so the machine's drift hits both alike. Prints p50 / p99 latency, throughput and, for
streams, the gap between tokens at the client; how often the exact count ran; what the exact
count costs next to the raw Tekken encode of the same text. The last line is
`overhead p50_ratio=X p99_ratio=Y throughput_ratio=Z itl_p99_added_ms=W`: the worst of each over
every concurrency and mode (router / bare; added ITL p99 in ms). Writes bench/results/overhead.json
and overhead.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.http_timing import Sample, closed_loop, percentile
from bench.report import write_json

PORT = 8139
KEY = "sk-bench"
SYSTEMS = ("bare", "router")
# Zero-delay stub replicas: what is measured is everything but the model.
POOL = {"name": "fast", "max_model_len": 16_384, "max_prompt_tokens": 8_192, "num_replicas": 2,
        "engine": {"kind": "stub", "prefill_tokens_per_s": 1e12, "decode_ms_per_token": 0}}
TENANTS = {"tenants": {"bench": {"api_keys": [KEY], "limits": {
    # Every quota is checked and settled on every request; none is meant to refuse one.
    "requests_per_minute": 10_000_000, "tokens_per_minute": 10**12, "max_concurrent_requests": 100_000,
    "tokens_per_day": 10**13, "usd_per_day": 10**7}}}}
PRICES = {"default_tier": "standard", "tiers": {"standard": {"fast": {"input": 0.5, "output": 1.5}}}}
OUTPUT_TOKENS = 16
# One request in ten carries a ~3 000-token document: its byte bound (> 8 192) cannot place it,
# so the router counts it exactly; the short ones are placed by the bound alone.
DOCUMENT = "The quick brown fox jumps over the lazy dog. " * 300


def body_for(stream: bool):
    def body(i: int) -> dict:
        content = DOCUMENT if i % 10 == 9 else f"Question {i}: what is {i} + {i}?"
        return {"model": "magistral-small-2506", "messages": [{"role": "user", "content": content}],
                "max_tokens": OUTPUT_TOKENS, "ignore_eos": True, "stream": stream,
                **({"stream_options": {"include_usage": True}} if stream else {})}
    return body


def deploy(folder: Path, otlp_endpoint: str) -> None:
    from ray import serve

    from bench.bare_ingress import BareIngress
    from cluster.local import wait_for_health
    from deployments.stub_replica import StubReplica
    from cluster.app import build_app

    (folder / "tenants.yaml").write_text(json.dumps(TENANTS))
    (folder / "prices.yaml").write_text(json.dumps(PRICES))
    args = {"tenants_file": str(folder / "tenants.yaml"), "prices_file": str(folder / "prices.yaml"),
            "ledger_url": f"sqlite:///{folder}/ledger.db", "router_replicas": 1, "pools": [POOL]}
    serve.run(build_app(args), name="router", route_prefix="/", blocking=False)
    stub = StubReplica.options(name="pool-bare", num_replicas=POOL["num_replicas"])
    bare = BareIngress.bind(stub.bind(pool="bare", prefill_tokens_per_s=1e12, decode_ms_per_token=0))
    serve.run(bare, name="bare", route_prefix="/bare", blocking=False)
    wait_for_health(f"http://127.0.0.1:{PORT}/health", 180)
    print(f"deployed: router at /, bare at /bare; spans to {otlp_endpoint}", flush=True)


def summary(samples: list[Sample], elapsed: float) -> dict:
    ok = [s for s in samples if s.ok]
    gaps = [g for s in ok for g in s.token_gaps_s]
    return {
        "requests": len(samples), "errors": len(samples) - len(ok),
        "p50_ms": percentile([s.latency_s for s in ok], 50) * 1e3,
        "p99_ms": percentile([s.latency_s for s in ok], 99) * 1e3,
        "throughput_rps": len(ok) / elapsed if elapsed else 0.0,
        "ttft_p50_ms": percentile([s.ttft_s for s in ok if s.ttft_s is not None], 50) * 1e3,
        "itl_p50_ms": percentile(gaps, 50) * 1e3, "itl_p99_ms": percentile(gaps, 99) * 1e3,
    }


async def measure(concurrencies: tuple[int, ...], rounds: int, round_s: float) -> list[dict]:
    results = []
    limits = httpx.Limits(max_connections=max(concurrencies) * 2, max_keepalive_connections=max(concurrencies) * 2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:
        for stream in (False, True):
            for system in SYSTEMS:  # warm both paths (connections, imports, caches) first
                await closed_loop(client, path(system), body_for(stream), 4, 1.0)
            for concurrency in concurrencies:
                samples = {s: [] for s in SYSTEMS}
                elapsed = dict.fromkeys(SYSTEMS, 0.0)
                for r in range(rounds):
                    order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]  # A B, B A, ... : no order bias
                    for system in order:
                        got, took = await closed_loop(client, path(system), body_for(stream), concurrency, round_s)
                        samples[system] += got
                        elapsed[system] += took
                row = {"stream": stream, "concurrency": concurrency,
                       **{s: summary(samples[s], elapsed[s]) for s in SYSTEMS}}
                results.append(row)
                print_row(row)
    return results


def path(system: str) -> str:
    return "/v1/chat/completions" if system == "router" else "/bare/v1/chat/completions"


def print_row(row: dict) -> None:
    mode = "stream" if row["stream"] else "whole "
    for system in SYSTEMS:
        s = row[system]
        itl = f" itl p50 {s['itl_p50_ms']:6.2f} p99 {s['itl_p99_ms']:6.2f} ms" if row["stream"] else ""
        print(f"{mode} c={row['concurrency']:<3} {system:>6}: p50 {s['p50_ms']:7.2f} p99 {s['p99_ms']:7.2f} ms "
              f"{s['throughput_rps']:7.1f} req/s ({s['requests']} requests, {s['errors']} errors){itl}", flush=True)


def counting_share(spans) -> tuple[int, int]:
    """(requests whose admission ran the exact count, requests admitted), from the router's spans."""
    from common.telemetry import attributes as A

    admissions = [s for s in spans if s.name == "admission"]
    return sum(1 for s in admissions if s.attributes.get(A.PROMPT_COUNTED)), len(admissions)


def count_cost() -> list[dict]:
    """The router's exact count (chat template included) against the raw Tekken encode of the
    same text, and whether the byte bound alone decides (then nothing is counted)."""
    from common.tokens import TekkenCounter, chat_upper_bound

    counter = TekkenCounter()
    raw = counter.tokenizer.instruct_tokenizer.tokenizer  # the bare Tekken BPE
    rows = []
    for words in (20, 300, 3_000, 12_000, 30_000):
        text = " ".join(f"w{i % 997}" for i in range(words))
        messages = [{"role": "user", "content": text}]

        exact_s, encode_s = [], []
        for _ in range(max(5, 60_000 // words)):  # alternate the two: drift hits both alike
            t = time.perf_counter()
            counter.count_chat(messages)
            exact_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            raw.encode(text, bos=True, eos=False)
            encode_s.append(time.perf_counter() - t)
        exact, encode = statistics.median(exact_s) * 1e3, statistics.median(encode_s) * 1e3
        rows.append({"words": words, "tokens": counter.count_chat(messages), "bound": chat_upper_bound(messages),
                     "exact_ms": exact, "raw_encode_ms": encode, "ratio": exact / encode})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two concurrencies, short rounds, Serve's proxy only (< 2 min)")
    parser.add_argument("--ingress", choices=("haproxy", "proxy", "both"), default=None,
                        help="Serve's HTTP path to measure under (default: both, or proxy with --quick)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one ingress mode, in a process of its own
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        Path(args.out).write_text(json.dumps(run_mode(args.child, args.quick)))
        return
    costs = count_cost()
    print("exact count vs raw Tekken encode of the same text (median ms):")
    for c in costs:
        print(f"  {c['tokens']:>6} tokens (byte bound {c['bound']:>6}): exact {c['exact_ms']:8.3f}  "
              f"raw encode {c['raw_encode_ms']:8.3f}  ratio {c['ratio']:.3f}", flush=True)
    modes = ["proxy", "haproxy"] if (args.ingress or ("proxy" if args.quick else "both")) == "both" \
        else [args.ingress or "proxy"]
    per_mode = {}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as folder:
        for mode in modes:
            # Serve reads its ingress mode once per process, at import: one process per mode.
            out = Path(folder) / f"{mode}.json"
            print(f"\n== ingress {mode} ==", flush=True)
            command = [sys.executable, "-m", "bench.overhead", "--child", mode, "--out", str(out)]
            subprocess.run(command + (["--quick"] if args.quick else []), check=True)
            per_mode[mode] = json.loads(out.read_text())
    finish(per_mode, costs, args.quick)


def run_mode(mode: str, quick: bool) -> dict:
    from cluster.local import ingress_env

    concurrencies, rounds, round_s = ((1, 8), 4, 2.0) if quick else ((1, 4, 16, 32), 6, 4.0)
    os.environ.update(ingress_env(mode))  # before ray.serve is imported
    import ray
    from ray import serve

    from tests.otlp_receiver import OTLPReceiver

    with OTLPReceiver() as receiver, tempfile.TemporaryDirectory(prefix="bench-overhead-") as folder:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
               "OTEL_BSP_MAX_QUEUE_SIZE": "65536"}
        os.environ.update(env)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {**env, **{k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}}})
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": PORT})
            deploy(Path(folder), receiver.endpoint)
            started = time.monotonic()
            rows = asyncio.run(measure(concurrencies, rounds, round_s))
            print(f"measured in {time.monotonic() - started:.0f} s", flush=True)
            time.sleep(2.5)  # the last spans leave in the next export batch
            counted, admitted = counting_share(receiver.spans)
        finally:
            serve.shutdown()
            ray.shutdown()
    return {"rows": rows, "counted": counted, "admitted": admitted}


def ratios_of(rows: list[dict]) -> dict:
    """The worst of each over every concurrency and mode."""
    return {
        "p50_ratio": max(r["router"]["p50_ms"] / r["bare"]["p50_ms"] for r in rows),
        "p99_ratio": max(r["router"]["p99_ms"] / r["bare"]["p99_ms"] for r in rows),
        "throughput_ratio": min(r["router"]["throughput_rps"] / r["bare"]["throughput_rps"] for r in rows),
        "itl_p99_added_ms": max(r["router"]["itl_p99_ms"] - r["bare"]["itl_p99_ms"] for r in rows if r["stream"]),
    }


def finish(per_mode: dict[str, dict], costs: list[dict], quick: bool) -> None:
    default = "proxy" if "proxy" in per_mode else next(iter(per_mode))  # cluster.local's default
    ratios = {mode: ratios_of(m["rows"]) for mode, m in per_mode.items()}
    for mode, m in per_mode.items():
        print(f"ingress {mode}: exact count ran for {m['counted']} of {m['admitted']} admitted requests "
              f"({m['counted'] / max(m['admitted'], 1):.1%}; one request in ten carries a document the byte "
              f"bound cannot place); router/bare " + " ".join(f"{k}={v:.3f}" for k, v in ratios[mode].items()))
    if {"haproxy", "proxy"} <= per_mode.keys():
        for h, p in zip(per_mode["haproxy"]["rows"], per_mode["proxy"]["rows"]):
            print(f"haproxy vs proxy, {'stream' if h['stream'] else 'whole '} c={h['concurrency']:<3}: " + ", ".join(
                f"{s} p50 {h[s]['p50_ms']:.1f} vs {p[s]['p50_ms']:.1f} ms, {h[s]['throughput_rps']:.1f} vs "
                f"{p[s]['throughput_rps']:.1f} req/s" for s in SYSTEMS))
    counted_rows = [c for c in costs if c["bound"] > POOL["max_prompt_tokens"]]  # where the count runs
    print(f"exact count / raw encode where the count runs (bound > {POOL['max_prompt_tokens']}): worst "
          f"{max(c['ratio'] for c in counted_rows):.3f} (target <= 1.10)")
    write_json("overhead", {"quick": quick, "default_ingress": default, "modes": per_mode, "ratios": ratios,
                            "count_cost": costs, **ratios[default]})
    plot(per_mode[default]["rows"], default)
    print("overhead " + " ".join(f"{k}={v:.3f}" if k != "itl_p99_added_ms" else f"{k}={v:.2f}"
                                 for k, v in ratios[default].items()))


def plot(rows: list[dict], ingress: str) -> None:
    from bench.report import figure

    fig, axes = figure(1, 3, f"Router (every feature on) vs bare Ray Serve ingress ({ingress}), same zero-delay replicas")
    for stream, style in ((False, "-"), (True, "--")):
        sub = [r for r in rows if r["stream"] == stream]
        c = [r["concurrency"] for r in sub]
        label = "stream" if stream else "whole"
        for system, color in (("bare", "tab:gray"), ("router", "tab:blue")):
            axes[0].plot(c, [r[system]["p50_ms"] for r in sub], style, color=color, marker="o", label=f"{system} {label}")
            axes[1].plot(c, [r[system]["p99_ms"] for r in sub], style, color=color, marker="o", label=f"{system} {label}")
            axes[2].plot(c, [r[system]["throughput_rps"] for r in sub], style, color=color, marker="o",
                         label=f"{system} {label}")
    for ax, title in zip(axes, ("p50 latency (ms)", "p99 latency (ms)", "throughput (req/s)")):
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.set_xscale("log", base=2)
    axes[2].legend(fontsize=7)
    from bench.report import save

    save(fig, "overhead")


if __name__ == "__main__":
    main()
