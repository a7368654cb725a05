"""Routing policies over a simulated fleet, behind one interface.

A policy decides in two steps, as the real router does: `queue` once when a request arrives (the
ingress picks a pool and books its work on that pool), then `choose` a replica, again each time
a slot frees while the request waits in the router's FIFO (None: nobody has room yet). Every
policy obeys each replica's max_ongoing_requests; only the pool-aware ones obey pool limits.

- round_robin: every replica in turn, blind to pools and lengths.
- pow2: Ray Serve's default PowerOfTwoChoicesRequestRouter over the whole fleet.
- length_only: our pool choice by prompt length without spill, then pow2 inside the pool.
- router: the router's own rule, run through its own code. The pool: router.routing.pools.choose_pool
  over the outstanding tokens of a router.routing.load_book.LoadBook per pool, booked on arrival and
  released on finish as the ingress books `common.protocol.work_tokens`. The replica: the least
  loaded of that pool by router.routing.load_book's score, each replica's load read from a second
  LoadBook, booked when routed and released on finish as TokenLoadRouter does.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bench.workload import CONTEXT_CAP, Job
from common.protocol import STAT_TIME, work_tokens
from router.context_cap import ContextLengthExceeded
from common.engine_model import published_stats
from router.routing.placer import Placement, Placer, PoolTerms
from router.routing.load_book import LoadBook, score
from router.routing.pools import PoolLimits, choose_pool

FLEET_QUEUE = "fleet"  # the one router FIFO of the fleet-wide baselines
REJECTED = "rejected"  # the queue of requests no pool can hold (answered 400, never served)


@dataclass(eq=False)
class Replica:
    replica_id: str
    pool: str
    max_ongoing: int  # Serve's max_ongoing_requests: requests it holds, running or queued in its engine
    engine: Any = None  # the simulator's EngineModel; policies do not look at it
    ongoing: int = 0
    index: int = 0  # position in Fleet.replicas
    busy: bool = False  # a step is in flight (simulator state)
    pending: Any = None  # that step's StepResult, applied when it ends (simulator state)

    @property
    def has_room(self) -> bool:
        return self.ongoing < self.max_ongoing


class _RoomSet:
    """Replicas with a free slot: O(1) add, remove and random pick (swap-remove list + index)."""

    def __init__(self) -> None:
        self.items: list[Replica] = []
        self._at: dict[int, int] = {}

    def add(self, replica: Replica) -> None:
        if replica.index not in self._at:
            self._at[replica.index] = len(self.items)
            self.items.append(replica)

    def discard(self, replica: Replica) -> None:
        at = self._at.pop(replica.index, None)
        if at is None:
            return
        last = self.items.pop()
        if last is not replica:
            self.items[at] = last
            self._at[last.index] = at

    def __len__(self) -> int:
        return len(self.items)


class Fleet:
    """Replicas grouped by pool, and which of them have room (whole fleet and per pool)."""

    def __init__(self, pools: Sequence[PoolLimits], replicas: Sequence[Replica], cap: int = CONTEXT_CAP):
        self.pools = tuple(pools)  # cheapest first, as in configs/production.yaml
        self.limits = {p.name: p for p in self.pools}
        self.cap = cap
        self.now = 0.0  # the simulation's virtual time (the event loop keeps it)
        self.replicas = list(replicas)
        self.by_pool: dict[str, list[Replica]] = {p.name: [] for p in self.pools}
        self._room: dict[str | None, _RoomSet] = {None: _RoomSet()} | {p.name: _RoomSet() for p in self.pools}
        for i, replica in enumerate(self.replicas):
            replica.index = i
            self.by_pool[replica.pool].append(replica)
            if replica.has_room:
                self._room[None].add(replica)
                self._room[replica.pool].add(replica)

    def with_room(self, pool: str | None = None) -> list[Replica]:
        """Replicas below max_ongoing_requests, of one pool or (None) of the fleet. Do not mutate."""
        return self._room[pool].items

    def hold(self, replica: Replica) -> None:
        replica.ongoing += 1
        if not replica.has_room:
            self._room[None].discard(replica)
            self._room[replica.pool].discard(replica)

    def release(self, replica: Replica) -> None:
        replica.ongoing -= 1
        if replica.has_room:
            self._room[None].add(replica)
            self._room[replica.pool].add(replica)


class Policy(Protocol):
    name: str
    respects_pool_limits: bool  # False: every replica serves the full context (a naive deployment)

    def queue(self, job: Job, fleet: Fleet) -> str:
        """Called once on arrival: the FIFO the job waits in (a pool, FLEET_QUEUE or REJECTED)."""

    def choose(self, job: Job, fleet: Fleet) -> Replica | None: ...

    def on_route(self, job: Job, replica: Replica) -> None: ...

    def on_finish(self, job: Job, replica: Replica) -> None: ...


def _pow2(candidates: list[Replica], rng: random.Random) -> Replica | None:
    """Serve's power of two choices: two distinct random candidates, the one with fewer requests."""
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    a, b = rng.sample(candidates, 2)
    return b if b.ongoing < a.ongoing else a


