"""One local Ray cluster per test session (fixtures for tests/cluster and tests/integration),
started the way `make run` starts it.

The launcher runs as a subprocess (`python -m cluster.local run configs/local.yaml`); teardown
sends it Ctrl-C and then checks that every process it had started is gone.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.otlp_receiver import OTLPReceiver
from tests.processes import alive, free_port

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300
DEMO_KEY = "sk-local-demo"



def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found



@pytest.fixture(scope="session")
def otlp_receiver():
    """The OTLP/HTTP receiver every process of the session's cluster exports its spans to."""
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory, otlp_receiver):
    port = free_port()
    metrics_port = free_port()
    workdir = tmp_path_factory.mktemp("cluster")
    log_path = workdir / "launcher.log"
    # A ledger of this test session's own: a budget spent by an earlier run must not refuse ours.
    ledger_url = f"sqlite:///{workdir / 'ledger.db'}"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        # 4 logical CPUs: a vLLM CPU replica (tests/integration) reserves 2.
        [sys.executable, "-m", "cluster.local", "run", "configs/local.yaml", "--port", str(port), "--num-cpus", "4",
         "--metrics-port", str(metrics_port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        # Tracing is set up by the standard variables only, as a user would; spans leave in
        # batches every 200 ms instead of 5 s so tests see them soon.
        env={**os.environ, "LEDGER_URL": ledger_url, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
             "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "200"},
    )
    ready: dict = {}
    got_ready = threading.Event()

    def pump():
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if line.startswith("READY "):
                ready.update(json.loads(line[6:]))
                got_ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not got_ready.wait(1) and proc.poll() is None and time.monotonic() < deadline:
        pass
    if not ready:
        proc.kill()
        pytest.fail(f"local cluster did not start; log: {log_path}\n{log_path.read_text()[-4000:]}")
    ready["port"] = port
    ready["ledger_url"] = ledger_url
    ready["workdir"] = workdir
    ready["root_url"] = f"http://127.0.0.1:{port}"
    try:
        yield ready
    finally:
        started = _descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("launcher did not stop within 120 s of Ctrl-C")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p in started):
            time.sleep(0.5)
        left = sorted(p for p in started if alive(p))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind by the local cluster: {left}"


@pytest.fixture(scope="session")
def ray_driver(local_cluster):
    """This test process connected to the shared cluster (for handles and extra test apps)."""
    import ray

    ray.init(address=local_cluster["ray_address"], logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def base_url(local_cluster) -> str:
    return local_cluster["base_url"]


@pytest.fixture(scope="session")
def auth() -> dict:
    return {"Authorization": f"Bearer {DEMO_KEY}"}


def deploy_app(local_cluster: dict, name: str, args: dict, timeout_s: float = 180) -> str:
    """Deploy cluster.app:build_app(args) as an extra application at /<name>; wait for /health.

    Needs the `ray_driver` fixture. Returns the application's root URL. Unless `args` say
    otherwise, the application shares the session's ledger and prices its pools at the local
    short pool's prices.
    """
    from ray import serve

    from cluster.local import wait_for_health
    from cluster.app import build_app

    args = {"ledger_url": local_cluster["ledger_url"], **args}
    if "prices_file" not in args:
        prices = Path(local_cluster["workdir"]) / f"prices-{name}.yaml"
        pools = {p["name"]: {"input": 0.5, "output": 1.5} for p in args["pools"]}
        prices.write_text(json.dumps({"default_tier": "standard", "tiers": {"standard": pools}}))
        args["prices_file"] = str(prices)
    started = time.monotonic()
    serve.run(build_app(args), name=name, route_prefix=f"/{name}", blocking=False)
    url = f"{local_cluster['root_url']}/{name}"
    try:
        wait_for_health(f"{url}/health", timeout_s)
    except TimeoutError as exc:
        pytest.fail(f"application {name!r}: {exc}")
    print(f"\napplication {name!r} healthy {time.monotonic() - started:.0f} s after deploy")
    return url


@pytest.fixture(scope="session")
def postgres_app(local_cluster, ray_driver, postgres_server) -> str:
    """An extra application `pg` with the local tenants (the demo key, an admin) whose quotas and
    ledger are on the session's PostgreSQL server: for the edge and fuzz tests that must hold on
    both stores. One ingress and one small stub pool. Returns its root URL."""
    from tests.postgres import create_database

    return deploy_app(local_cluster, "pg", {
        "ledger_url": create_database(postgres_server, "edge_ledger"),
        "tenants_file": str(ROOT / "configs" / "tenants.yaml"), "router_replicas": 1,
        "pools": [{"name": "short", "max_model_len": 4096, "num_replicas": 1,
                   "engine": {"kind": "stub", "prefill_tokens_per_s": 50_000, "decode_ms_per_token": 2}}]})


async def first_token_at(client: httpx.AsyncClient, url: str, headers: dict, body: dict) -> float:
    """When the first generated token of a streamed chat arrived (monotonic)."""
    async with client.stream("POST", f"{url}/v1/chat/completions", headers=headers,
                             json={**body, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[len("data: "):]).get("choices") or [{}]
            delta = choices[0].get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                return time.monotonic()
    raise AssertionError("no token")
