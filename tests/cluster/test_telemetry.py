"""Traces and metrics end to end: the session's cluster exports spans to a real OTLP/HTTP
receiver in this process (set up by the standard OTEL_* variables only, see shared_cluster), and
its node's Ray metrics endpoint is scraped and parsed with prometheus_client.

One extra application, `obs` (2 ingress replicas, a short pool of 2 replicas and a long pool), so
its metrics are told apart from other tests' by Serve's `application` label.
"""

import json
import secrets
import time
from collections import Counter as Tally
from decimal import Decimal

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.shared_cluster import deploy_app

pytestmark = pytest.mark.cluster

APP = "obs"
MODEL = "magistral-small-2506"
CHAT = "/v1/chat/completions"
KEYS = {"alpha": "sk-obs-alpha", "beta": "sk-obs-beta", "tiny": "sk-obs-tiny"}
SHORT_MAX_PROMPT = 64  # tokens; longer prompts go to `long`


def headers(tenant: str, **extra) -> dict:
    return {"Authorization": f"Bearer {KEYS[tenant]}", **extra}


def chat(content: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture(scope="module")
def obs(local_cluster, ray_driver, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("obs")
    tenants = workdir / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": {
        "alpha": {"api_keys": [KEYS["alpha"]]},
        "beta": {"api_keys": [KEYS["beta"]]},
        "tiny": {"api_keys": [KEYS["tiny"]], "limits": {"requests_per_minute": 1}},
    }}))
    url = deploy_app(local_cluster, APP, {
        "tenants_file": str(tenants), "router_replicas": 2,
        "pools": [
            {"name": "short", "accelerator": "L40S-emulated", "max_model_len": 4096,
             "max_prompt_tokens": SHORT_MAX_PROMPT, "num_replicas": 2,
             "engine": {"kind": "stub", "prefill_tokens_per_s": 50_000, "decode_ms_per_token": 20}},
            {"name": "long", "accelerator": "H100-emulated", "max_model_len": 8192, "num_replicas": 1,
             "engine": {"kind": "stub", "prefill_tokens_per_s": 50_000, "decode_ms_per_token": 5}},
        ]})
    yield url