class _FleetWide:
    """One router FIFO for the whole fleet, every replica serving the full context; no bookkeeping."""

    respects_pool_limits = False

    def queue(self, job: Job, fleet: Fleet) -> str:
        return FLEET_QUEUE

    def on_route(self, job: Job, replica: Replica) -> None:
        pass

    def on_finish(self, job: Job, replica: Replica) -> None:
        pass


class RoundRobin(_FleetWide):
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, job: Job, fleet: Fleet) -> Replica | None:
        if not fleet.with_room():
            return None
        replicas = fleet.replicas
        for step in range(len(replicas)):  # the next in turn that has room
            replica = replicas[(self._next + step) % len(replicas)]
            if replica.has_room:
                self._next = (replica.index + 1) % len(replicas)
                return replica
        return None


class PowerOfTwo(_FleetWide):
    name = "pow2"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def choose(self, job: Job, fleet: Fleet) -> Replica | None:
        return _pow2(fleet.with_room(), self._rng)


class _PoolAware:
    """Pool chosen once per request by router.routing.pools.choose_pool; subclasses pick the replica."""

    respects_pool_limits = True

    def _outstanding(self) -> Mapping[str, int]:
        """Outstanding tokens per pool, as choose_pool reads them to spill (none: never spill)."""
        return {}

    def _choose_pool(self, job: Job, fleet: Fleet) -> str | None:
        """The request's pool, or None if no pool holds it. Clients leave max_tokens out (None): the
        pool is chosen by prompt, and the engine may generate up to that pool's context limit."""
        try:
            return choose_pool(job.prompt_tokens, None, fleet.pools, self._outstanding(), fleet.cap).pool.name
        except ContextLengthExceeded:
            return None


class LengthOnly(_PoolAware):
    name = "length_only"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._pool_of: dict[str, str] = {}

    def queue(self, job: Job, fleet: Fleet) -> str:
        pool = self._choose_pool(job, fleet)
        if pool is None:
            return REJECTED
        self._pool_of[job.job_id] = pool
        return pool

    def choose(self, job: Job, fleet: Fleet) -> Replica | None:
        return _pow2(fleet.with_room(self._pool_of[job.job_id]), self._rng)

    def on_route(self, job: Job, replica: Replica) -> None:
        pass

    def on_finish(self, job: Job, replica: Replica) -> None:
        self._pool_of.pop(job.job_id, None)


class LeastLoaded:
    """An index over a LoadBook: one pool's replicas least loaded first, for O(log n) choices.

    ranked() sorts the whole pool on every request, which dominates the simulation with hundreds
    of replicas. This heap orders replicas by the same key, (score(book.load(replica_id)),
    replica_id), so its first replica with room is ranked(loads)[0] over the replicas with room,
    that is booking_target(...) (a unit test checks that). It holds no load of its own: call
    `refresh` after booking or releasing on a replica, and it re-reads that replica's load from the
    book. Entries go stale when a replica is refreshed and are dropped when they surface.
    """

    def __init__(self, book: LoadBook, replicas: Sequence[Replica]) -> None:
        self._book = book
        self._heap: list[tuple[tuple, int, Replica]] = []
        self._current: dict[str, int] = {}  # replica_id -> sequence number of its live entry
        self._seq = 0
        for replica in replicas:
            self.refresh(replica)

    def refresh(self, replica: Replica) -> None:
        """Re-key `replica` by its load in the book."""
        self._seq += 1
        self._current[replica.replica_id] = self._seq
        key = (score(self._book.load(replica.replica_id)), replica.replica_id)
        heapq.heappush(self._heap, (key, self._seq, replica))
        if len(self._heap) > 4 * len(self._current) + 64:  # too many stale entries: rebuild
            self._heap = [e for e in self._heap if self._current[e[2].replica_id] == e[1]]
            heapq.heapify(self._heap)

    def first_with_room(self) -> Replica | None:
        heap, full, chosen = self._heap, [], None
        while heap:
            entry = heap[0]
            if self._current[entry[2].replica_id] != entry[1]:
                heapq.heappop(heap)  # stale
            elif entry[2].has_room:
                chosen = entry[2]
                break
            else:
                full.append(heapq.heappop(heap))  # at max_ongoing_requests: not a candidate now
        for entry in full:
            heapq.heappush(heap, entry)
        return chosen


