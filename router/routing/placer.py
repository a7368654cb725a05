"""Placement: which replica, of every pool that may hold a request, serves it. Pure (no Ray, no
clock: callers pass `now`), and shared by the live router and the fleet simulator's `predicted`
policy, so the simulator simulates the router.

Each replica publishes its engine's state with its routing stats (common.protocol STAT_*). The
placer turns one snapshot of those rows into `ReplicaView`s, adds what this router dispatched to
each replica since its stats were taken (a burst sees itself before any report could), and asks
router.routing.predict for the order. Around that it learns three things online: the output length
requests really have (the median of recent answers, which the prediction's time per token and KV
room depend on), how far each GPU class's predicted time to first token is from what its
replicas deliver (router/routing/correction.py), and which replica holds which prefix
(router/routing/prefix_memory.py: what it sent where, forgotten as the engine's prefix cache
would evict it). A request's prefix chain (common/prefix_keys.py) is matched against each
replica's memory and the match becomes the view's `prefix_cached_tokens`: a shorter predicted
prefill, weighed against that replica's queue by router.routing.predict.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from common import protocol as P
from common.config import AppConfig, Objectives
from common.engine_model import PROFILES, GPUProfile, profile_named
from common.prefix_cache import PrefixChain
from router.routing.correction import TTFTCorrection
from router.routing.inflow import PrefillInflow
from router.routing.predict import Prediction, ReplicaView, RequestShape, pick
from router.routing.prefix_memory import PrefixMemory

# A dispatch stays "not yet in the replica's stats" at most this long (a lost stats report must
# not make a replica look busy forever).
RECENT_S = 2.0
# Tokens of output a request is assumed to generate before any answer was seen (a reasoning
# model's short answers run ~1k tokens with their thinking).
LIKELY_OUTPUT_PRIOR = 900


@dataclass(frozen=True)
class PoolTerms:
    """What the config says of a pool, for prediction."""

    name: str
    profile: GPUProfile | None  # None: the pool is not predicted (its replicas must name one)
    usd_per_hour: float
    max_model_len: int


def pool_terms(config: AppConfig) -> dict[str, PoolTerms]:
    terms = {}
    for pool in config.enabled_pools:
        profile = PROFILES[pool.profile_name] if pool.profile_name else None
        scale = getattr(pool.engine, "time_scale", 1.0)
        terms[pool.name] = PoolTerms(pool.name, profile.scaled(scale) if profile else None, pool.usd_per_hour,
                                     pool.max_model_len)
    return terms


@dataclass(frozen=True)
class Placement:
    pool: str
    replicas: tuple[str, ...]  # the chosen pool's replicas, best first (the pool router's ranks)
    predictions: tuple[Prediction, ...]  # every candidate of every pool, best first
    prompt_tokens: int  # as predicted (the count, or the bound's estimate)
    likely_output_tokens: int
    chain: PrefixChain = ()  # the request's prefix chain, fitted to prompt_tokens

    @property
    def chosen(self) -> Prediction:
        return self.predictions[0]

    def reason(self) -> str:
        c = self.chosen
        verdict = "meets the objectives" if c.miss <= 1.0 else "misses least"
        return (f"{self.pool}: replica {c.replica_id} {verdict} (predicted TTFT {c.ttft_s:.3f} s, "
                f"TPOT {c.tpot_s * 1000:.1f} ms; {len(self.predictions)} candidates)")


class LikelyOutput:
    """The output length to plan for: the median of recent answers' completion tokens."""

    def __init__(self, prior: int = LIKELY_OUTPUT_PRIOR, window: int = 256, every: int = 16) -> None:
        self.tokens = prior
        self._seen: deque[int] = deque(maxlen=window)
        self._every = every

    def observe(self, completion_tokens: int) -> None:
        self._seen.append(completion_tokens)
        if len(self._seen) % self._every == 0:  # a median per answer would cost more than it tells
            self.tokens = max(1, int(statistics.median(self._seen)))


@dataclass
class _Dispatch:
    at: float
    prompt_tokens: int


@dataclass
class RecentDispatches:
    """This router's dispatches per replica, until the replica's stats are newer than them."""

    by_replica: dict[str, dict[str, _Dispatch]] = field(default_factory=dict)

    def add(self, replica_id: str, request_key: str, prompt_tokens: int, now: float) -> None:
        self.by_replica.setdefault(replica_id, {})[request_key] = _Dispatch(now, prompt_tokens)

    def move(self, request_key: str, replica_id: str) -> None:
        """Serve placed the request on another replica than predicted (the first was full)."""
        for rid, held in self.by_replica.items():
            if rid != replica_id and request_key in held:
                self.by_replica.setdefault(replica_id, {})[request_key] = held.pop(request_key)
                return

    def forget(self, request_key: str) -> None:
        """The request never reached a replica (its quota refused it, say)."""
        for held in self.by_replica.values():
            if held.pop(request_key, None) is not None:
                return

    def since(self, replica_id: str, stats_time: float, now: float) -> tuple[int, int]:
        """(requests, prompt tokens) dispatched after `stats_time`; forgets what is too old."""
        held = self.by_replica.get(replica_id)
        if not held:
            return 0, 0
        for key in [k for k, d in held.items() if d.at < now - RECENT_S]:
            del held[key]
        newer = [d for d in held.values() if d.at > stats_time]
        return len(newer), sum(d.prompt_tokens for d in newer)


