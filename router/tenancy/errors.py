"""What tenancy refuses, as plain exceptions: the HTTP edge maps them (router/http/errors.py)."""

from __future__ import annotations

from router.tenancy.quota import Refusal


class TenancyError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class QuotaRefused(TenancyError):
    """A limit or the budget refuses the request (HTTP 429)."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


class LedgerUnavailable(TenancyError):
    """The quota store or ledger cannot be reached: no admission without it (HTTP 503)."""


class UsageQueryRefused(TenancyError):
    """A /v1/usage query that is malformed (400) or asks for another tenant's usage (403)."""

    def __init__(self, message: str, param: str, *, forbidden: bool = False):
        super().__init__(message)
        self.param, self.forbidden = param, forbidden