class RouterPolicy(_PoolAware):
    """The router's default policy: spill by pool outstanding tokens (the ingress), then the least
    outstanding tokens inside the pool (TokenLoadRouter), both kept in router.routing.load_book's
    LoadBook. The simulator has no stats reports, so a replica's load is what this router booked."""

    name = "router"

    def __init__(self) -> None:
        self.pool_book = LoadBook()  # the ingress's: work sent to each pool and not yet finished
        self.replica_book = LoadBook()  # TokenLoadRouter's: work routed to each replica, not finished
        self._index: dict[str, LeastLoaded] = {}  # per pool, over replica_book
        self._work: dict[str, int] = {}  # the request's work_tokens, as the request carries them

    def _outstanding(self) -> Mapping[str, int]:
        return self.pool_book.snapshot_tokens()  # what the ingress passes choose_pool

    def queue(self, job: Job, fleet: Fleet) -> str:
        pool = self._choose_pool(job, fleet)
        if pool is None:
            return REJECTED
        # As the ingress: the granted max_tokens is what the pool leaves after the prompt, and
        # the work is booked on the pool when the request is dispatched to it.
        granted = fleet.limits[pool].context_limit(fleet.cap) - job.prompt_tokens
        work = work_tokens(job.prompt_tokens, granted)
        self._work[job.job_id] = work
        self.pool_book.book(pool, job.job_id, work)
        if pool not in self._index:
            self._index[pool] = LeastLoaded(self.replica_book, fleet.by_pool[pool])
        return pool

    def choose(self, job: Job, fleet: Fleet) -> Replica | None:
        """booking_target over the pool ranked by replica_book (None while no replica has room)."""
        return self._index[self.pool_book.booked_on(job.job_id)].first_with_room()

    def on_route(self, job: Job, replica: Replica) -> None:
        """As TokenLoadRouter.on_request_routed: book the request's work on the replica."""
        self.replica_book.book(replica.replica_id, job.job_id, self._work[job.job_id])
        self._index[replica.pool].refresh(replica)

    def on_finish(self, job: Job, replica: Replica) -> None:
        """As TokenLoadRouter.on_request_completed and the ingress's release: both books let go."""
        self.replica_book.release(job.job_id)
        self._index[replica.pool].refresh(replica)
        self.pool_book.release(job.job_id)
        del self._work[job.job_id]


class PrefixAffinity(_FleetWide):
    """Like Ray Serve LLM's PrefixCacheAffinityRouter (ray.llm ... prefix_aware_router.py, its
    defaults) over the whole fleet. While the replicas' request counts are balanced (max - min <=
    `imbalance`): the replicas holding the longest prefix of the request's prompt, if it is at
    least `match_rate` of the prompt, else the replicas whose prefix tree is smallest; of those,
    the one with the fewest requests. Imbalanced: power of two. Its tree holds every prompt routed
    to a replica and never evicts (Ray's default); here it is the request's prefix chain (the same
    chains the predicted policy uses), per replica a set of chain keys and their tokens."""

    name = "prefix_affinity"

    def __init__(self, seed: int = 0, imbalance: int = 10, match_rate: float = 0.1) -> None:
        self._rng = random.Random(seed)
        self._imbalance = imbalance
        self._match_rate = match_rate
        self._tree: dict[str, dict[str, int]] = {}  # replica -> chain key -> its segment's tokens
        self._size: dict[str, int] = {}  # replica -> tokens in its tree

    def choose(self, job: Job, fleet: Fleet) -> Replica | None:
        candidates = fleet.with_room()
        if not candidates:
            return None
        counts = [r.ongoing for r in candidates]
        if max(counts) - min(counts) > self._imbalance:
            return _pow2(candidates, self._rng)
        chain = job.prompt_chain
        best, matched = 0, []
        for r in candidates:
            tree = self._tree.get(r.replica_id, {})
            depth = 0
            for key, tokens in chain:
                if key not in tree:
                    break
                depth = tokens
            if depth > best:
                best, matched = depth, [r]
            elif depth == best and depth:
                matched.append(r)
        if not matched or best < self._match_rate * job.prompt_tokens:
            smallest = min(self._size.get(r.replica_id, 0) for r in candidates)
            matched = [r for r in candidates if self._size.get(r.replica_id, 0) == smallest]
        return min(matched, key=lambda r: (r.ongoing, r.replica_id))

    def on_route(self, job: Job, replica: Replica) -> None:
        tree = self._tree.setdefault(replica.replica_id, {})
        previous = 0
        for key, tokens in job.prompt_chain:
            if key not in tree:
                tree[key] = tokens - previous
                self._size[replica.replica_id] = self._size.get(replica.replica_id, 0) + tokens - previous
            previous = tokens


