"""Streaming split of Magistral output into thinking and answer.

Magistral Small 2506 writes `<think>...</think>` as plain text and then the answer. Text that does
not open with `<think>` is all answer. Tags may arrive cut across chunks, so a possible partial tag
is held back until the next chunk decides it. Used by the stub replica; the vLLM replica uses the
engine's own reasoning parser.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ThinkSplitter:
    def __init__(self) -> None:
        self._state = "start"  # start -> think -> answer, or start -> answer
        self._held = ""
        self._trim_next = False  # drop newlines right after a tag

    @property
    def thinking(self) -> bool:
        """True while text fed so far belongs to the thinking part (or may still)."""
        return self._state in ("start", "think")

    def feed(self, text: str) -> tuple[str, str]:
        """Returns (reasoning, content) that can be emitted now."""
        buf = self._held + text
        self._held = ""
        reasoning = content = ""
        if self._state == "start":
            stripped = buf.lstrip()
            if stripped.startswith(OPEN):
                self._state, buf, self._trim_next = "think", stripped[len(OPEN):], True
            elif OPEN.startswith(stripped):
                self._held = buf  # could still become <think>
                return "", ""
            else:
                self._state = "answer"
        if self._state == "think":
            buf = self._trim(buf)
            end = buf.find(CLOSE)
            if end < 0:
                keep = _partial_suffix(buf, CLOSE)
                self._held = buf[len(buf) - keep:] if keep else ""
                return buf[: len(buf) - keep], ""
            reasoning, buf = buf[:end], buf[end + len(CLOSE):]
            self._state, self._trim_next = "answer", True
        content = self._trim(buf)
        return reasoning, content

    def _trim(self, text: str) -> str:
        if self._trim_next:
            stripped = text.lstrip("\n")
            if stripped:
                self._trim_next = False
            return stripped
        return text

    def finish(self) -> tuple[str, str]:
        """Flush what was held back at the end of the stream."""
        held, self._held = self._held, ""
        if self._state == "think":
            return held, ""
        return "", held


class RawText(ThinkSplitter):
    """No split: all text is content, tags included (text completions). `thinking` still follows
    the text, so reasoning tokens are counted the same way."""

    def feed(self, text: str) -> tuple[str, str]:
        super().feed(text)
        return "", text

    def finish(self) -> tuple[str, str]:
        return "", ""
