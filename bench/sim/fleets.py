"""Fleets and what they are judged by: GPU pools as configs/production.yaml runs them, their
prices, and the latency objectives (SLO) a request must meet to count as goodput."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.workload import CONTEXT_CAP
from common.config import Objectives
from common.engine_model import H100_TP1, L40S_TP2, GPUProfile
from router.routing.pools import PoolLimits

# GPU prices: ASSUMPTIONS, round on-demand figures (us-east-1, 2025), not quotes.
# H100 80 GB: p5.48xlarge (8x H100 SXM) at ~$55/h after AWS's mid-2025 price cut -> ~$7 per GPU-hour.
H100_USD_PER_GPU_HOUR = 7.0
# L40S 48 GB: g6e.12xlarge (4x L40S) at ~$10.5/h -> ~$2.6 per GPU-hour.
L40S_USD_PER_GPU_HOUR = 2.6


@dataclass(frozen=True)
class PoolSpec:
    name: str
    profile: GPUProfile
    replicas: int
    limits: PoolLimits
    hourly_usd: float  # per replica (all its GPUs)
    max_ongoing_requests: int = 64  # Serve's cap on requests one replica holds


# configs/production.yaml sets spill thresholds per pool (short 400 000, long 1 000 000) for its
# reference fleet of 2 short replicas and 1 long one. A fixed pool-wide number would make a big
# pool spill almost empty, so the simulator scales them per replica from that reference.
SHORT_SPILL_PER_REPLICA = 400_000 // 2
LONG_SPILL_PER_REPLICA = 1_000_000


def short_pool(replicas: int) -> PoolSpec:
    """configs/production.yaml pool "short": 2x L40S TP2, 16k context, prompts up to 8k."""
    limits = PoolLimits("short", max_model_len=16_384, max_prompt_tokens=8_192,
                        spill_at_outstanding_tokens=SHORT_SPILL_PER_REPLICA * max(replicas, 1))
    return PoolSpec("short", L40S_TP2, replicas, limits, 2 * L40S_USD_PER_GPU_HOUR, max_ongoing_requests=96)


def long_pool(replicas: int) -> PoolSpec:
    """configs/production.yaml pool "long": H100 TP1, the full 40 960-token context."""
    limits = PoolLimits("long", max_model_len=CONTEXT_CAP, max_prompt_tokens=CONTEXT_CAP,
                        spill_at_outstanding_tokens=LONG_SPILL_PER_REPLICA * max(replicas, 1))
    return PoolSpec("long", H100_TP1, replicas, limits, H100_USD_PER_GPU_HOUR, max_ongoing_requests=64)


def mixed_fleet(h100: int, l40s: int) -> tuple[PoolSpec, ...]:
    """`h100` long-pool replicas and `l40s` short-pool replicas, cheapest pool first; empty pools left out."""
    return tuple(p for p in (short_pool(l40s), long_pool(h100)) if p.replicas > 0)


def fleet_label(fleet: Sequence[PoolSpec]) -> str:
    return "+".join(f"{p.replicas}x{p.name}" for p in fleet)


def fleet_usd_per_hour(fleet: Sequence[PoolSpec]) -> float:
    return sum(p.replicas * p.hourly_usd for p in fleet)


# What a request must get to count as goodput: the objectives the live router predicts against.
SLO = Objectives