class Placer:
    def __init__(self, pools: Mapping[str, PoolTerms], objectives: Objectives) -> None:
        self._pools = dict(pools)
        self.objectives = objectives
        self.likely = LikelyOutput()
        self.correction = TTFTCorrection()
        self.recent = RecentDispatches()
        self.prefixes = PrefixMemory()
        self.inflow = PrefillInflow()

    def view(self, pool: str, replica_id: str, stats: Mapping, now: float) -> ReplicaView | None:
        """One replica as the predictor sees it, from the stats it published (None: unpredictable)."""
        terms = self._pools.get(pool)
        if terms is None:
            return None
        profile = terms.profile
        published = profile_named(stats.get(P.STAT_GPU_PROFILE))
        if published is not None:  # a replica knows its own hardware best
            profile = published.scaled(float(stats.get(P.STAT_TIME_SCALE, 1.0)))
        if profile is None:
            return None
        stats_time = float(stats.get(P.STAT_TIME, 0.0))
        added, added_tokens = self.recent.since(replica_id, stats_time, now)
        inflow = self.inflow.observe(replica_id, stats_time, int(stats.get(P.STAT_PREFILLED_TOTAL, 0)))
        # The engine caches in all of its KV (shared by running requests, or free until needed): the
        # memory is bounded by the whole pool (a free-KV bound, or a fixed quarter of it, forgot
        # conversations the engine still held: 28-32 % of prompts prefilled again vs 23 %).
        self.prefixes.capacity(replica_id, profile.kv_capacity_tokens)
        return ReplicaView(
            replica_id, pool, profile, terms.usd_per_hour, terms.max_model_len,
            running=int(stats.get(P.STAT_RUNNING, 0)),
            waiting=int(stats.get(P.STAT_WAITING, 0)) + added,
            queued_prefill_tokens=int(stats.get(P.STAT_PREFILL_TOKENS, 0)) + added_tokens,
            kv_tokens=int(float(stats.get(P.STAT_KV_USAGE, 0.0)) * profile.kv_capacity_tokens),
            context_tokens=int(stats.get(P.STAT_CONTEXT_TOKENS, 0)) + added_tokens,
            prefill_tokens_per_s=inflow,
            ttft_correction=self.correction.factor(profile.name),
        )

    def views(self, rows: Iterable[tuple[str, str, Mapping]], now: float) -> list[ReplicaView]:
        """Rows of (pool, replica id, published stats) -> the views that can be predicted."""
        self.prefixes.advance(now)
        return [v for pool, rid, stats in rows if (v := self.view(pool, rid, stats, now)) is not None]

    def shape(self, prompt_tokens: int) -> RequestShape:
        o = self.objectives
        return RequestShape(prompt_tokens, self.likely.tokens, o.ttft_limit_s(prompt_tokens), o.tpot_s)

    def place(self, views: Iterable[ReplicaView], prompt_tokens: int, pools: Collection[str],
              chain: PrefixChain = ()) -> Placement | None:
        """The best replica among `pools`' (None: no view of any of them holds the request).
        `chain`: the request's prefix chain in the units of `prompt_tokens` (an estimated one
        scaled by common.prefix_keys.fit); entries past the prompt are ignored."""
        shape = self.shape(prompt_tokens)
        if chain and chain[-1][1] > prompt_tokens:
            chain = tuple(e for e in chain if e[1] <= prompt_tokens)
        candidates = [v for v in views if v.pool in pools]
        if chain:
            cached = self.prefixes.cached
            candidates = [replace(v, prefix_cached_tokens=hit) if (hit := cached(v.replica_id, chain)) else v
                          for v in candidates]
        order = pick(candidates, shape)
        if not order:
            return None
        pool = order[0].pool
        return Placement(pool, tuple(p.replica_id for p in order if p.pool == pool), tuple(order),
                         prompt_tokens, shape.likely_output_tokens, tuple(chain))

    # ---- what the router learns as requests go -------------------------------------------------
    def dispatched(self, placement: Placement, request_key: str, now: float) -> None:
        chosen = placement.chosen
        # Its prefill still to do there: the prompt less the prefix that replica holds.
        self.recent.add(chosen.replica_id, request_key, placement.prompt_tokens - chosen.prefix_cached_tokens, now)
        self.prefixes.sent(request_key, chosen.replica_id, placement.chain, ready_at=now + chosen.ttft_s)

    def started(self, request_key: str, replica_id: str) -> None:
        self.recent.move(request_key, replica_id)
        self.prefixes.started(request_key, replica_id)

    def forget(self, request_key: str) -> None:
        """The request never reached a replica (its quota refused it, say): neither its load nor
        its prefixes are there."""
        self.recent.forget(request_key)
        self.prefixes.forget(request_key)

    def first_token(self, placement: Placement, replica_id: str, ttft_s: float) -> None:
        """The request's first token came `ttft_s` after dispatch: correct its GPU class's
        predictions (not when the prediction was a drain guess: the replica was full)."""
        predicted = next((p for p in placement.predictions if p.replica_id == replica_id), None)
        if predicted is not None and not predicted.waits_for_room:
            self.correction.observe(predicted.profile, predicted.ttft_model_s, ttft_s)

    def finished(self, completion_tokens: int) -> None:
        self.likely.observe(completion_tokens)
