"""The application's settings: the `args` of the serve config, validated before anything starts."""

from __future__ import annotations

import os
from typing import Any, Literal

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAGISTRAL_CONTEXT = 40_960
ENV_OVERRIDES = {"TENANTS_FILE": "tenants_file", "PRICES_FILE": "prices_file", "LEDGER_URL": "ledger_url"}


class OverflowPolicy(str, Enum):
    """What to do when prompt + max_tokens exceeds the cap but the prompt alone fits."""

    CLAMP = "clamp"  # shrink max_tokens to what is left (default; the model card asks for 40 960)
    STRICT = "strict"  # refuse with 400 context_length_exceeded


GPUName = Literal["H100_TP1", "L40S_TP2", "RTX4090_FP8_TP2"]  # common.engine_model.PROFILES


class StubEngine(BaseModel):
    """Speed of the GPU class a stub pool emulates (deployments/stub_replica.py).

    `gpu`: an engine model profile (H100_TP1, L40S_TP2, RTX4090_FP8_TP2) run in real time, so a
    loaded replica slows down like a GPU; `time_scale` > 1 runs it that many times faster (and
    shorter benchmarks). Without `gpu`, every request runs at the fixed rates on its own.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["stub"] = "stub"
    # A list emulates one deployment spread over mixed nodes: replica of rank i runs gpu[i % len]
    # (benchmarks of routers that ignore GPU classes).
    gpu: GPUName | list[GPUName] | None = None
    time_scale: float = Field(1.0, gt=0)
    # At most one stream event per request per this interval (tokens coalesced between), as Ray
    # Serve LLM's stream batching does: keeps a one-machine cluster from spending its CPU on
    # events. The first token and the end are never held back. 0: one event per engine step.
    emit_interval_ms: float = Field(0.0, ge=0)
    # The engine's scheduling, as vLLM's `scheduling_policy`: "priority" serves waiting requests by
    # their tier (interactive, standard, batch) before arrival, and preempts the lowest first.
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    # Fixed rates (no `gpu`): None = 50 000 prompt tokens/s and 5 ms per output token.
    prefill_tokens_per_s: float | None = Field(None, gt=0)
    decode_ms_per_token: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_speed(self) -> "StubEngine":
        fixed = [name for name in ("prefill_tokens_per_s", "decode_ms_per_token") if getattr(self, name) is not None]
        if self.gpu and fixed:
            raise ValueError(f"a stub engine with `gpu` takes its speed from the profile, not {fixed}")
        if not self.gpu and (self.time_scale != 1.0 or self.emit_interval_ms or self.scheduling_policy != "fcfs"):
            raise ValueError("time_scale, emit_interval_ms and scheduling_policy apply to a stub with `gpu` only")
        return self

    def replica_kwargs(self) -> dict[str, Any]:
        """StubReplica's speed arguments."""
        if self.gpu:
            return {"gpu": self.gpu, "time_scale": self.time_scale, "emit_interval_ms": self.emit_interval_ms,
                    "scheduling_policy": self.scheduling_policy}
        return {"prefill_tokens_per_s": 50_000.0 if self.prefill_tokens_per_s is None else self.prefill_tokens_per_s,
                "decode_ms_per_token": 5.0 if self.decode_ms_per_token is None else self.decode_ms_per_token}


class VLLMEngine(BaseModel):
    """A real vLLM engine hosted by ray.serve.llm (deployments/vllm_replica.py)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["vllm"] = "vllm"
    model_source: str  # local dir or hub id: params.json, consolidated.safetensors, tekken.json
    device: Literal["gpu", "cpu"] = "gpu"
    accelerator_type: str | None = None  # Ray accelerator type of the GPU (H100, L40S, ...)
    custom_resources: dict[str, float] = Field(default_factory=dict)  # per GPU, e.g. {rtx4090: 1}
    tensor_parallel_size: int = Field(1, ge=1)
    placement_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = "STRICT_PACK"
    quantization: str | None = None
    max_num_seqs: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra vLLM args; override ours
    env_vars: dict[str, str] = Field(default_factory=dict)  # e.g. VLLM_CPU_KVCACHE_SPACE

    @model_validator(mode="after")
    def _device_resources(self) -> "VLLMEngine":
        if self.device == "cpu" and (self.accelerator_type or self.custom_resources):
            raise ValueError("a cpu engine takes no accelerator_type or custom_resources")
        return self


class Autoscaling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(1, ge=1)  # >= 1: /health needs a ready replica in every pool
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float = Field(16, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> "Autoscaling":
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class Objectives(BaseModel):
    """The latency a request should get, which routing predicts against (and benchmarks judge by).

    Time to first token: `ttft_base_s` plus a prefill allowance per prompt token, so a long
    document is judged fairly; time per output token: `tpot_s` (0.08 s = 12.5 tokens/s, reading
    speed, and a long <think> trace still finishes in minutes).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    ttft_base_s: float = Field(1.0, gt=0)
    ttft_prefill_tokens_per_s: float = Field(10_000.0, gt=0)
    tpot_s: float = Field(0.080, gt=0)

    def ttft_limit_s(self, prompt_tokens: int) -> float:
        return self.ttft_base_s + prompt_tokens / self.ttft_prefill_tokens_per_s


