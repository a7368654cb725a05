"""Local cluster helper: a Ray head owned by this process, the serve config deployed on it.

    python -m cluster.local run configs/local.yaml [--port 8000]

Starts a local Ray head (in this process, so it goes away with it), deploys every application of
the serve config, waits for GET /health, prints the endpoint and the demo key, and stays in the
foreground until Ctrl-C (or SIGTERM), then shuts Serve and Ray down. Prints one machine-readable
line `READY <json>` for scripts and tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import yaml

from common.telemetry.otel_setup import forwarded_env

DEMO_KEY = "sk-local-demo"
# How HTTP reaches the ingress replicas. "proxy" (default): Serve's Python proxy actor.
# "haproxy": Ray Serve 2.60's HAProxy mode (the bundled binary on the HTTP port, least-connections
# over each ingress replica's own HTTP server): about twice the proxy's throughput on this 2-core
# machine (bench/overhead.py), but two of our guarantees fail under it (docs/performance.md, ingress modes): a
# client's hang-up reaches the ingress late, so a cancelled stream is billed tokens the client
# never saw, and killing one ingress replica cut every in-flight stream, the other replica's too.
INGRESS_MODES = ("proxy", "haproxy")


def ingress_env(mode: str) -> dict[str, str]:
    """Environment that selects the ingress mode. Serve reads it once per process at import, so it
    must be in os.environ before `ray.serve` is imported and before the Ray head starts."""
    if mode == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    if mode != "haproxy":
        raise ValueError(f"ingress mode must be one of {INGRESS_MODES}, not {mode!r}")
    # Serve's fixed defaults (8500, 9500, 8404, 9101) would collide between two local clusters.
    ports = free_ports(4)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports[0]),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(ports[1]),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(ports[2]),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports[3]),
        # An ingress replica drains for 30 s by default before it stops: a local Ctrl-C or a
        # test's redeploy should not wait that long.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }


def free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _log(message: str) -> None:
    print(f"[cluster.local] {message}", flush=True)


def load_serve_config(path: str) -> dict[str, Any]:
    from ray.serve.schema import ServeDeploySchema

    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    ServeDeploySchema.model_validate(raw)  # the same check `serve run` makes
    return raw


def build_application(app_spec: dict[str, Any]):
    """Import `module:attr`; call it with `args` when it is a builder function."""
    module_name, _, attr = app_spec["import_path"].partition(":")
    target = getattr(importlib.import_module(module_name), attr)
    from ray.serve import Application

    if isinstance(target, Application):
        return target
    return target(app_spec.get("args") or {})


def wait_for_health(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s ({last})")


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """What every Ray worker of the local cluster inherits: the ledger and tenancy overrides and
    the standard OTEL_* variables (tracing in the ingress and in every replica), and Serve's own
    RAY_SERVE_* settings (the ingress mode: every Serve process must agree on it)."""
    return {**{k: env[k] for k in ("TENANTS_FILE", "PRICES_FILE", "LEDGER_URL") if k in env},
            **{k: v for k, v in env.items() if k.startswith("RAY_SERVE_")},
            **forwarded_env(env)}


def run(config_path: str, port: int | None, num_cpus: int | None, health_timeout_s: float,
        metrics_port: int | None = None, ingress: str = "proxy") -> int:
    os.environ.update(ingress_env(ingress))  # before Serve is imported: it reads them at import
    import ray
    from ray import serve

    config = load_serve_config(config_path)
    http = dict(config.get("http_options") or {})
    if port is not None:
        http["port"] = port
    host, http_port = http.get("host", "127.0.0.1"), http.get("port", 8000)

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # SIGTERM stops as cleanly as Ctrl-C

    try:
        _log("starting a local Ray head")
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING",
                 _metrics_export_port=metrics_port, runtime_env={"env_vars": worker_env(os.environ)})
        # controller_options as `serve run` applies them: the proxies' header policy is set there.
        serve.start(http_options={"host": host, "port": http_port}, proxy_location=config.get("proxy_location", "HeadOnly"),
                    controller_options=config.get("controller_options"))
        for app_spec in config["applications"]:
            _log(f"deploying application {app_spec['name']!r} from {config_path}")
            serve.run(build_application(app_spec), name=app_spec["name"],
                      route_prefix=app_spec.get("route_prefix", "/"), blocking=False)
        base = f"http://{host}:{http_port}"
        _log(f"waiting for {base}/health")
        wait_for_health(f"{base}/health", health_timeout_s)
        node = ray._private.worker.global_worker.node
        metrics_url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
        info = {"base_url": f"{base}/v1", "health": f"{base}/health", "api_key": DEMO_KEY, "ingress": ingress,
                "ray_address": ray.get_runtime_context().gcs_address, "metrics_url": metrics_url}
        traces = forwarded_env(os.environ).get("OTEL_EXPORTER_OTLP_ENDPOINT") or \
            forwarded_env(os.environ).get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "off (set OTEL_EXPORTER_OTLP_ENDPOINT)"
        print(f"\nServing Magistral router at {info['base_url']}\n"
              f"  demo API key: {DEMO_KEY}  (limits you can hit: sk-local-limited, 5 requests/min, 2 000 tokens/day)\n"
              f"  try: curl {base}/v1/models -H 'Authorization: Bearer {DEMO_KEY}'\n"
              f"  metrics (this node's Ray metrics agent, Prometheus format): {metrics_url}\n"
              f"  traces (OTLP): {traces}\n"
              "  Ctrl-C stops Serve and the local Ray head.\n", flush=True)
        print("READY " + json.dumps(info), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, at any point, startup included
        _log("stopping")
        return 0
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave Ray processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
        _log("stopped Serve and the local Ray head")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="start a local head, deploy a serve config, stay in the foreground")
    run_p.add_argument("config", help="serve config, e.g. configs/local.yaml")
    run_p.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's)")
    run_p.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default: all)")
    run_p.add_argument("--health-timeout", type=float, default=180.0, help="seconds to wait for /health")
    run_p.add_argument("--ingress", choices=INGRESS_MODES, default="proxy",
                       help="HTTP path to the ingress replicas (default: Serve's proxy; see docs/performance.md)")
    run_p.add_argument("--metrics-port", type=int, default=None,
                       help="port of this node's Prometheus metrics endpoint (default: Ray picks one)")
    args = parser.parse_args(argv)
    try:
        return run(args.config, args.port, args.num_cpus, args.health_timeout, args.metrics_port, args.ingress)
    except (FileNotFoundError, TimeoutError, ValueError) as exc:
        print(f"[cluster.local] error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
