"""Quotas under concurrency on two ingress replicas, billing, the ledger and /v1/usage.

One extra application, `quota`: 2 ingress replicas sharing one ledger, one stub pool whose context
is only 48 tokens, so a request that leaves max_tokens unset generates exactly what it reserved
(the stub's text is longer than the room: finish_reason "length"). Then every limit admits a
number of requests that depends on the limit alone, not on timing, and the test derives it.
"""

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml
from ray import serve

from deployments.stub_text import stub_completion_text
from router.tenancy.directory import key_digest
from tests.shared_cluster import DEMO_KEY, deploy_app

pytestmark = pytest.mark.cluster

CONTEXT = 48
BURST = 200
PRICE_IN, PRICE_OUT = Decimal("0.5") / 1_000_000, Decimal("1.5") / 1_000_000  # deploy_app's prices
MESSAGES = [{"role": "user", "content": "Count the birds."}]
LIMITS = {
    "rpm": {"requests_per_minute": 37},
    "tpm": {"tokens_per_minute": 1000},
    "conc": {"max_concurrent_requests": 23},
    "daily": {"tokens_per_day": 2000},
    "money": {"usd_per_day": "0.0005"},
}


def key(tenant: str) -> str:
    return f"sk-test-{tenant}"


def tenants_yaml() -> dict:
    tenants = {name: {"api_key_sha256": [key_digest(key(name))], "limits": limits} for name, limits in LIMITS.items()}
    tenants["boss"] = {"api_keys": [key("boss")], "admin": True}
    tenants["plain"] = {"api_keys": [key("plain")]}
    tenants["narrow"] = {"api_keys": [key("narrow")], "allowed_pools": ["q"]}
    return {"tenants": tenants}


@pytest.fixture(scope="module")
def quota_app(local_cluster, ray_driver, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quota")
    tenants = workdir / "tenants.yaml"
    tenants.write_text(yaml.safe_dump(tenants_yaml()))
    url = deploy_app(local_cluster, "quota", {
        "tenants_file": str(tenants), "router_replicas": 2, "tenants_reload_s": 0.5,
        "pools": [{"name": "q", "max_model_len": CONTEXT, "num_replicas": 1, "max_ongoing_requests": 256,
                   "engine": {"kind": "stub", "prefill_tokens_per_s": 50_000, "decode_ms_per_token": 200}},
                  # After q: only what q cannot hold comes here.
                  {"name": "big", "max_model_len": 4096, "num_replicas": 1,
                   "engine": {"kind": "stub", "prefill_tokens_per_s": 50_000, "decode_ms_per_token": 1}}],
    })
    yield {"url": url, "tenants": tenants}
    serve.delete("quota")


@pytest.fixture(scope="module")
def prompt_tokens(counter) -> int:
    prompt = counter.count_chat(MESSAGES)
    stub = counter.encode_text(stub_completion_text(MESSAGES[-1]["content"], "q"), bos=False)
    assert len(stub) > CONTEXT - prompt, "the stub must have more to say than the context leaves"
    return prompt


async def burst(url: str, api_key: str, n: int = BURST, body: dict | None = None) -> list[httpx.Response]:
    payload = body or {"model": "magistral-small-2506", "messages": MESSAGES}
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return await asyncio.gather(*(
            client.post(f"{url}/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {api_key}"})
            for _ in range(n)))


