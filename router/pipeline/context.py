"""One generation request as the pipeline sees it, built once at the edge from either API's body.

Everything the stages need that the client decided (prompt, limits, sampling, streaming) and who
asked (tenant, trace); what the stages decide (admission, the quota account, the replica) they
return to each other instead of writing it here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from common.protocol import GenerateRequest
from common.telemetry import attributes as A
from router.admission import Admission
from router.fairness.tiers import DEFAULT_TIER, Tier, request_tier
from router.magistral_defaults import with_default_sampling
from router.telemetry.request_trace import RequestTrace
from router.tenancy.directory import Tenant

_OPERATIONS = {"chat": "chat", "completion": "text_completion"}


@dataclass(frozen=True)
class RequestContext:
    request_id: str  # the client's x-request-id, or one Serve's proxy made
    kind: Literal["chat", "completion"]
    tenant: Tenant
    model: str  # as the client named it
    stream: bool
    requested_max_tokens: int | None
    sampling: dict[str, Any]  # the request's values over the model's defaults
    stop: list[str]
    trace: RequestTrace
    messages: list[dict] | None = None  # chat (system prompt included)
    tools: list[dict] | None = None
    tool_choice: Any = None
    response_format: dict | None = None
    prompt: str | None = None  # text completion
    exact: bool = False  # always count the prompt (an answer that states it up front needs it)
    tier: Tier = DEFAULT_TIER  # the priority it runs at: the tenant's, or the lower one it asked for
    # Client request ids may repeat; this one may not (the ledger row's key).
    request_key: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of(cls, body, *, request_id: str, kind: Literal["chat", "completion"], tenant: Tenant, trace: RequestTrace,
           default_sampling: dict[str, float], **prompt) -> "RequestContext":
        """From an OpenAI or Anthropic request model (both give stream, sampling, stop, max_tokens)."""
        return cls(request_id=request_id, kind=kind, tenant=tenant, model=body.model, stream=body.stream,
                   requested_max_tokens=body.requested_max_tokens(),
                   sampling=with_default_sampling(body.sampling(), default_sampling), stop=body.stop_list(),
                   trace=trace, tier=request_tier(tenant.priority, body.asked_tier()), **prompt)

    def span_attributes(self, served_model: str, client_sampling: dict[str, Any]) -> dict:
        attributes = {A.OPERATION: _OPERATIONS[self.kind], A.PROVIDER: A.PROVIDER_MISTRAL, A.REQUEST_MODEL: self.model,
                      A.RESPONSE_MODEL: served_model, A.REQUEST_STREAM: self.stream, A.REQUEST_ID: self.request_id,
                      A.REQUEST_TIER: self.tier.label}
        if self.requested_max_tokens is not None:
            attributes[A.REQUEST_MAX_TOKENS] = self.requested_max_tokens
        if "temperature" in client_sampling:
            attributes[A.REQUEST_TEMPERATURE] = client_sampling["temperature"]
        if "top_p" in client_sampling:
            attributes[A.REQUEST_TOP_P] = client_sampling["top_p"]
        return attributes

    def job(self, admission: Admission, max_tokens: int | None, served_model: str,
            trace_context: dict[str, str], preferred_replicas: tuple[str, ...] = (), caller: str = "",
            ledger: dict | None = None) -> GenerateRequest:
        """The replica's request, made once everything about it is decided."""
        return GenerateRequest(
            request_id=self.request_id, kind=self.kind, context_limit=admission.context_limit, stream=self.stream,
            messages=self.messages, tools=self.tools, tool_choice=self.tool_choice,
            response_format=self.response_format, prompt=self.prompt,
            prompt_tokens=admission.prompt_tokens, prompt_tokens_bound=admission.prompt_tokens_bound,
            max_tokens=max_tokens, stop=self.stop, sampling=self.sampling, model=served_model,
            request_key=self.request_key, trace_context=trace_context, preferred_replicas=list(preferred_replicas),
            priority=int(self.tier), caller=caller, ledger=ledger,
        )
