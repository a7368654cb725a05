"""The router's memory of which replica it sent which prefix to. Pure (no Ray, no clock).

Per replica, an LRU of prefix-chain segments (common.prefix_cache.ChainCache: the engine's chain
rules) bounded by that replica's KV pool (the engine caches in all of it: segments running
requests share, and free KV until new work needs it), so the router forgets a prefix about when
the engine would have evicted it. Keys are the cumulative
prefix hashes of common/prefix_keys.py: a later turn of a chat walks its chain from the
system prompt and finds the replica that served the earlier turns (the longest match wins in the
prediction, as the shortest prefill).

A dispatch is recorded on the predicted replica, and counts as cached there from when its
prefill is predicted done (`ready_at`): a prefix is in vLLM's cache only once computed, so
identical prompts sent together each prefill in full, wherever they go, and must not pile onto
one replica on the promise of a hit. If Serve started the request on another replica (the first
was full), `started` moves what that dispatch added to where it runs.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict

from common.prefix_cache import ChainCache, PrefixChain

# Dispatches whose start has not been seen yet, kept at most this many (a request that never
# starts must not be remembered forever).
PENDING_KEPT = 4096


class PrefixMemory:
    def __init__(self, default_capacity: int = 0) -> None:
        self._caches: dict[str, ChainCache] = {}
        self._default = default_capacity
        # request key -> [replica, chain, ready_at, keys that dispatch added there (None: not yet stored)]
        self._pending: OrderedDict[str, list] = OrderedDict()
        # (ready_at, order, request key) of dispatches not yet stored: `advance` pops only the due
        # ones instead of walking every pending dispatch on every request.
        self._due: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    def capacity(self, replica_id: str, tokens: int) -> None:
        """The replica's prefix cache holds at most `tokens` (its KV pool)."""
        cache = self._caches.get(replica_id)
        if cache is None:
            self._caches[replica_id] = ChainCache(tokens)
        elif cache.capacity != tokens:
            cache.capacity = tokens
            cache.store(())  # evicts down to the new bound

    def cached(self, replica_id: str, chain: PrefixChain) -> int:
        """Tokens of `chain`, from its start, this router last sent to the replica and it still
        holds (as of the last `advance`)."""
        cache = self._caches.get(replica_id)
        return cache.match(chain)[1] if cache is not None and chain else 0

    def sent(self, request_key: str, replica_id: str, chain: PrefixChain, ready_at: float | None = None) -> None:
        """The request, with its prefix chain, was dispatched to the replica; its prefill is
        predicted done at `ready_at` (None: count it cached at once)."""
        if not chain:
            return
        self._pending[request_key] = entry = [replica_id, chain, ready_at, None]
        while len(self._pending) > PENDING_KEPT:
            self._pending.popitem(last=False)
        if ready_at is None:
            self._store(entry)
        else:
            heapq.heappush(self._due, (ready_at, next(self._order), request_key))

    def _store(self, entry: list) -> None:
        cache = self._cache(entry[0])
        entry[3] = tuple(key for key, _ in entry[1] if key not in cache)
        cache.store(entry[1])

    def advance(self, now: float) -> None:
        """Prefixes whose prefill is predicted done by `now` are cached from now on."""
        while self._due and self._due[0][0] <= now:
            _, _, request_key = heapq.heappop(self._due)
            entry = self._pending.get(request_key)
            if entry is not None and entry[3] is None and entry[2] <= now:  # not forgotten, dropped or re-sent since
                self._store(entry)

    def started(self, request_key: str, replica_id: str) -> None:
        """The request started on `replica_id`: if not where it was sent, move its prefixes."""
        entry = self._pending.get(request_key)
        if entry is None or entry[0] == replica_id:
            return
        sent_to, chain, _, added = entry
        entry[0] = replica_id
        if added is not None:  # already counted as cached where it was sent
            self._cache(sent_to).discard(added)
            self._cache(replica_id, like=sent_to).store(chain)

    def forget(self, request_key: str) -> None:
        """The request never reached its replica: take back what its dispatch added."""
        entry = self._pending.pop(request_key, None)
        if entry is not None and entry[3] is not None:
            self._cache(entry[0]).discard(entry[3])

    def _cache(self, replica_id: str, like: str | None = None) -> ChainCache:
        cache = self._caches.get(replica_id)
        if cache is None:
            template = self._caches.get(like) if like else None
            cache = self._caches[replica_id] = ChainCache(template.capacity if template else self._default)
        return cache
