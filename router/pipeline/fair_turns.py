"""The fair admission queue, live in the ingress: an asyncio adapter around
router.fairness.admission_queue.AdmissionQueue, whose decisions the simulator uses too
(bench/sim/fair_admission.py).

A request the router has placed (router/routing/placer.py) asks for its turn before its quota is
reserved, so a held request holds no concurrency, no budget and no ledger row:
- admitted: it is dispatched now, where it was placed;
- held: its placement is dropped; a retry places it again over the fleet as it is then, and it is
  dispatched once the chosen replica meets its objectives with headroom, to one of the pools its
  admission allowed;
- shed: at once, or when its bounded wait runs out: 429 (its tenant holds more than its fair
  share of the queue) or 503 (the fleet is overloaded), with Retry-After.
A held request whose client leaves is removed; it was never reserved, so nothing is billed.

One task per ingress retries the held requests: every `retry_interval_s` while any is held, and
at once when a request ends (room freed) or arrives. Each ingress replica keeps its own queue over
the same published fleet state (docs/fairness.md states the guarantee across replicas).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from common.config import FairnessConfig
from common.engine_model import GPUProfile, profile_named
from common.prefix_cache import PrefixChain
from router import errors
from router.fairness.admission_queue import AdmissionQueue, Waiting
from router.fairness.shedding import Action, Decision, WaitBounds
from router.fairness.tiers import Tier, parse_tier
from router.routing.placer import Placement, Placer
from router.routing.predict import ReplicaView, gpu_seconds

logger = logging.getLogger("ray.serve")


def wait_bounds(config: FairnessConfig) -> WaitBounds:
    return WaitBounds(extra_s={parse_tier(k): v for k, v in config.extra_wait_s.items()},
                      max_s={parse_tier(k): v for k, v in config.max_wait_s.items()},
                      max_retry_after_s=config.max_retry_after_s)


def shed_error(decision: Decision) -> errors.APIError:
    """A shed request's answer, in OpenAI's shape (the Anthropic edge makes 503 its 529)."""
    headers = {"retry-after": str(decision.retry_after_s)}
    if decision.status == 429:
        return errors.APIError(429, "Your requests hold more than their fair share of the queue while the service is "
                                    f"saturated; retry after {decision.retry_after_s} s.",
                               type="rate_limit_error", code="fair_share_exceeded", headers=headers)
    return errors.APIError(503, "The service is overloaded: no replica can start this request within its "
                                f"latency objective soon; retry after {decision.retry_after_s} s.",
                           type="server_error", code="overloaded", headers=headers)


@dataclass
class _Ask:
    """What a held request needs to be placed again."""

    prompt_tokens: int
    pools: frozenset[str]
    chain: PrefixChain
    future: asyncio.Future


@dataclass(frozen=True)
class Turn:
    """Where a request goes, and what the queue did (for its span and the metrics)."""

    placement: Placement
    decision: str  # admit | queue
    waited_s: float = 0.0
    expected_wait_s: float = 0.0
    allowed_wait_s: float = 0.0


class Shed(errors.APIError):
    """A shed request's refusal, with the queue's figures for its span."""

    def __init__(self, decision: Decision, waited_s: float, queued: bool):
        e = shed_error(decision)
        super().__init__(e.status, e.message, type=e.type, code=e.code, headers=e.headers)
        self.decision, self.waited_s, self.queued = decision, waited_s, queued


class _Placing:
    """router.fairness.admission_queue.Placing over the fleet's stats as they are at each try."""

    def __init__(self, placer: Placer, views: Callable[[], list[ReplicaView]]) -> None:
        self._placer, self._views = placer, views

    def place(self, ask: _Ask) -> Placement | None:
        return self._placer.place(self._views(), ask.prompt_tokens, ask.pools, ask.chain)

    def unplace(self, ask: _Ask) -> None:
        """Nothing to undo: a placement is booked only when it is dispatched."""


