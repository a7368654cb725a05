"""The HTTP side of errors: rendering an APIError as a response, mapping what tenancy refuses
onto HTTP (429 with Retry-After and x-ratelimit-*, 503, 400/403), and the OpenAPI document's
error models."""

from __future__ import annotations

from decimal import Decimal

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from router.errors import APIError, unavailable
from router.tenancy.errors import LedgerUnavailable, QuotaRefused, TenancyError, UsageQueryRefused
from router.tenancy.pricing import usd_text
from router.tenancy.quota import OUT_OF_BUDGET, Refusal


def render(error: APIError, extra_headers: dict[str, str] | None = None, *, path: str = "") -> JSONResponse:
    """In the shape of the route's API: Anthropic's under /v1/messages, OpenAI's elsewhere."""
    status, body = error.shaped(path)
    return JSONResponse(body, status_code=status, headers={**error.headers, **(extra_headers or {})})


def quota_error(refusal: Refusal) -> APIError:
    """OpenAI's 429s: `rate_limit_exceeded` (type requests/tokens) or `insufficient_quota`."""
    headers = {"retry-after": str(refusal.retry_after_s), **refusal.headers.as_headers()}
    if refusal.code == OUT_OF_BUDGET:
        return APIError(429, refusal.message, type="insufficient_quota", code=OUT_OF_BUDGET, headers=headers,
                        limit=refusal.limit)
    kind = "tokens" if refusal.limit == "tokens_per_minute" else "requests"
    return APIError(429, refusal.message, type=kind, code=refusal.code, headers=headers, limit=refusal.limit)


def from_tenancy(exc: TenancyError) -> APIError:
    if isinstance(exc, QuotaRefused):
        return quota_error(exc.refusal)
    if isinstance(exc, LedgerUnavailable):
        return unavailable(exc.message)
    if isinstance(exc, UsageQueryRefused):
        if exc.forbidden:
            return APIError(403, exc.message, type="permission_denied", param=exc.param, code="forbidden")
        return APIError(400, exc.message, param=exc.param, code="invalid_value")
    raise TypeError(f"unmapped tenancy error {type(exc).__name__}")  # a new error needs its mapping


def cost_header(cost: Decimal | None) -> dict[str, str]:
    return {} if cost is None else {"x-cost-usd": usd_text(cost)}


# ---- the OpenAPI document: which errors each route really returns ---------------------------

class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a wrong or missing field, text that is not valid Unicode, a "
         "non-text content part, or a prompt over the 40 960-token context (code context_length_exceeded).",
    401: "Missing or wrong API key (code invalid_api_key).",
    403: "The key may not do this: another tenant's usage, or no pool it may use.",
    404: "Unknown model (code model_not_found).",
    413: "Request body over max_body_bytes, refused before it is read (code request_too_large).",
    429: "A rate limit (Retry-After, x-ratelimit-*) or a spent budget (code insufficient_quota).",
    503: "A pool or the ledger cannot take the request now; retry.",
}


def documented(*statuses: int, model: type[BaseModel] = ErrorResponse) -> dict:
    """`responses=` for a route decorator."""
    return {s: {"model": model, "description": _DESCRIPTIONS[s]} for s in statuses}


GENERATION_ERRORS = documented(400, 401, 403, 404, 413, 429, 503)


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    type: str = "error"
    error: AnthropicErrorDetail


ANTHROPIC_ERRORS = {
    **{s: {"model": AnthropicError, "description": _DESCRIPTIONS[s]} for s in (400, 401, 403, 404, 413, 429)},
    529: {"model": AnthropicError, "description": "Overloaded: a pool or the ledger cannot take the request now "
                                                  "(Anthropic's status for our 503); retry."},
}
