"""Priority tiers: which held requests the admission queue dispatches first.

A tenant has a tier (from the tenants file); a request may ask for a lower one (a tenant's
nightly jobs as `batch`), never a higher one. Asking higher is not an error: the request runs in
its tenant's own tier (a client library that always sends `interactive` must not break for a
`standard` tenant), and the tier used is what the caller records on the request's span.
"""

from __future__ import annotations

from enum import IntEnum


class Tier(IntEnum):
    """Lower value dispatches first: a held `interactive` request always goes before `standard`."""

    INTERACTIVE = 0
    STANDARD = 1
    BATCH = 2

    @property
    def label(self) -> str:
        return self.name.lower()


DEFAULT_TIER = Tier.STANDARD
TIER_NAMES = tuple(t.label for t in Tier)


def parse_tier(name: str | Tier | None, default: Tier = DEFAULT_TIER) -> Tier:
    """A tier by name (case-insensitive); None or "" is `default`; anything else is a ValueError."""
    if isinstance(name, Tier):
        return name
    if not name:
        return default
    try:
        return Tier[name.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown priority tier {name!r}; known: {', '.join(TIER_NAMES)}") from None


def request_tier(tenant_tier: Tier, asked: str | Tier | None = None) -> Tier:
    """The tier a request runs in: what it asked for if that is its tenant's tier or lower,
    else (asking higher, or not asking) its tenant's tier. An unknown name is a ValueError."""
    wanted = parse_tier(asked, default=tenant_tier)
    return max(wanted, tenant_tier)  # the larger value is the lower priority
