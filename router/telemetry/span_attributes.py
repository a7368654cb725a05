"""Span attributes for the ingress's decisions. Pure: built from the decision objects only."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from router.admission import Admission
from router.routing.load_book import ReplicaLoad
from router.routing.placer import Placement
from common.telemetry import attributes as A
from router.tenancy.quota import Grant

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float] | Sequence[bool]
PREDICTIONS_ON_SPAN = 4  # the chosen replica and the best alternatives


def admission_attributes(admission: Admission, cap: int) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {
        A.PROMPT_COUNTED: admission.prompt_tokens is not None,
        A.PROMPT_BOUND: admission.prompt_tokens_bound,
        A.CONTEXT_CAP: cap,
        A.CONTEXT_LIMIT: admission.context_limit,
        A.POOL: admission.pool,
    }
    if admission.prompt_tokens is not None:
        out[A.INPUT_TOKENS] = admission.prompt_tokens
    if admission.max_tokens is not None:
        out[A.GRANTED_MAX_TOKENS] = admission.max_tokens
    if admission.clamped_from is not None:
        out[A.CLAMPED_FROM] = admission.clamped_from
    return out


def quota_attributes(grant: Grant) -> dict[str, AttributeValue]:
    if grant.clamped_from is None:
        return {A.QUOTA_DECISION: "grant", A.GRANTED_MAX_TOKENS: grant.max_tokens}
    return {A.QUOTA_DECISION: "clamp", A.GRANTED_MAX_TOKENS: grant.max_tokens,
            A.QUOTA_CLAMPED_FROM: grant.clamped_from}


def queue_attributes(decision: str, waited_s: float, figures) -> dict[str, AttributeValue]:
    """The fair queue's decision (admit | queue | shed), how long the request waited in it, and
    the figures it decided on (a Turn, or a shed Decision with its status and Retry-After)."""
    out: dict[str, AttributeValue] = {
        A.QUEUE_DECISION: decision, A.QUEUE_WAIT_S: round(waited_s, 4),
        A.QUEUE_ALLOWED_WAIT_S: round(figures.allowed_wait_s, 3),
    }
    if math.isfinite(figures.expected_wait_s):
        out[A.QUEUE_EXPECTED_WAIT_S] = round(figures.expected_wait_s, 3)
    if getattr(figures, "status", None) is not None:
        out[A.QUEUE_SHED_STATUS] = figures.status
        out[A.QUEUE_RETRY_AFTER_S] = figures.retry_after_s
    return out


def routing_attributes(admission: Admission, outstanding: Mapping[str, int]) -> dict[str, AttributeValue]:
    """Why this pool: the reason, the pools that could hold the request (preferred first) and the
    outstanding tokens this ingress saw on each when it chose."""
    choice = admission.choice
    attributes: dict[str, AttributeValue] = {
        A.POOL: choice.pool.name,
        A.ROUTING_REASON: choice.kind,
        A.ROUTING_DETAIL: choice.reason,
        A.CANDIDATE_POOLS: list(choice.candidates),
        A.POOL_OUTSTANDING: [int(outstanding.get(name, 0)) for name in choice.candidates],
    }
    if choice.placement is not None:
        attributes.update(prediction_attributes(choice.placement))
    return attributes


def prediction_attributes(placement: Placement, top: int = PREDICTIONS_ON_SPAN) -> dict[str, AttributeValue]:
    """The predicted placement: the best `top` candidates of every pool (the chosen one first)."""
    shown = placement.predictions[:top]
    return {
        A.PREDICTED_REPLICAS: [p.replica_id for p in shown],
        A.PREDICTED_POOLS: [p.pool for p in shown],
        A.PREDICTED_TTFT: [round(p.ttft_s, 4) for p in shown],
        A.PREDICTED_TPOT: [round(p.tpot_s, 4) for p in shown],
        A.PREDICTED_MEETS: [p.miss <= 1.0 for p in shown],
        A.PREDICTED_CACHED: [p.prefix_cached_tokens for p in shown],
        A.LIKELY_OUTPUT: placement.likely_output_tokens,
        A.TTFT_CORRECTION: round(placement.chosen.ttft_s / placement.chosen.ttft_model_s, 3)
        if placement.chosen.ttft_model_s and not placement.chosen.waits_for_room else 1.0,
    }


def replica_ranking_attributes(ranked: Sequence[ReplicaLoad], attempt: int) -> dict[str, AttributeValue]:
    """The pool's replicas as the RequestRouter ranked them, best first, with their scores."""
    return {
        A.CANDIDATE_REPLICAS: [load.replica_id for load in ranked],
        A.REPLICA_SCORES: [load.tokens for load in ranked],
        A.REPLICA_REQUESTS: [load.requests for load in ranked],
        A.ROUTING_ATTEMPTS: attempt,
    }


def placement_attributes(start_event: Mapping) -> dict[str, AttributeValue]:
    """Where the request runs, from the replica's start event."""
    return {A.REPLICA_ID: start_event["replica"], A.NODE_ID: start_event["node_id"],
            A.ACCELERATOR: start_event["accelerator"], A.POOL: start_event["pool"]}


def messages_attribute(messages: list[dict] | None, prompt: str | None) -> str:
    """gen_ai.input.messages (only when the config asks for content in traces)."""
    if messages is None:
        messages = [{"role": "user", "content": prompt or ""}]
    return json.dumps(messages, ensure_ascii=False)
