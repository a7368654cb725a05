"""Errors in Anthropic's shape: {"type": "error", "error": {"type", "message"}}.

Anthropic's types by HTTP status (docs: /en/api/errors); another 4xx is an invalid_request_error,
another 5xx an api_error. Our 503 (a pool or replica unavailable) goes out as Anthropic's
overloaded status, 529, which its SDKs retry.
"""

from __future__ import annotations

OVERLOADED = 529

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def anthropic_status(status: int) -> int:
    """The HTTP status to answer with: 503 -> 529, others unchanged."""
    return OVERLOADED if status == 503 else status


def error_body(status: int, message: str, request_id: str | None = None) -> dict:
    body: dict = {"type": "error", "error": {"type": error_type(status), "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body
