"""Magistral's defaults for what a request leaves out: sampling values and the system prompt."""

from __future__ import annotations

from collections.abc import Mapping


def with_default_sampling(sampling: Mapping[str, float], defaults: Mapping[str, float]) -> dict:
    """The request's values win; defaults (temperature 0.7, top_p 0.95) fill the gaps."""
    return {**defaults, **sampling}


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Prepend the model's system prompt unless the request brings its own."""
    if not system_prompt or any(m.get("role") == "system" for m in messages):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]
