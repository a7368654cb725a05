"""A request's prefix chain, as the router sees it: the cumulative prefixes of its prompt that an
engine's prefix cache may already hold (common.prefix_cache.PrefixChain: (key, tokens), shortest
first). Pure and cheap: it runs on every request.

- A chat: one entry after each message, in order: the system prompt, then each earlier turn
  (user message, the assistant's answer, ...), the last entry being the whole prompt. A later turn
  of a conversation therefore shares the entries of every earlier turn's prompt, which the router
  recorded on the replica that served it (router/routing/prefix_memory.py).
- A completion prompt: one entry every TEXT_BLOCK_BYTES bytes and one at its end (two prompts
  sharing a long head, e.g. the same few-shot examples, share the blocks of it).

Each key is a 64-bit BLAKE2b of everything before it (hashed incrementally: one pass over the
prompt's bytes), as vLLM chains each block's hash to its parent's. The chain keeps the first
entry and the last MAX_CHAIN - 1 (a long conversation: the system prompt and the recent turns).
Token counts are estimates, the bytes over BOUND_BYTES_PER_TOKEN as the admission's likely count;
the placer scales them to the prompt's count when it has one (`fit`).

Tenants: the keys do not include the tenant. vLLM's prefix cache shares identical prefixes
across all requests unless a request carries a `cache_salt`, which our replicas do not send, so
two tenants sending the same system prompt do share its blocks, and the router must predict what
the engine does. If replicas ever salt the cache per tenant (to close the timing side channel of a
shared cache), pass the same salt here (`salt`) and the keys follow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from common.prefix_cache import PrefixChain
from common.tokens import BYTES_PER_TOKEN_ESTIMATE

BYTES_PER_TOKEN = BYTES_PER_TOKEN_ESTIMATE  # the same estimate as the admission's
MAX_CHAIN = 24
TEXT_BLOCK_BYTES = 4096  # ~1k tokens
_MESSAGE_OVERHEAD_BYTES = 48  # role, keys and control tokens of one rendered message, roughly


def _content_bytes(message: dict) -> bytes:
    content = message.get("content")
    if isinstance(content, str):
        data = content.encode("utf-8")
    elif content is None:
        data = b""
    else:  # parts
        data = json.dumps(content, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    extra = message.get("tool_calls")
    if extra:
        data += b"\x1f" + json.dumps(extra, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return data


def _new_hash(salt: str | None):
    h = hashlib.blake2b(digest_size=8)
    if salt:
        h.update(salt.encode("utf-8") + b"\x00")
    return h


def _keep(indices: int) -> range | list[int]:
    """Which of `indices` boundaries the chain keeps: all, or the first and the last MAX_CHAIN - 1."""
    if indices <= MAX_CHAIN:
        return range(indices)
    return [0, *range(indices - MAX_CHAIN + 1, indices)]


def chat_chain(messages: Sequence[dict], salt: str | None = None) -> PrefixChain:
    """The chain of a chat's messages (system prompt included)."""
    if not messages:
        return ()
    keep = set(_keep(len(messages)))
    h = _new_hash(salt)
    chain, size = [], 0
    for i, message in enumerate(messages):
        data = _content_bytes(message)
        h.update(str(message.get("role", "")).encode("utf-8") + b"\x00" + data + b"\x1e")
        size += len(data) + _MESSAGE_OVERHEAD_BYTES
        if i in keep:
            chain.append((int.from_bytes(h.copy().digest(), "little"), max(1, size // BYTES_PER_TOKEN)))
    return _increasing(chain)


def text_chain(prompt: str, salt: str | None = None) -> PrefixChain:
    """The chain of a raw completion prompt: fixed blocks of its bytes, then its end."""
    if not prompt:
        return ()
    data = prompt.encode("utf-8")
    ends = list(range(TEXT_BLOCK_BYTES, len(data), TEXT_BLOCK_BYTES)) + [len(data)]
    keep = set(_keep(len(ends)))
    h = _new_hash(salt)
    chain, start = [], 0
    for i, end in enumerate(ends):
        h.update(data[start:end])
        start = end
        if i in keep:
            chain.append((int.from_bytes(h.copy().digest(), "little"), max(1, end // BYTES_PER_TOKEN)))
    return _increasing(chain)


def request_chain(kind: str, messages: Sequence[dict] | None, prompt: str | None,
                  salt: str | None = None) -> PrefixChain:
    """A chat's or a completion's chain (empty when there is nothing to share)."""
    if kind == "chat":
        return chat_chain(messages or (), salt)
    return text_chain(prompt or "", salt)


def fit(chain: PrefixChain, prompt_tokens: int) -> PrefixChain:
    """The chain with its estimates scaled so its last entry (the whole prompt) is `prompt_tokens`
    (the count the placement predicts with), still strictly increasing and within the prompt."""
    if not chain or chain[-1][1] == prompt_tokens:
        return chain
    scale = prompt_tokens / chain[-1][1]
    fitted, previous = [], 0
    for key, tokens in chain:
        tokens = max(previous + 1, round(tokens * scale))
        if tokens > prompt_tokens:
            break
        fitted.append((key, tokens))
        previous = tokens
    return tuple(fitted)


def _increasing(chain: list[tuple[int, int]]) -> PrefixChain:
    """Drop entries that add no token (an empty message) so token counts strictly increase."""
    out, previous = [], 0
    for key, tokens in chain:
        if tokens > previous:
            out.append((key, tokens))
            previous = tokens
    return tuple(out)
