"""router.fairness.tiers: a request may ask for a lower tier than its tenant's, never a higher one."""

import pytest

from router.fairness.tiers import DEFAULT_TIER, Tier, parse_tier, request_tier


def test_tiers_dispatch_in_order():
    assert sorted([Tier.BATCH, Tier.INTERACTIVE, Tier.STANDARD]) == [Tier.INTERACTIVE, Tier.STANDARD, Tier.BATCH]


@pytest.mark.parametrize("name, tier", [("interactive", Tier.INTERACTIVE), ("Batch", Tier.BATCH),
                                        (" STANDARD ", Tier.STANDARD), (None, DEFAULT_TIER), ("", DEFAULT_TIER)])
def test_parse_tier(name, tier):
    assert parse_tier(name) is tier


def test_an_unknown_tier_names_the_known_ones():
    with pytest.raises(ValueError, match="interactive, standard, batch"):
        parse_tier("premium")


@pytest.mark.parametrize("tenant, asked, runs_in", [
    (Tier.STANDARD, None, Tier.STANDARD),  # not asking: the tenant's tier
    (Tier.STANDARD, "batch", Tier.BATCH),  # lower: granted
    (Tier.STANDARD, "interactive", Tier.STANDARD),  # higher: the tenant's own, not an error
    (Tier.BATCH, Tier.INTERACTIVE, Tier.BATCH),
    (Tier.INTERACTIVE, "standard", Tier.STANDARD),
])
def test_request_tier_never_rises_above_the_tenants(tenant, asked, runs_in):
    assert request_tier(tenant, asked) is runs_in


def test_request_tier_rejects_unknown_names():
    with pytest.raises(ValueError):
        request_tier(Tier.STANDARD, "gold")
