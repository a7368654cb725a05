"""The router's memory of which replica it sent which prefix to. Pure (no Ray, no clock).

Per replica, an LRU of prefix-chain segments (common.engine_model.ChainCache, the rule the engine
model's prefix cache follows) bounded by that replica's GPU profile `prefix_cache_tokens`, so the
router forgets a prefix about when the engine would have evicted it. Keys are the cumulative
prefix hashes of router/routing/prefix_keys.py: a later turn of a chat walks its chain from the
system prompt and finds the replica that served the earlier turns (the longest match wins in the
prediction, as the shortest prefill).

A dispatch is recorded on the predicted replica at once (a burst of one tenant's requests sees
where the first went); if Serve started the request on another replica (the first was full),
`moved` takes back what that dispatch added and records it where it runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from common.engine_model import ChainCache, PrefixChain

# Dispatches whose start has not been seen yet, kept at most this many (a request that never
# starts must not be remembered forever).
PENDING_KEPT = 4096


class PrefixMemory:
    def __init__(self, default_capacity: int = 0) -> None:
        self._caches: dict[str, ChainCache] = {}
        self._default = default_capacity
        # request key -> (replica, chain, keys that dispatch added there)
        self._pending: OrderedDict[str, tuple[str, PrefixChain, tuple[Hashable, ...]]] = OrderedDict()

    def capacity(self, replica_id: str, tokens: int) -> None:
        """The replica's prefix cache holds `tokens` (its GPU profile's prefix_cache_tokens)."""
        cache = self._caches.get(replica_id)
        if cache is None:
            self._caches[replica_id] = ChainCache(tokens)
        elif cache.capacity != tokens:
            cache.capacity = tokens
            cache.store(())  # evicts down to the new bound

    def cached(self, replica_id: str, chain: PrefixChain) -> int:
        """Tokens of `chain`, from its start, this router last sent to the replica and it still holds."""
        cache = self._caches.get(replica_id)
        return cache.match(chain)[1] if cache is not None and chain else 0

    def sent(self, request_key: str, replica_id: str, chain: PrefixChain) -> None:
        """The request, with its prefix chain, was dispatched to the replica."""
        if not chain:
            return
        cache = self._cache(replica_id)
        added = tuple(key for key, _ in chain if key not in cache)
        cache.store(chain)
        self._pending[request_key] = (replica_id, chain, added)
        while len(self._pending) > PENDING_KEPT:
            self._pending.popitem(last=False)

    def started(self, request_key: str, replica_id: str) -> None:
        """The request started on `replica_id`: if not where it was sent, move its prefixes."""
        pending = self._pending.pop(request_key, None)
        if pending is None:
            return
        sent_to, chain, added = pending
        if sent_to == replica_id:
            return
        self._cache(sent_to).discard(added)
        self._cache(replica_id, like=sent_to).store(chain)

    def _cache(self, replica_id: str, like: str | None = None) -> ChainCache:
        cache = self._caches.get(replica_id)
        if cache is None:
            template = self._caches.get(like) if like else None
            cache = self._caches[replica_id] = ChainCache(template.capacity if template else self._default)
        return cache
