"""Priority tiers on a live cluster: a pool whose engine schedules by priority serves a waiting
`interactive` request before waiting `standard` and `batch` ones, whatever their arrival order
(the stub's engine model does what vLLM's scheduler does under `scheduling_policy: priority`)."""

import asyncio

import httpx
import pytest
from ray import serve

from tests.conftest import user_prompt_with_tokens
from tests.shared_cluster import deploy_app, first_token_at

pytestmark = pytest.mark.cluster
MODEL = "magistral-small-2506"
INTERACTIVE = {"Authorization": "Bearer sk-local-interactive"}


def tiers_args(scheduling: str) -> dict:
    return {"tenants_file": "configs/tenants.yaml", "routing": "length_spill",
            "pools": [{"name": "one", "max_model_len": 40_960, "num_replicas": 1, "max_ongoing_requests": 64,
                       "engine": {"kind": "stub", "gpu": "L40S_TP2", "time_scale": 4,
                                  "scheduling_policy": scheduling}}]}


@pytest.fixture(scope="module")
def apps(local_cluster, ray_driver):
    urls = {s: deploy_app(local_cluster, f"tiers-{s}", tiers_args(s)) for s in ("priority", "fcfs")}
    yield urls
    for s in urls:
        serve.delete(f"tiers-{s}")


async def order_behind_a_backlog(url: str, auth: dict, counter) -> list[str]:
    """12 documents (standard) fill the engine's queue; then a `batch` chat, then an `interactive`
    one: the order their first tokens come in."""
    document = {"model": MODEL, "messages": user_prompt_with_tokens(counter, 8_000), "max_tokens": 4}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    async with httpx.AsyncClient(timeout=120) as client:
        backlog = [asyncio.create_task(first_token_at(client, url, auth, document)) for _ in range(12)]
        await asyncio.sleep(0.5)  # the documents are in the engine's queue
        batch = asyncio.create_task(first_token_at(client, url, auth, {**chat, "service_tier": "flex"}))
        await asyncio.sleep(0.2)
        interactive = asyncio.create_task(first_token_at(client, url, INTERACTIVE, chat))
        times = {"batch": await batch, "interactive": await interactive,
                 "last document": max(await asyncio.gather(*backlog))}
    return sorted(times, key=times.get)


def test_an_interactive_request_overtakes_a_standard_backlog_and_a_batch_request(apps, auth, counter):
    # Under fcfs the engine serves in arrival order: the backlog, then batch, then interactive.
    assert asyncio.run(order_behind_a_backlog(apps["fcfs"], auth, counter)) == ["last document", "batch", "interactive"]
    # Under priority: interactive first, then the standard backlog, batch last.
    assert asyncio.run(order_behind_a_backlog(apps["priority"], auth, counter)) == ["interactive", "last document", "batch"]
