"""The application's settings: the `args` of the serve config, validated before anything starts."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.context_cap import OverflowPolicy
from router.pools import PoolLimits

MAGISTRAL_CONTEXT = 40_960


class StubEngine(BaseModel):
    """Speed of the GPU class a stub pool emulates."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["stub"] = "stub"
    prefill_tokens_per_s: float = Field(50_000.0, gt=0)
    decode_ms_per_token: float = Field(5.0, ge=0)


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    accelerator: str = "stub"
    max_model_len: int = Field(gt=0)
    max_prompt_tokens: int | None = Field(None, gt=0)  # default: max_model_len - 1
    spill_at_outstanding_tokens: int = Field(200_000, gt=0)
    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(64, ge=1)
    routing_metric: Literal["tokens", "requests"] = "tokens"
    routing_stats_period_s: float = Field(0.2, gt=0)
    engine: StubEngine = Field(default_factory=StubEngine)

    def limits(self) -> PoolLimits:
        return PoolLimits(
            name=self.name,
            max_model_len=self.max_model_len,
            max_prompt_tokens=self.max_prompt_tokens or self.max_model_len - 1,
            spill_at_outstanding_tokens=self.spill_at_outstanding_tokens,
        )


class AppConfig(BaseModel):
    """`args:` of the router application in a serve config (see configs/local.yaml)."""

    model_config = ConfigDict(extra="forbid")
    model_id: str = "magistral-small-2506"
    model_aliases: list[str] = Field(default_factory=lambda: ["mistralai/Magistral-Small-2506"])
    context_cap: int = Field(MAGISTRAL_CONTEXT, gt=1)
    overflow_policy: OverflowPolicy = OverflowPolicy.CLAMP
    tokenizer_path: str | None = None  # Tekken file; None: the one mistral-common ships
    tenants_file: str = "configs/tenants.yaml"
    pools: list[PoolConfig] = Field(min_length=1)  # cheapest first

    @model_validator(mode="after")
    def _unique_pools(self) -> "AppConfig":
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique: {names}")
        return self

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "AppConfig":
        """Validate serve-config args; TENANTS_FILE overrides the tenants file without an edit."""
        config = cls.model_validate(args)
        if os.environ.get("TENANTS_FILE"):
            config = config.model_copy(update={"tenants_file": os.environ["TENANTS_FILE"]})
        return config

    def served_model_ids(self) -> list[str]:
        return [self.model_id, *self.model_aliases]

    def pool_limits(self) -> list[PoolLimits]:
        return [p.limits() for p in self.pools]
