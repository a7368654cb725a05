"""Prefix caches of chains, in tokens: what a replica's engine can reuse of a request's prompt.

A prefix chain is a request's cumulative shareable prefixes (a tenant's system prompt, each
earlier turn of its conversation, its own prompt, its prompt with its answer), each named by a key
chained over everything before it, as vLLM chains each KV block's hash to its parent's.

- `SharedKV`: the engine model's KV pool (common/engine_model.py), as vLLM's block pool keeps it:
  a segment computed once is shared, counted once, by every running request that uses it
  (reference counts), and when no request uses it, it stays cached in the free part of the pool,
  evicted least recently used first only when new KV needs the room.
- `ChainCache`: an LRU of segments bounded by a token count: the router's memory of what a
  replica holds (router/routing/prefix_memory.py), which cannot see the replica's free KV.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

# A prefix chain: (key, tokens) of a request's cumulative prefixes, shortest first, tokens strictly
# increasing. A key names the whole prefix up to it (a hash chained over everything before it), so
# any in-order subset of a chain is a chain too.
PrefixChain = Sequence[tuple[Hashable, int]]


def check_chain(chain: PrefixChain) -> None:
    previous = 0
    for _, tokens in chain:
        if tokens <= previous:
            raise ValueError("a prefix chain's token counts must be positive and strictly increasing")
        previous = tokens


class ChainCache:
    """An LRU of prefix-chain segments bounded by `capacity` tokens: what one replica's prefix
    cache holds. Each key holds its segment, the tokens between its parent entry and itself, so a
    prefix shared by many chains (a system prompt) is held, and counted, once. A chain matches
    as far as its entries are cached without a gap from its start (a segment whose parent was
    evicted cannot be reached, as vLLM finds a block only through its parent's hash).

    Used by the engine model (what the engine holds) and by the router's memory of what it sent
    where (router/routing/prefix_memory.py): the same rules, so the router forgets what the
    engine evicts."""

    __slots__ = ("capacity", "_entries", "_used")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, tuple[int, int]] = OrderedDict()  # key -> (segment, cumulative)
        self._used = 0

    @property
    def used_tokens(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def tokens(self, key: Hashable) -> int:
        """The cumulative tokens of the prefix `key` names, if cached (0: not cached)."""
        entry = self._entries.get(key)
        return entry[1] if entry else 0

    def match(self, chain: PrefixChain, limit: int | None = None) -> tuple[int, int]:
        """(entries, tokens) of `chain` cached from its start, among entries of at most `limit`
        tokens (the request's own chain entry counts, as given). Does not touch the LRU order."""
        entries = tokens = 0
        for key, cumulative in chain:
            if (limit is not None and cumulative > limit) or key not in self._entries:
                break
            entries, tokens = entries + 1, cumulative
        return entries, tokens

    def store(self, chain: PrefixChain) -> None:
        """Cache (or refresh) every entry of `chain`, deepest first, so its root is the most
        recently used; then evict the least recently used segments beyond the capacity. A
        segment larger than the whole cache is not stored."""
        entries = self._entries
        previous = [0] + [tokens for _, tokens in chain[:-1]]
        for (key, cumulative), parent in zip(reversed(chain), reversed(previous)):
            held = entries.get(key)
            if held is not None:
                entries.move_to_end(key)
                continue
            segment = cumulative - parent
            if segment > self.capacity:
                continue
            entries[key] = (segment, cumulative)
            self._used += segment
        while self._used > self.capacity:
            _, (segment, _) = entries.popitem(last=False)
            self._used -= segment

    def discard(self, keys: Sequence[Hashable]) -> None:
        for key in keys:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._used -= entry[0]


@dataclass(eq=False)
class _Segment:
    size: int  # tokens between its parent entry and itself
    cumulative: int  # tokens of the whole prefix it ends
    refs: int = 0  # running requests using it


class SharedKV:
    """The KV pool of one engine, in tokens. `in_use` = tokens only one request holds (its
    private KV) + segments running requests share, each counted once; cached segments no request
    uses fill the rest of the pool and are evicted, least recently used first, when `in_use`
    grows into their room. A chain matches as far as its segments exist without a gap from its
    start (a segment whose parent was evicted cannot be found, as in vLLM).

    The engine model keeps the private tokens' count (`grow`, `shrink`) and asks here to hold,
    publish and release segments; capacity checks stay the engine's (`in_use` against `capacity`)."""

    __slots__ = ("capacity", "in_use", "_segments", "_free", "_free_tokens")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._segments: dict[Hashable, _Segment] = {}
        self._free: OrderedDict[Hashable, None] = OrderedDict()  # refs == 0, least recently used first
        self._free_tokens = 0

    @property
    def cached_free_tokens(self) -> int:
        return self._free_tokens

    def __contains__(self, key: Hashable) -> bool:
        return key in self._segments

    def tokens(self, key: Hashable) -> int:
        segment = self._segments.get(key)
        return segment.cumulative if segment else 0

    def match(self, chain: PrefixChain, limit: int | None = None) -> tuple[int, int, int]:
        """(entries, tokens, revived) of `chain` cached from its start among entries of at most
        `limit` tokens; `revived`: how many of those tokens no running request holds now (holding
        them puts them back in use). Does not touch the LRU order."""
        entries = tokens = revived = 0
        for key, cumulative in chain:
            segment = self._segments.get(key)
            if segment is None or (limit is not None and cumulative > limit):
                break
            entries, tokens = entries + 1, cumulative
            revived += segment.size if segment.refs == 0 else 0
        return entries, tokens, revived

    def hold(self, keys: Sequence[Hashable]) -> None:
        """A request admitted with these cached segments uses them (they must exist)."""
        for key in keys:
            segment = self._segments[key]
            if segment.refs == 0:
                del self._free[key]
                self._free_tokens -= segment.size
                self.in_use += segment.size
            segment.refs += 1
        self._trim()

    def publish(self, key: Hashable, size: int, cumulative: int) -> bool:
        """A request computed a whole segment no one had cached: it becomes shared, held by that
        request (the caller moves its `size` tokens out of the request's private count, which
        `in_use` already holds). False: the key exists (the request keeps its own copy private, as
        vLLM keeps a block computed twice)."""
        segment = self._segments.get(key)
        if segment is not None:
            if segment.refs == 0:
                self._free.move_to_end(key)
            return False
        self._segments[key] = _Segment(size, cumulative, refs=1)
        return True

    def release(self, keys: Sequence[Hashable]) -> None:
        """A request that held these segments left (finished, preempted, cancelled): those no one
        else holds stay cached, free. Given in chain order, they are freed deepest first, so a
        shared root is the most recently used (vLLM frees a request's blocks tail first)."""
        for key in reversed(keys):
            segment = self._segments[key]
            segment.refs -= 1
            if segment.refs == 0:
                self.in_use -= segment.size
                self._free[key] = None
                self._free_tokens += segment.size
        self._trim()

    def grow(self, tokens: int) -> None:
        """Private KV allocated (the caller checked the room against `in_use`)."""
        self.in_use += tokens
        self._trim()

    def shrink(self, tokens: int) -> None:
        self.in_use -= tokens

    def _trim(self) -> None:
        """Cached free segments give way to KV in use, least recently used first."""
        while self._free and self.in_use + self._free_tokens > self.capacity:
            key, _ = self._free.popitem(last=False)
            self._free_tokens -= self._segments.pop(key).size
