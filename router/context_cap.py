"""The context cap: prompt tokens + max_tokens must fit a limit (40 960 for Magistral).

Pure arithmetic, no Ray or FastAPI, so every rule has a millisecond unit test.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import OverflowPolicy  # noqa: F401 - re-exported: the cap's policy


class ContextLengthExceeded(ValueError):
    """The request cannot fit; the message carries the real counts."""

    def __init__(self, message: str, *, prompt_tokens: int, limit: int):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.limit = limit


@dataclass(frozen=True)
class CompletionBudget:
    """How many completion tokens a request asks for once the cap is applied.

    `max_tokens` None means the client left it out: it becomes what is left of the limit of the
    pool that serves the request, which the pool choice knows and this step does not.
    """

    max_tokens: int | None
    clamped_from: int | None = None  # the client's value when it was clamped


def apply_cap(
    prompt_tokens: int, max_tokens: int | None, cap: int, policy: OverflowPolicy
) -> CompletionBudget:
    """Check a prompt against the cap and clamp or refuse an oversized max_tokens."""
    if prompt_tokens >= cap:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {cap} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens, which leaves no room for a completion. "
            "Please reduce the length of the messages.",
            prompt_tokens=prompt_tokens,
            limit=cap,
        )
    if max_tokens is None or prompt_tokens + max_tokens <= cap:
        return CompletionBudget(max_tokens)
    if policy is OverflowPolicy.STRICT:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {cap} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages "
            "or completion.",
            prompt_tokens=prompt_tokens,
            limit=cap,
        )
    return CompletionBudget(cap - prompt_tokens, clamped_from=max_tokens)