def usage_of(url: str, tenant: str) -> dict:
    resp = httpx.get(f"{url}/v1/usage", params={"tenant": tenant, "limit": 1000},
                     headers={"Authorization": f"Bearer {key('boss')}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return json.loads(resp.text, parse_float=Decimal)


def check_burst(url: str, tenant: str, responses: list[httpx.Response], expected_admitted: int) -> list[dict]:
    """Exactly `expected_admitted` served; the rest refused with OpenAI's 429; the ledger and
    /v1/usage agree with the usage the clients saw, to the token and the cent."""
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(served) + len(refused) == len(responses), {r.status_code for r in responses}
    assert len(served) == expected_admitted
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] in ("rate_limit_exceeded", "insufficient_quota")
    usages = [json.loads(r.text, parse_float=Decimal)["usage"] for r in served]
    for r, u in zip(served, usages):
        assert Decimal(r.headers["x-cost-usd"]) == u["cost_usd"]
        expected_cost = u["prompt_tokens"] * PRICE_IN + u["completion_tokens"] * PRICE_OUT
        assert u["cost_usd"] == expected_cost
    report = usage_of(url, tenant)
    (totals,) = report["totals"]
    assert totals["by_status"].get("completed", 0) == len(served)
    assert totals["by_status"].get("refused", 0) == len(refused)
    assert totals["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
    assert totals["completion_tokens"] == sum(u["completion_tokens"] for u in usages)
    assert totals["cost_usd"] == sum((u["cost_usd"] for u in usages), Decimal(0))
    return usages


def token_budget_admits(budget: int, prompt: int) -> int:
    """Whole requests of CONTEXT tokens, plus one clamped to what is left if that holds a token."""
    whole, left = divmod(budget, CONTEXT)
    return whole + (1 if left - prompt >= 1 else 0)


def test_requests_per_minute_admit_exactly_the_limit(quota_app):
    responses = asyncio.run(burst(quota_app["url"], key("rpm")))
    check_burst(quota_app["url"], "rpm", responses, 37)
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "37"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_concurrency_limit_admits_exactly_the_limit(quota_app):
    # Each admitted request runs ~7 s: all 200 arrive while the first 23 still run.
    responses = asyncio.run(burst(quota_app["url"], key("conc")))
    check_burst(quota_app["url"], "conc", responses, 23)


def test_tokens_per_minute_admit_exactly_what_fits(quota_app, prompt_tokens):
    responses = asyncio.run(burst(quota_app["url"], key("tpm")))
    usages = check_burst(quota_app["url"], "tpm", responses, token_budget_admits(1000, prompt_tokens))
    assert sum(u["total_tokens"] for u in usages) <= 1000
    assert sorted(u["total_tokens"] for u in usages)[0] == 1000 % CONTEXT  # the clamped one
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["x-ratelimit-limit-tokens"] == "1000"


def test_token_budget_admits_exactly_what_fits(quota_app, prompt_tokens):
    responses = asyncio.run(burst(quota_app["url"], key("daily")))
    usages = check_burst(quota_app["url"], "daily", responses, token_budget_admits(2000, prompt_tokens))
    assert sum(u["total_tokens"] for u in usages) == 2000  # every token of the budget, none more
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "insufficient_quota"
    # The budget stays spent: one more request is refused too.
    again = asyncio.run(burst(quota_app["url"], key("daily"), n=1))[0]
    assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota"


def test_money_budget_admits_exactly_what_it_pays_for(quota_app, prompt_tokens):
    budget = Decimal(LIMITS["money"]["usd_per_day"])
    whole_cost = prompt_tokens * PRICE_IN + (CONTEXT - prompt_tokens) * PRICE_OUT
    whole = int(budget // whole_cost)
    left = budget - whole * whole_cost
    extra = int((left - prompt_tokens * PRICE_IN) // PRICE_OUT) >= 1
    responses = asyncio.run(burst(quota_app["url"], key("money")))
    usages = check_burst(quota_app["url"], "money", responses, whole + extra)
    assert sum((u["cost_usd"] for u in usages), Decimal(0)) <= budget


def test_explicit_max_tokens_over_the_budget_is_refused_not_clamped(quota_app, prompt_tokens):
    body = {"model": "magistral-small-2506", "messages": MESSAGES, "max_tokens": 10}
    resp = asyncio.run(burst(quota_app["url"], key("daily"), n=1, body=body))[0]
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "insufficient_quota"
    assert "this request needs" in resp.json()["error"]["message"]


def test_stream_usage_carries_the_cost_and_the_ledger_agrees(quota_app):
    url = quota_app["url"]
    body = {"model": "magistral-small-2506", "messages": MESSAGES, "stream": True, "max_tokens": 5,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key('plain')}"}) as resp:
        assert resp.status_code == 200
        chunks = [json.loads(line[6:], parse_float=Decimal) for line in resp.iter_lines()
                  if line.startswith("data: {")]
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["cost_usd"] == usage["prompt_tokens"] * PRICE_IN + 5 * PRICE_OUT
    (totals,) = usage_of(url, "plain")["totals"]
    assert totals["cost_usd"] >= usage["cost_usd"]


def test_cancelled_stream_is_billed_the_tokens_delivered(quota_app, ray_driver):
    """Read until the stream says N completion tokens were delivered, hang up: the ledger bills
    exactly N plus the prompt, and the replica stops within a second."""
    url, n = quota_app["url"], 6
    body = {"model": "magistral-small-2506", "messages": [{"role": "user", "content": "cancel me"}],
            "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    headers = {"Authorization": f"Bearer {key('plain')}", "x-request-id": "cancel-me-1"}
    seen = None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    seen = chunk["usage"]
                    if seen["completion_tokens"] >= n:
                        break
    hung_up = time.monotonic()
    pool = serve.get_deployment_handle("pool-q", app_name="quota")  # one replica
    while time.monotonic() - hung_up < 1.0 and pool.stats.remote().result()["ongoing_requests"]:
        time.sleep(0.05)
    stopped_after = time.monotonic() - hung_up
    row = None
    deadline = time.monotonic() + 10
    while row is None and time.monotonic() < deadline:
        rows = usage_of(url, "plain")["data"]
        row = next((r for r in rows if r["client_request_id"] == "cancel-me-1"), None)
        time.sleep(0.1)
    assert row is not None, "the cancelled request has no ledger row"
    assert row["status"] == "cancelled"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (seen["prompt_tokens"], seen["completion_tokens"])
    assert Decimal(str(row["cost_usd"])) == seen["prompt_tokens"] * PRICE_IN + seen["completion_tokens"] * PRICE_OUT
    assert stopped_after < 1.0, f"the replica still ran {stopped_after:.2f} s after the hang-up"


def test_usage_is_private_to_the_tenant_unless_admin(quota_app):
    url = quota_app["url"]
    mine = httpx.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {key('plain')}"}, timeout=30)
    assert mine.status_code == 200 and mine.json()["tenant"] == "plain"
    assert {t["tenant"] for t in mine.json()["totals"]} <= {"plain"}
    other = httpx.get(f"{url}/v1/usage", params={"tenant": "rpm"}, timeout=30,
                      headers={"Authorization": f"Bearer {key('plain')}"})
    assert other.status_code == 403 and other.json()["error"]["type"] == "permission_denied"
    everyone = httpx.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {key('boss')}"}, timeout=30)
    assert everyone.status_code == 200 and everyone.json()["tenant"] is None
    bad = httpx.get(f"{url}/v1/usage", params={"from": "yesterday-ish"}, timeout=30,
                    headers={"Authorization": f"Bearer {key('plain')}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "from"
    future = httpx.get(f"{url}/v1/usage", params={"from": "2100-01-01"}, timeout=30,
                       headers={"Authorization": f"Bearer {key('plain')}"})
    assert future.status_code == 200 and future.json()["data"] == [] and future.json()["totals"] == []


def test_new_and_rotated_keys_and_limits_apply_without_redeploy(quota_app):
    url, path = quota_app["url"], Path(quota_app["tenants"])
    data = tenants_yaml()
    data["tenants"]["late"] = {"api_keys": ["sk-test-late-1"], "limits": {"requests_per_minute": 1}}
    path.write_text(yaml.safe_dump(data))

    def status(api_key: str) -> int:
        body = {"model": "magistral-small-2506", "messages": MESSAGES, "max_tokens": 1}
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {api_key}"}).status_code

    def eventually(api_key: str, want: int) -> float:
        started = time.monotonic()
        while time.monotonic() - started < 5:
            if status(api_key) == want:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"{api_key[:10]}... never answered {want}")

    # Each ingress replica reloads on its own: a key works once both have (within the bound).
    eventually("sk-test-late-1", 200)
    eventually("sk-test-late-1", 429)  # its limit is in force too (1 per minute)
    data["tenants"]["late"]["api_keys"] = ["sk-test-late-2"]  # rotate
    path.write_text(yaml.safe_dump(data))
    took = eventually("sk-test-late-1", 401)
    assert took < 2.0  # reload bound 0.5 s, per ingress replica
    eventually("sk-test-late-2", 429)  # same tenant, same spent minute
    time.sleep(1.0)  # twice the reload bound: every replica has the rotation now
    assert all(status("sk-test-late-1") == 401 for _ in range(6)), "the old key still works on some replica"


def test_keys_never_reach_logs_or_ledger(quota_app, local_cluster, ray_driver):
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    secrets = [DEMO_KEY, "sk-local-limited", *(key(t) for t in tenants_yaml()["tenants"])]
    found = []
    ledger = Path(local_cluster["ledger_url"][len("sqlite:///"):])
    for path in list((session / "logs").rglob("*")) + list(ledger.parent.glob(ledger.name + "*")):
        if path.is_file():
            data = path.read_bytes()
            found += [(str(path), s) for s in secrets if s.encode() in data]
    assert not found


def test_local_limited_tenant_hits_its_limit(base_url):
    """configs/tenants.yaml's `limited` (5 requests per minute) on the default application."""
    body = {"model": "magistral-small-2506", "messages": MESSAGES, "max_tokens": 3}
    headers = {"Authorization": "Bearer sk-local-limited"}
    with httpx.Client(timeout=60) as client:
        statuses = [client.post(f"{base_url}/chat/completions", json=body, headers=headers) for _ in range(6)]
    assert [r.status_code for r in statuses] == [200] * 5 + [429]
    refused = statuses[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "5" and int(refused.headers["retry-after"]) >= 1
    assert statuses[0].headers["x-ratelimit-remaining-requests"] == "4"


def test_a_request_the_tenants_pools_cannot_hold_is_a_context_overflow(quota_app, counter):
    """`narrow` may use only q (48 tokens): what needs the bigger pool is refused like any
    context overflow, while a tenant allowed every pool is served by it."""
    from tests.conftest import user_prompt_with_tokens

    body = {"model": "magistral-small-2506", "messages": user_prompt_with_tokens(counter, 100), "max_tokens": 5}
    url = quota_app["url"]
    narrow = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60,
                        headers={"Authorization": f"Bearer {key('narrow')}"})
    assert narrow.status_code == 400 and narrow.json()["error"]["code"] == "context_length_exceeded"
    assert "48 tokens" in narrow.json()["error"]["message"] and "100 tokens" in narrow.json()["error"]["message"]
    plain = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60,
                       headers={"Authorization": f"Bearer {key('plain')}"})
    assert plain.status_code == 200 and plain.headers["x-pool"] == "big"