class Predicted(_FleetWide):
    """The live router's predicted placement (router.routing.placer.Placer), run through its own
    code: every replica of every pool publishes what the stub replica publishes from its engine
    model (common.engine_model.published_stats), the placer turns those rows into views and
    predicts. Pool limits follow the hardware (every replica whose KV holds the context serves
    it), as for pow2. Stats are published at the simulation's time, never stale, so no dispatch is
    added to them (the placer forgets its recent dispatches as the live one does)."""

    name = "predicted"

    def __init__(self, slo=None, usd_per_hour: Mapping[str, float] | None = None) -> None:
        self._slo = slo
        self._usd = dict(usd_per_hour or {})
        self._placer: Placer | None = None
        self._placed: dict[str, tuple[Placement, float]] = {}  # chosen, not yet routed

    def _placer_for(self, fleet: Fleet) -> Placer:
        if self._placer is None:
            terms = {pool: PoolTerms(pool, replicas[0].engine.profile, self._usd.get(pool, 1.0), fleet.cap)
                     for pool, replicas in fleet.by_pool.items() if replicas}
            self._placer = Placer(terms, self._slo)
        return self._placer

    def choose(self, job: Job, fleet: Fleet) -> Replica | None:
        candidates = fleet.with_room()
        if not candidates:
            return None
        placer = self._placer_for(fleet)
        now = fleet.now
        rows = [(r.pool, r.replica_id, published_stats(r.engine.stats(), r.engine.profile.name) | {STAT_TIME: now})
                for r in candidates]
        # The prefix each replica holds is the placer's memory of what it sent where (the
        # engine's own cache is not looked at); the chain is what the router sees of the prompt.
        placement = placer.place(placer.views(rows, now), job.prompt_tokens, fleet.by_pool.keys(), job.prompt_chain)
        if placement is None:
            return None
        self._placed[job.job_id] = (placement, now)
        return next(r for r in candidates if r.replica_id == placement.chosen.replica_id)

    def on_route(self, job: Job, replica: Replica) -> None:
        placement, now = self._placed.pop(job.job_id)
        self._placer.dispatched(placement, job.job_id, now)

    def on_finish(self, job: Job, replica: Replica) -> None:
        """The router sees each answer's completion tokens (the likely output learns from them)."""
        if self._placer is not None:
            self._placer.finished(job.output_tokens)


POLICIES = ("round_robin", "pow2", "length_only", "router")
RENAMED = {"ours": "router"}  # old registry names, for a helpful error


def _predicted() -> Predicted:
    from bench.sim.fleets import H100_USD_PER_GPU_HOUR, L40S_USD_PER_GPU_HOUR, SLO

    return Predicted(SLO(), {"long": H100_USD_PER_GPU_HOUR, "short": 2 * L40S_USD_PER_GPU_HOUR})


def make_policy(name: str, seed: int = 0) -> Policy:
    """A fresh policy (they keep state: one per simulation)."""
    factories = {"round_robin": RoundRobin, "pow2": lambda: PowerOfTwo(seed),
                 "length_only": lambda: LengthOnly(seed), "router": RouterPolicy, "predicted": _predicted,
                 "prefix_affinity": lambda: PrefixAffinity(seed)}
    if name not in factories:
        hint = f" (renamed {RENAMED[name]!r})" if name in RENAMED else ""
        raise ValueError(f"unknown policy {name!r}{hint}; known: {', '.join(POLICIES)}")
    return factories[name]()
