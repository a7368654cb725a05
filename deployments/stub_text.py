"""Deterministic text for the STUB replica: `<think>...</think>` then an answer.

Same input, same text, so tests can rely on it. It is not a model and says so in its answer.
"""

from __future__ import annotations

import hashlib

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def last_user_text(messages: list[dict] | None, prompt: str | None) -> str:
    if prompt is not None:
        return prompt
    for message in reversed(messages or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content or ""
    return ""


def stub_completion_text(user_text: str, pool: str, seed: int | None = None) -> str:
    words = user_text.split()
    digest = hashlib.sha256(f"{seed}|{user_text}".encode()).digest()
    picks = " ".join(_WORDS[b % len(_WORDS)] for b in digest[:12])
    opening = " ".join(words[:8])
    return (
        "<think>\n"
        f"The user wrote {len(words)} words, starting with \"{opening}\". "
        "This is the stub model, so I will answer with fixed words.\n"
        "</think>\n\n"
        f"Stub answer from pool {pool}: {picks}."
    )


# What the stub writes after its answer when told to ignore the end of text (`ignore_eos`):
# benchmarks ask for an exact output length, as vLLM's own benchmarks do.
FILLER_TEXT = " " + " ".join(_WORDS)
