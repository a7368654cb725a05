"""Token prices per pool and tier, and the exact cost of a request. Pure; Decimal only.

Prices are dollars per million tokens with at most 6 decimal places, so a token's price is a
whole number of picodollars and every cost is exact (the ledger stores picodollars).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MILLION = Decimal(1_000_000)
PICO = Decimal(10) ** -12


class _Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    reasoning: Decimal | None = Field(None, ge=0)  # default: the output price

    @field_validator("input", "output", "reasoning")
    @classmethod
    def _six_places(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v.as_tuple().exponent < -6:
            raise ValueError("at most 6 decimal places (dollars per million tokens)")
        return v


class _PricesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: str = "USD"
    default_tier: str = "standard"
    tiers: dict[str, dict[str, _Price]] = Field(min_length=1)  # tier -> pool -> price

    @field_validator("currency")
    @classmethod
    def _usd(cls, v: str) -> str:
        if v != "USD":
            raise ValueError("only USD is supported")
        return v


@dataclass(frozen=True)
class Prices:
    """Dollars per million tokens."""

    input: Decimal
    output: Decimal
    reasoning: Decimal

    def cost(self, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> Decimal:
        """Exact cost. completion_tokens includes reasoning_tokens (OpenAI's usage convention)."""
        reasoning = min(reasoning_tokens, completion_tokens)
        total = prompt_tokens * self.input + (completion_tokens - reasoning) * self.output + reasoning * self.reasoning
        return total / MILLION

    def worst_case(self, prompt_tokens: int, max_tokens: int) -> Decimal:
        """The most a request may cost: every completion token at the dearer completion price."""
        return (prompt_tokens * self.input + max_tokens * self.completion_max) / MILLION

    @property
    def completion_max(self) -> Decimal:
        return max(self.output, self.reasoning)


class PriceTable:
    def __init__(self, tiers: dict[str, dict[str, Prices]], default_tier: str):
        if default_tier not in tiers:
            raise ValueError(f"default_tier {default_tier!r} is not a tier: {sorted(tiers)}")
        self.tiers, self.default_tier = tiers, default_tier

    @classmethod
    def from_dict(cls, data: dict) -> "PriceTable":
        spec = _PricesFile.model_validate(data or {})
        tiers = {
            tier: {pool: Prices(p.input, p.output, p.output if p.reasoning is None else p.reasoning)
                   for pool, p in pools.items()}
            for tier, pools in spec.tiers.items()
        }
        return cls(tiers, spec.default_tier)

    def prices(self, tier: str | None, pool: str) -> Prices:
        """A tenant's tier may omit pools: those are priced as in the default tier."""
        own = self.tiers.get(tier or self.default_tier, {})
        if pool in own:
            return own[pool]
        return self.tiers[self.default_tier][pool]

    def check_covers(self, pools: list[str]) -> None:
        """Every pool must have a default-tier price: a request is never served unpriced."""
        missing = [p for p in pools if p not in self.tiers[self.default_tier]]
        if missing:
            raise ValueError(f"prices file: default tier {self.default_tier!r} has no price for pools {missing}")


def usd_text(amount: Decimal) -> str:
    """Plain decimal text, no exponent, no trailing zeros ('0.000123', '0')."""
    text = format(amount.quantize(PICO).normalize(), "f")
    return text


def to_pico(amount: Decimal) -> int:
    pico = amount / PICO
    if pico != pico.to_integral_value():
        raise ValueError(f"{amount} is not a whole number of picodollars")
    return int(pico)


def from_pico(pico: int) -> Decimal:
    return Decimal(pico) * PICO
