"""GET /v1/usage: who may see what, the query's filters, and the JSON the ledger's rows become."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from router.tenancy.errors import UsageQueryRefused
from router.tenancy.directory import Tenant

MAX_ROWS = 1000
QUERY_PARAMS = ("tenant", "from", "to", "pool", "limit")


@dataclass(frozen=True)
class UsageQuery:
    tenant: str | None  # None: every tenant (admin keys only)
    start: datetime | None
    end: datetime | None
    pool: str | None
    limit: int

    @classmethod
    def parse(cls, params: Mapping[str, str], caller: Tenant) -> "UsageQuery":
        for name in QUERY_PARAMS:
            if "\x00" in params.get(name, ""):  # PostgreSQL text cannot hold it: the client's 400, not a 503
                raise UsageQueryRefused(f"'{name}' may not contain a NUL character.", name)
        wanted = params.get("tenant")
        if wanted == "":  # not "every tenant" nor "nobody": say which
            raise UsageQueryRefused("'tenant' must name a tenant (leave it out for your own usage, or "
                                    "every tenant's with an admin key).", "tenant")
        if wanted is not None and wanted != caller.name and not caller.admin:
            raise UsageQueryRefused("Only admin keys may read another tenant's usage.", "tenant", forbidden=True)
        tenant = wanted if wanted is not None else (None if caller.admin else caller.name)
        limit = _int(params.get("limit", "100"), "limit")
        if not 0 <= limit <= MAX_ROWS:
            raise UsageQueryRefused(f"'limit' must be between 0 and {MAX_ROWS}.", "limit")
        start, end = parse_time(params.get("from"), "from"), parse_time(params.get("to"), "to")
        if start and end and end <= start:
            raise UsageQueryRefused("'to' must be later than 'from'.", "to")
        return cls(tenant, start, end, params.get("pool") or None, limit)


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageQueryRefused(f"'{name}' must be an integer.", name) from None


def parse_time(text: str | None, name: str) -> datetime | None:
    """ISO 8601 (a date, or a date and time; UTC unless it says otherwise) or Unix seconds."""
    if text is None or text == "":
        return None
    try:
        return datetime.fromtimestamp(float(text), timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # not a date, or one that leaves the calendar in UTC
        raise UsageQueryRefused(f"'{name}' must be an ISO 8601 date or time, or Unix seconds.", name) from None


def _json(value):
    if isinstance(value, Decimal):
        return float(value)  # repr of a float is the shortest text that reads back: exact here
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def report(query: UsageQuery, totals: list[dict], rows: list[dict]) -> dict:
    """Totals per tenant (with a breakdown by status) and the newest rows first."""
    by_tenant: dict[str, dict] = {}
    for t in totals:
        entry = by_tenant.setdefault(t["tenant"], {"tenant": t["tenant"], "requests": 0, "prompt_tokens": 0,
                                                   "completion_tokens": 0, "reasoning_tokens": 0,
                                                   "cost_usd": Decimal(0), "by_status": {}})
        for key in ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens"):
            entry[key] += int(t[key])
        entry["cost_usd"] += t["cost_usd"]
        entry["by_status"][t["status"]] = int(t["requests"])
    for entry in by_tenant.values():
        entry["total_tokens"] = entry["prompt_tokens"] + entry["completion_tokens"]
        entry["cost_usd"] = _json(entry["cost_usd"])
    return {
        "object": "usage",
        "tenant": query.tenant,
        "from": _json(query.start), "to": _json(query.end), "pool": query.pool,
        "totals": list(by_tenant.values()),
        "data": [{k: _json(v) for k, v in row.items()} for row in rows[: query.limit]],
        "has_more": len(rows) > query.limit,
    }
