"""What the router adds to a request's latency, side by side in one run.

    .venv/bin/python -m bench.router_overhead [--requests 200] [--tracing both|off|on]

Starts a local Ray head (owned by this process), deploys one stub pool with no emulated delay,
and times the same one-token chat request four ways, sequentially:
  handle        DeploymentHandle straight to the pool (no HTTP)
  serve-http    HTTP -> Serve proxy -> a bare FastAPI ingress that forwards to the pool: what
                any Serve HTTP front end costs, with none of the router's work
  router        HTTP -> Serve proxy -> the router (auth, byte bound, template check, cap, pool
                choice, quota reservation and settlement in the ledger, TokenLoadRouter,
                OpenAI body) -> pool
  router+count  the same with a ~2 000-token prompt, which the router must count exactly
Prints p50 / p95 in ms; the router's own cost is `router - serve-http`. With `--tracing both`
(the default) the whole measurement runs twice in one invocation, on a fresh Ray head each time:
without OTEL_* variables (no spans recorded) and with every process exporting its spans over
OTLP/HTTP to a receiver in this process (batched, as in production); it checks the spans arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import httpx

ARGS = {
    "tenants_file": "configs/tenants.yaml",  # demo: a requests-per-minute limit, so quotas run
    "pools": [{"name": "fast", "max_model_len": 40_960, "max_prompt_tokens": 40_000,
               "engine": {"kind": "stub", "prefill_tokens_per_s": 1e12, "decode_ms_per_token": 0}}],
}
PORT = 8137


def bare_ingress(pool):
    """A FastAPI ingress that forwards to the pool and answers, with no router logic."""
    from fastapi import FastAPI
    from ray import serve

    from deployments.protocol import GenerateRequest

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Bare:
        def __init__(self, pool_handle):
            self._pool = pool_handle

        @app.post("/v1/chat/completions")
        async def chat(self, body: dict) -> dict:
            request = GenerateRequest(request_id="b", kind="chat", context_limit=40_960,
                                      messages=body["messages"], prompt_tokens=4, max_tokens=1)
            events = [e async for e in self._pool.options(stream=True).generate.remote(request)]
            return {"events": len(events)}

    return Bare.bind(pool)


def pct(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1e3


async def time_handle(handle, n: int) -> list[float]:
    from deployments.protocol import GenerateRequest

    samples = []
    for i in range(n):
        request = GenerateRequest(request_id=f"h{i}", kind="chat", context_limit=40_960,
                                  messages=[{"role": "user", "content": "hi"}], prompt_tokens=4, max_tokens=1)
        t = time.perf_counter()
        async for _ in handle.options(stream=True).generate.remote(request):
            pass
        samples.append(time.perf_counter() - t)
    return samples


def time_http(content: str, n: int, prefix: str = "") -> list[float]:
    body = {"model": "magistral-small-2506", "messages": [{"role": "user", "content": content}], "max_tokens": 1}
    samples = []
    with httpx.Client(base_url=f"http://127.0.0.1:{PORT}{prefix}", headers={"Authorization": "Bearer sk-local-demo"}) as client:
        for _ in range(n):
            t = time.perf_counter()
            client.post("/v1/chat/completions", json=body).raise_for_status()
            samples.append(time.perf_counter() - t)
    return samples


def measure(n: int, worker_env: dict[str, str]) -> dict[str, list[float]]:
    import ray
    from ray import serve

    from cluster.local import wait_for_health
    from router.app import build_app

    folder = tempfile.mkdtemp(prefix="router-overhead-")
    prices = os.path.join(folder, "prices.yaml")
    with open(prices, "w") as f:
        f.write('{"tiers": {"standard": {"fast": {"input": 0.5, "output": 1.5}}}}')
    args = {**ARGS, "prices_file": prices, "ledger_url": f"sqlite:///{folder}/ledger.db"}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": worker_env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(build_app(args), name="bench", route_prefix="/", blocking=False)
        wait_for_health(f"http://127.0.0.1:{PORT}/health", 180)
        handle = serve.get_deployment_handle("pool-fast", app_name="bench")
        serve.run(bare_ingress(handle), name="bare", route_prefix="/bare", blocking=False)
        time_http("warm up", 20)
        time_http("warm up", 20, "/bare")
        asyncio.run(time_handle(handle, 20))
        results = {
            "handle": asyncio.run(time_handle(handle, n)),
            "serve-http": time_http("hi", n, "/bare"),
            "router": time_http("hi", n),
            "router+count": time_http("word " * 2_000, n),
        }
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def report(title: str, n: int, results: dict[str, list[float]]) -> None:
    base = statistics.median(results["serve-http"]) * 1e3
    print(f"\n{title}: {n} sequential one-token requests each")
    print(f"{'path':>13} {'p50 ms':>8} {'p95 ms':>8} {'p50 - serve-http p50':>21}")
    for name, samples in results.items():
        print(f"{name:>13} {pct(samples, 0.5):>8.2f} {pct(samples, 0.95):>8.2f} {pct(samples, 0.5) - base:>21.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tracing", choices=("both", "off", "on"), default="both")
    args = parser.parse_args()
    n = args.requests
    if args.tracing in ("both", "off"):
        report("tracing off (no OTEL_* variables)", n, measure(n, {}))
    if args.tracing in ("both", "on"):
        from tests.otlp_receiver import OTLPReceiver

        with OTLPReceiver() as receiver:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "1000"}
            results = measure(n, env)
            time.sleep(2)
            report(f"tracing on (OTLP/HTTP to {receiver.endpoint}, {len(receiver.spans)} spans received)", n, results)


if __name__ == "__main__":
    main()