_EXTRA_WAIT_S = {"interactive": 0.0, "standard": 0.0, "batch": 60.0}
_MAX_WAIT_S = {"interactive": 10.0, "standard": 30.0, "batch": 120.0}


class FairnessConfig(BaseModel):
    """The ingress's fair admission queue (router/fairness/, docs/fairness.md). Off by default: on,
    a request that no replica is predicted to serve within its objectives waits in the ingress
    (priority tier, then the least-served tenant in GPU-seconds, then the earliest deadline) or is
    refused at once with 429/503 and Retry-After, instead of queueing in a replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = False
    # Per tier, how long beyond its first-token objective's slack a request may wait in the queue,
    # and the longest wait ever allowed (interactive | standard | batch). A tier left out keeps
    # its default.
    extra_wait_s: dict[str, float] = Field(default_factory=lambda: dict(_EXTRA_WAIT_S))
    max_wait_s: dict[str, float] = Field(default_factory=lambda: dict(_MAX_WAIT_S))
    max_retry_after_s: int = Field(60, ge=1)
    # Held requests are tried again this often (and at once when a request ends).
    retry_interval_s: float = Field(0.05, gt=0, le=5)

    @field_validator("extra_wait_s", "max_wait_s", mode="before")
    @classmethod
    def _over_defaults(cls, value, info):
        defaults = _EXTRA_WAIT_S if info.field_name == "extra_wait_s" else _MAX_WAIT_S
        return {**defaults, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _tiers(self) -> "FairnessConfig":
        known = {"interactive", "standard", "batch"}
        for name, table in (("extra_wait_s", self.extra_wait_s), ("max_wait_s", self.max_wait_s)):
            if unknown := set(table) - known:
                raise ValueError(f"fairness.{name}: unknown tiers {sorted(unknown)}; known: {sorted(known)}")
            if any(v < 0 for v in table.values()):
                raise ValueError(f"fairness.{name}: waits must be >= 0")
        return self


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    enabled: bool = True  # a disabled pool is validated but not deployed
    accelerator: str = "stub"
    max_model_len: int = Field(gt=0)
    max_prompt_tokens: int | None = Field(None, gt=0)  # default: max_model_len - 1
    spill_at_outstanding_tokens: int = Field(200_000, gt=0)
    num_replicas: int = Field(1, ge=1)  # ignored when autoscaling is set
    autoscaling: Autoscaling | None = None
    max_ongoing_requests: int = Field(64, ge=1)
    routing_metric: Literal["tokens", "requests"] = "tokens"
    # token_load: ours (router/request_router.py). power_of_two: Ray Serve's default router;
    # round_robin: each replica in turn. The last two are baselines for bench/routing.py.
    request_router: Literal["token_load", "power_of_two", "round_robin"] = "token_load"
    # The engine model that predicts this pool's latency (common.engine_model.PROFILES); a stub
    # pool defaults to the profile it runs. Without one the pool is routed by the length rule.
    gpu_profile: GPUName | None = None
    usd_per_hour: float = Field(0.0, ge=0)  # price of one replica (all its GPUs): the tie-break between classes
    routing_stats_period_s: float = Field(0.2, gt=0)
    engine: StubEngine | VLLMEngine = Field(default_factory=StubEngine, discriminator="kind")

    @property
    def profile_name(self) -> str | None:
        """The engine model profile routing predicts this pool with (None: not predicted)."""
        if self.gpu_profile is not None:
            return self.gpu_profile
        engine = self.engine
        if isinstance(engine, StubEngine) and isinstance(engine.gpu, str):
            return engine.gpu
        return None

    def serve_scaling(self) -> dict[str, Any]:
        """Serve deployment options for the replica count."""
        if self.autoscaling is None:
            return {"num_replicas": self.num_replicas}
        a = self.autoscaling
        return {"autoscaling_config": {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                       "target_ongoing_requests": a.target_ongoing_requests}}


class AppConfig(BaseModel):
    """`args:` of the router application in a serve config (see configs/local.yaml)."""

    model_config = ConfigDict(extra="forbid")
    model_id: str = "magistral-small-2506"
    model_aliases: list[str] = Field(default_factory=lambda: ["mistralai/Magistral-Small-2506"])
    context_cap: int = Field(MAGISTRAL_CONTEXT, gt=1)
    overflow_policy: OverflowPolicy = OverflowPolicy.CLAMP
    tokenizer_path: str | None = None  # Tekken file; None: the one mistral-common ships
    tenants_file: str = "configs/tenants.yaml"  # env TENANTS_FILE
    prices_file: str = "configs/prices.yaml"  # env PRICES_FILE
    ledger_url: str = "sqlite:///.run/ledger.db"  # env LEDGER_URL; or postgresql://user:pw@host/db
    tenants_reload_s: float = Field(2.0, gt=0)  # edits to the tenants / prices files apply within this
    reservation_ttl_s: float = Field(15.0, ge=1)  # a dead ingress's reservations are dropped after ~this
    # Admit out of per-ingress quota leases in memory (docs/tenancy.md, "Leases"): no database
    # transaction per admission, limits still exact. false: one reservation row per request.
    quota_leases: bool = True
    router_replicas: int = Field(1, ge=1)
    # Prompt and completion text in spans (gen_ai.input.messages / gen_ai.output.messages). Off:
    # traces then hold counts and decisions only, never what a tenant wrote.
    trace_content: bool = False
    # Request bodies over this many bytes get 413 before they are read: a prompt that fits the
    # 40 960-token cap is far smaller (under 1 MiB even as JSON-escaped CJK text).
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    # Magistral's recommended sampling, applied when a request leaves a value out.
    default_sampling: dict[str, float] = Field(default_factory=lambda: {"temperature": 0.7, "top_p": 0.95})
    # The model's SYSTEM_PROMPT.txt, sent as the system message when a request has none. Read
    # once at deploy time (build_app) into `system_prompt`.
    system_prompt_file: str | None = None
    system_prompt: str | None = None
    # predicted: each request goes to the replica, of any pool that holds it, whose engine model
    # predicts it meets `objectives` best (router/routing/predict.py). length_spill: the previous
    # rule (first pool in config order that holds the prompt, spill on outstanding tokens), kept
    # as a baseline for bench/routing.py.
    routing: Literal["predicted", "length_spill"] = "predicted"
    objectives: Objectives = Field(default_factory=Objectives)
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)
    pools: list[PoolConfig] = Field(min_length=1)  # cheapest first

    @model_validator(mode="after")
    def _pools(self) -> "AppConfig":
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique: {names}")
        if not any(p.enabled for p in self.pools):
            raise ValueError("at least one pool must be enabled")
        for p in self.pools:
            # An engine never needs more context than the cap; keeping it <= the cap also makes
            # the engine's own default max_tokens equal what is left of the cap.
            if p.max_model_len > self.context_cap:
                raise ValueError(f"pool {p.name}: max_model_len {p.max_model_len} > context_cap {self.context_cap}")
        if self.fairness.enabled and self.routing != "predicted":
            raise ValueError("fairness.enabled needs routing: predicted (the queue decides on the placer's predictions)")
        return self

    @property
    def enabled_pools(self) -> list[PoolConfig]:
        return [p for p in self.pools if p.enabled]

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "AppConfig":
        """Validate serve-config args; TENANTS_FILE, PRICES_FILE and LEDGER_URL override the
        config's files and ledger without an edit."""
        config = cls.model_validate(args)
        overrides = {field: os.environ[env] for env, field in ENV_OVERRIDES.items() if os.environ.get(env)}
        return config.model_copy(update=overrides) if overrides else config

    def served_model_ids(self) -> list[str]:
        return [self.model_id, *self.model_aliases]