@pytest.fixture(scope="module")
def sent(obs, counter):
    """Every kind of request once; returns what the client saw of each."""
    out = {}
    client_trace, client_span = secrets.token_hex(16), secrets.token_hex(8)
    long_prompt = "word " * 200
    assert counter.count_chat(chat(long_prompt)["messages"]) > SHORT_MAX_PROMPT
    with httpx.Client(base_url=obs, timeout=60) as client:
        # 1. non-streamed, short pool, continuing the client's trace
        r = client.post(CHAT, headers=headers("alpha", traceparent=f"00-{client_trace}-{client_span}-01"),
                        json=chat("Name three birds.", max_tokens=12))
        out["plain"] = {"response": r, "client_trace": client_trace, "client_span": client_span}
        # 2. streamed, long pool (the prompt is too long for short), a new trace
        with client.stream("POST", CHAT, headers=headers("alpha"),
                           json=chat(long_prompt, max_tokens=10, stream=True,
                                     stream_options={"include_usage": True})) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: {")]
        out["stream"] = {"response": s, "usage": json.loads(lines[-1][6:])["usage"]}
        # 3. streamed and cancelled after a few chunks (the whole answer would take seconds)
        with client.stream("POST", CHAT, headers=headers("beta"), json=chat("Tell a long story.", stream=True)) as s:
            it = s.iter_lines()
            for _ in range(4):
                next(it)
        out["cancelled"] = {"response": s}
        # 4. tiny's second request in a minute: refused by its quota (after the pool was chosen)
        out["tiny_ok"] = {"response": client.post(CHAT, headers=headers("tiny"), json=chat("Hi.", max_tokens=4))}
        out["quota"] = {"response": client.post(CHAT, headers=headers("tiny"), json=chat("Hi.", max_tokens=4))}
        # 5. a prompt over the 40 960 cap: refused at admission, no pool
        out["cap"] = {"response": client.post(CHAT, headers=headers("alpha"), json=chat("hello " * 41_000))}
        # 6. a wrong key
        out["key"] = {"response": client.post(CHAT, headers={"Authorization": "Bearer sk-wrong"}, json=chat("Hi."))}
    statuses = {name: v["response"].status_code for name, v in out.items()}
    assert statuses == {"plain": 200, "stream": 200, "cancelled": 200, "tiny_ok": 200, "quota": 429,
                        "cap": 400, "key": 401}, statuses
    return out


# ---- traces ------------------------------------------------------------------------------------

def trace_of(receiver, trace_id: str, names: set[str], timeout_s: float = 30) -> dict[str, object]:
    """The trace's spans by name, once every name in `names` has arrived."""
    spans = receiver.wait_for(trace_id, lambda ss: names <= {s.name for s in ss}, timeout_s)
    got = {s.name: s for s in spans}
    assert names <= set(got), f"trace {trace_id}: wanted {sorted(names)}, got {sorted(got)}"
    assert len(spans) == len(got), f"a span name repeats: {[s.name for s in spans]}"
    return got


def roots(spans) -> list:
    ids = {s.span_id for s in spans}
    return [s for s in spans if s.parent_id is None or s.parent_id not in ids]


SERVER, ADMISSION, ROUTE, REPLICA = f"POST {CHAT}", "admission", "route", f"chat {MODEL}"
SERVED = {SERVER, ADMISSION, ROUTE, REPLICA}


def test_client_traceparent_is_continued_and_links_cross_processes(sent, otlp_receiver, ray_driver):
    import ray

    plain = sent["plain"]
    r = plain["response"]
    assert r.headers["x-trace-id"] == plain["client_trace"]
    spans = trace_of(otlp_receiver, plain["client_trace"], SERVED)
    server, admission, route, replica = (spans[n] for n in (SERVER, ADMISSION, ROUTE, REPLICA))
    assert roots(spans.values()) == [server]
    assert server.parent_id == plain["client_span"] and server.kind == "server"
    assert admission.parent_id == server.span_id and route.parent_id == server.span_id
    assert replica.parent_id == route.span_id and replica.kind == "server"
    # the replica span was made in the replica's own process
    assert replica.resource["magistral.component"] == "replica:short"
    assert server.resource["magistral.component"] == "ingress"
    assert replica.resource["process.pid"] != server.resource["process.pid"]
    # ...and names the replica, node and accelerator that served the request
    node_ids = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert replica.attributes["magistral.replica.id"] == r.headers["x-replica"]
    assert replica.attributes["magistral.ray.node_id"] in node_ids
    assert replica.attributes["magistral.accelerator.type"] == "L40S-emulated"
    usage = r.json()["usage"]
    assert replica.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert replica.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert replica.attributes["gen_ai.response.finish_reasons"] == [r.json()["choices"][0]["finish_reason"]]
    assert replica.attributes["gen_ai.response.time_to_first_chunk"] > 0
    # the server span: GenAI and tenancy attributes, the cost, and never the prompt text
    a = server.attributes
    assert (a["gen_ai.operation.name"], a["gen_ai.request.model"], a["magistral.tenant.id"]) == ("chat", MODEL, "alpha")
    assert a["http.response.status_code"] == 200 and a["http.route"] == CHAT
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert Decimal(a["magistral.cost_usd"]) == Decimal(r.headers["x-cost-usd"])
    assert not any("messages" in k for k in a), "prompt text must stay out of spans by default"
    assert all("Name three birds" not in json.dumps(s.attributes) for s in spans.values())


def test_routing_span_explains_the_pool_and_the_replica(sent, otlp_receiver):
    r = sent["plain"]["response"]
    route = trace_of(otlp_receiver, sent["plain"]["client_trace"], SERVED)[ROUTE]
    a = route.attributes
    assert a["magistral.pool"] == "short" and a["magistral.routing.reason"] == "preferred"
    assert a["magistral.routing.candidate_pools"] == ["short", "long"]
    assert len(a["magistral.routing.candidate_pools.outstanding_tokens"]) == 2
    candidates = a["magistral.routing.candidate_replicas"]
    scores = a["magistral.routing.candidate_replicas.outstanding_tokens"]
    assert len(candidates) == 2 and len(scores) == 2 and scores == sorted(scores)  # best first
    assert a["magistral.routing.chosen_replica"] == r.headers["x-replica"] in candidates
    assert a["magistral.routing.attempts"] >= 1


def test_admission_span_has_the_count_and_the_quota_decision(sent, otlp_receiver):
    admission = trace_of(otlp_receiver, sent["plain"]["client_trace"], SERVED)[ADMISSION].attributes
    assert admission["magistral.admission.context_cap"] == 40_960
    assert admission["magistral.quota.decision"] == "grant"
    assert admission["magistral.admission.max_tokens"] == 12
    assert isinstance(admission["magistral.admission.prompt_counted"], bool)


def test_streamed_request_gets_a_new_trace_with_one_root(sent, otlp_receiver):
    s = sent["stream"]["response"]
    spans = trace_of(otlp_receiver, s.headers["x-trace-id"], SERVED)
    assert [r.name for r in roots(spans.values())] == [SERVER]
    assert spans[SERVER].parent_id is None
    assert spans[REPLICA].resource["magistral.component"] == "replica:long"
    assert spans[REPLICA].attributes["magistral.accelerator.type"] == "H100-emulated"
    assert spans[REPLICA].attributes["magistral.replica.id"] == s.headers["x-replica"]
    assert spans[SERVER].attributes["gen_ai.usage.output_tokens"] == sent["stream"]["usage"]["completion_tokens"]
    assert spans[ROUTE].attributes["magistral.routing.candidate_pools"] == ["long"]


def test_cancelled_stream_ends_its_spans_with_an_error_status(sent, otlp_receiver):
    trace_id = sent["cancelled"]["response"].headers["x-trace-id"]
    spans = trace_of(otlp_receiver, trace_id, SERVED)
    for name in (SERVER, REPLICA):
        assert spans[name].status_code == 2 and "cancelled" in spans[name].status_message, name
    assert spans[SERVER].attributes["magistral.outcome"] == "cancelled"
    assert len(roots(spans.values())) == 1


def test_refused_requests_are_traced_without_reaching_a_replica(sent, otlp_receiver):
    quota = trace_of(otlp_receiver, sent["quota"]["response"].headers["x-trace-id"], {SERVER, ADMISSION})
    assert set(quota) == {SERVER, ADMISSION}
    assert quota[ADMISSION].attributes["magistral.quota.decision"] == "refuse"
    assert quota[ADMISSION].attributes["magistral.quota.limit"] == "requests_per_minute"
    assert quota[ADMISSION].status_code == 2
    assert quota[SERVER].attributes["http.response.status_code"] == 429
    assert quota[SERVER].attributes["error.type"] == "rate_limit_exceeded"
    cap = trace_of(otlp_receiver, sent["cap"]["response"].headers["x-trace-id"], {SERVER, ADMISSION})
    assert cap[SERVER].attributes["error.type"] == "context_length_exceeded"
    assert sent["key"]["response"].headers["x-trace-id"]  # even a 401 can be looked up


def test_ledger_row_leads_to_its_trace(sent, obs):
    r = sent["plain"]["response"]
    usage = httpx.get(f"{obs}/v1/usage", headers=headers("alpha"), params={"limit": 50}).json()
    row = next(d for d in usage["data"] if d["client_request_id"] == r.headers["x-request-id"])
    assert row["trace_id"] == sent["plain"]["client_trace"]


# ---- metrics -----------------------------------------------------------------------------------

def scrape(metrics_url: str) -> dict[str, Tally]:
    """Sample values of the obs app, summed over replicas (and Ray's per-process labels)."""
    text = httpx.get(metrics_url, timeout=10).text
    out: dict[str, Tally] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("ray_magistral_"):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("application") != APP:
                continue
            keep = tuple(sorted((k, v) for k, v in labels.items()
                                if k in ("tenant", "pool", "route", "status", "type", "reason", "le")))
            out.setdefault(sample.name, Tally())[keep] += sample.value
    return out


def by_pool(samples: Tally) -> dict[str, float]:
    out: Tally = Tally()
    for labels, value in samples.items():
        if ("route", CHAT) in labels:
            out[dict(labels)["pool"]] += value
    return dict(out)


def series(**labels) -> tuple:
    return tuple(sorted(labels.items()))


EXPECTED_REQUESTS = {
    series(tenant="alpha", pool="short", route=CHAT, status="200"): 1,
    series(tenant="alpha", pool="long", route=CHAT, status="200"): 1,
    series(tenant="beta", pool="short", route=CHAT, status="499"): 1,
    series(tenant="tiny", pool="short", route=CHAT, status="200"): 1,
    series(tenant="tiny", pool="short", route=CHAT, status="429"): 1,
    series(tenant="alpha", pool="none", route=CHAT, status="400"): 1,
    series(tenant="-", pool="none", route=CHAT, status="401"): 1,
}


def test_metrics_count_every_request_by_tenant_pool_and_status(sent, local_cluster, obs):
    url = local_cluster["metrics_url"]

    def chats(m) -> dict:  # other routes (the /v1/usage reads of other tests) are counted too
        return {k: v for k, v in m.get("ray_magistral_requests_total", {}).items() if ("route", CHAT) in k}

    deadline = time.monotonic() + 45  # workers report every 10 s
    while True:
        m = scrape(url)
        if chats(m) == EXPECTED_REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert chats(m) == EXPECTED_REQUESTS
    assert dict(m["ray_magistral_refusals_total"]) == {
        series(tenant="tiny", pool="short", reason="rate_limit_exceeded"): 1,
        series(tenant="alpha", pool="none", reason="context_length_exceeded"): 1,
        series(tenant="-", pool="none", reason="invalid_api_key"): 1,
    }
    assert dict(m["ray_magistral_routing_decisions_total"]) == {
        series(pool="short", reason="preferred"): 4, series(pool="long", reason="preferred"): 1}
    # tokens and cost equal the ledger's, tenant by tenant (the cancelled stream included)
    for tenant in ("alpha", "beta"):
        ledger = httpx.get(f"{obs}/v1/usage", headers=headers(tenant)).json()["totals"][0]
        tokens = m["ray_magistral_tokens_total"]
        got = {kind: sum(v for k, v in tokens.items() if dict(k)["tenant"] == tenant and dict(k)["type"] == kind)
               for kind in ("input", "output")}
        assert got == {"input": ledger["prompt_tokens"], "output": ledger["completion_tokens"]}, tenant
        cost = sum(v for k, v in m["ray_magistral_cost_usd_total"].items() if dict(k)["tenant"] == tenant)
        assert cost == pytest.approx(float(ledger["cost_usd"]), rel=1e-9)
    assert by_pool(m["ray_magistral_request_latency_seconds_count"]) == {"short": 4, "long": 1}
    assert by_pool(m["ray_magistral_time_to_first_token_seconds_count"]) == {"short": 3, "long": 1}


def test_replicas_report_their_load_per_pool(obs, local_cluster):
    m = scrape(local_cluster["metrics_url"])
    pools = {dict(k)["pool"] for k in m.get("ray_magistral_replica_outstanding_tokens", {})}
    assert pools == {"short", "long"}
