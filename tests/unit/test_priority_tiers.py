"""Priority tiers from the tenants file and the request: the tier a request runs at, and what a
replica is told (GenerateRequest.priority, vLLM's: lower first)."""

import pytest
from pydantic import ValidationError

from common.config import StubEngine
from router.fairness.tiers import Tier
from router.pipeline.context import RequestContext
from router.tenancy.directory import TenantDirectory
from router.wire.anthropic.models import MessagesRequest
from router.wire.openai.models import ChatCompletionRequest

MODEL = "magistral-small-2506"


def tenants() -> TenantDirectory:
    return TenantDirectory.from_dict({"tenants": {
        "ops": {"api_keys": ["k-ops"], "priority": "Interactive"},
        "plain": {"api_keys": ["k-plain"]},
        "nightly": {"api_keys": ["k-nightly"], "priority": "batch"},
    }})


def test_a_tenant_has_a_priority_tier_standard_by_default():
    d = tenants()
    assert [d.tenants[n].priority for n in ("ops", "plain", "nightly")] == [Tier.INTERACTIVE, Tier.STANDARD, Tier.BATCH]
    with pytest.raises(ValidationError, match="interactive, standard, batch"):
        TenantDirectory.from_dict({"tenants": {"x": {"api_keys": ["k"], "priority": "urgent"}}})


def chat_context(tenant: str, **body) -> RequestContext:
    request = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body})
    return RequestContext.of(request, request_id="r", kind="chat", tenant=tenants().tenants[tenant], trace=None,
                             default_sampling={}, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("tenant, service_tier, tier", [
    ("plain", None, Tier.STANDARD),
    ("plain", "flex", Tier.BATCH),  # a lower tier may be asked for
    ("plain", "priority", Tier.STANDARD),  # a higher one is not granted (and not an error)
    ("ops", "priority", Tier.INTERACTIVE),
    ("ops", "default", Tier.INTERACTIVE),
    ("ops", "flex", Tier.BATCH),
    ("nightly", "priority", Tier.BATCH),
])
def test_openai_service_tier_asks_for_a_tier_never_above_the_tenants(tenant, service_tier, tier):
    ctx = chat_context(tenant, **({"service_tier": service_tier} if service_tier else {}))
    assert ctx.tier is tier
    assert ctx.span_attributes(MODEL, {})["magistral.request.tier"] == tier.label


def test_an_unknown_service_tier_is_a_validation_error():
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": MODEL, "messages": [], "service_tier": "urgent"})


def test_anthropic_service_tier_runs_at_the_tenants_tier():
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert MessagesRequest.model_validate({**body, "service_tier": "standard_only"}).asked_tier() is None
    with pytest.raises(ValidationError):
        MessagesRequest.model_validate({**body, "service_tier": "priority"})


def test_the_stub_engine_schedules_by_priority_only_with_an_engine_model():
    assert StubEngine(gpu="L40S_TP2", scheduling_policy="priority").replica_kwargs()["scheduling_policy"] == "priority"
    with pytest.raises(ValidationError, match="scheduling_policy"):
        StubEngine(scheduling_policy="priority")