class FairTurns:
    def __init__(self, config: FairnessConfig, placer: Placer, views: Callable[[], list[ReplicaView]],
                 fallback_profile: GPUProfile, clock: Callable[[], float] = time.time,
                 on_lengths: Callable[[Mapping[Tier, int]], None] | None = None) -> None:
        self.queue = AdmissionQueue(wait_bounds(config), likely_output=lambda: placer.likely.tokens)
        self._placer, self._placing = placer, _Placing(placer, views)
        self._fallback, self._clock, self._on_lengths = fallback_profile, clock, on_lengths
        self._interval = config.retry_interval_s
        self._wake: asyncio.Event | None = None
        self._pump: asyncio.Task | None = None

    async def turn(self, key: str, tenant: str, tier: Tier, placement: Placement, pools: Collection[str],
                   max_tokens: int | None = None) -> Turn:
        """Admit (the placement stands), hold until a retry dispatches it (a new placement), or
        raise `Shed`. The caller has booked `placement` with the placer; a held or shed request's
        booking is forgotten here."""
        now = self._clock()
        future = asyncio.get_running_loop().create_future()
        ask = _Ask(placement.prompt_tokens, frozenset(pools), placement.chain, future)
        waiting = Waiting(key, tenant, tier, placement.prompt_tokens, now,
                          self._placer.objectives.ttft_limit_s(placement.prompt_tokens),
                          min(p.idle_ttft_s for p in placement.predictions), self._fallback, ask, max_tokens)
        decision = self.queue.arrive(waiting, placement, now)
        if decision.action is Action.ADMIT:
            return Turn(placement, "admit", 0.0, decision.expected_wait_s, decision.allowed_wait_s)
        self._placer.forget(key)
        if decision.action is Action.SHED:
            raise Shed(decision, 0.0, queued=False)
        self._lengths_changed()
        self._kick()
        try:
            outcome = await future
        except BaseException:  # the client left while held
            if future.done() and not future.cancelled() and isinstance(future.result(), Placement):
                self._placer.forget(key)  # dispatched just as it left: undo the booking and the charge
                self.finished(key, None)
            elif self.queue.remove(key):
                self._lengths_changed()
            raise
        waited = self._clock() - now
        if isinstance(outcome, Decision):
            raise Shed(outcome, waited, queued=True)
        return Turn(outcome, "queue", waited, decision.expected_wait_s, decision.allowed_wait_s)

    def finished(self, key: str, used: tuple[Placement, int, int] | None) -> None:
        """A dispatched request ended: charge its tenant what it really cost (nothing when it
        never started: `used` None), and try the held ones (room was freed)."""
        actual = 0.0
        if used is not None:
            placement, prompt, completion = used
            actual = gpu_seconds(profile_named(placement.chosen.profile) or self._fallback, prompt, completion)
        self.queue.finished(key, actual)
        if len(self.queue.queue):
            self._kick()

    def held(self) -> int:
        return len(self.queue.queue)

    # ---- the retry task ---------------------------------------------------------------------
    def _kick(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Retry while anything is held; then stop (the next held request starts it again)."""
        while len(self.queue.queue):
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self._retry_once()
            except Exception:  # noqa: BLE001 - a bug here must not strand the held requests
                logger.exception("the fair queue's retry failed; shedding what it holds")
                self._shed_all()
        self._lengths_changed()

    def _retry_once(self) -> None:
        now = self._clock()
        for waiting, decision in self.queue.expire(now):
            _resolve(waiting, decision)
        self.queue.retry(now, self._placing, has_room=lambda: True, dispatch=self._dispatch)
        self._lengths_changed()

    def _dispatch(self, waiting: Waiting, placement: Placement) -> None:
        if waiting.payload.future.done():  # its client left in this very step: not dispatched
            self.queue.finished(waiting.key, 0.0)
            return
        self._placer.dispatched(placement, waiting.key, self._clock())
        waiting.payload.future.set_result(placement)

    def _shed_all(self) -> None:
        for waiting, decision in self.queue.expire(float("inf")):
            _resolve(waiting, decision)

    def _lengths_changed(self) -> None:
        if self._on_lengths is not None:
            self._on_lengths(self.queue.queue.lengths())


def _resolve(waiting: Waiting, outcome: Placement | Decision) -> None:
    if not waiting.payload.future.done():
        waiting.payload.future.set_result(outcome)


def allowed_for_replacement(pools: Iterable, context_limit: int, cap: int) -> frozenset[str]:
    """The pools a held request may be placed on again: those its admission allowed whose context
    holds at least the limit it was admitted under (its granted max_tokens still fits)."""
    return frozenset(p.name for p in pools if p.context_limit(cap) >= context_limit)
