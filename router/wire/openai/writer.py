"""Replica events -> OpenAI response bodies and SSE chunks (chat and text completions)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from decimal import Decimal

from common.protocol import DELTA, END


def usage_body(end: dict, cost_usd: Decimal | None = None) -> dict:
    """OpenAI's usage, plus `cost_usd` (what the ledger bills for it) when it is known."""
    prompt, completion = end["prompt_tokens"], end["completion_tokens"]
    body = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": end["reasoning_tokens"]},
    }
    if cost_usd is not None:
        body["cost_usd"] = float(cost_usd)  # a float's repr is the shortest text that reads back: exact
    return body


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


@dataclass
class Collected:
    """A whole non-streamed answer, gathered from delta events."""

    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict] = field(default_factory=dict)  # by index, arguments joined
    end: dict | None = None

    def add(self, event: dict) -> None:
        if event["event"] == DELTA:
            self.reasoning.append(event["reasoning"])
            self.content.append(event["content"])
            for position, delta in enumerate(event.get("tool_calls") or []):
                self._add_tool_call(delta.get("index", position), delta)
        elif event["event"] == END:
            self.end = event

    def _add_tool_call(self, index: int, delta: dict) -> None:
        call = self.tool_calls.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if delta.get("id"):
            call["id"] = delta["id"]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        call["function"]["arguments"] += function.get("arguments") or ""

    def tool_call_list(self) -> list[dict]:
        return [self.tool_calls[i] for i in sorted(self.tool_calls)]


class ResponseWriter:
    """Builds bodies for one request; `kind` is 'chat' or 'completion'."""

    def __init__(self, kind: str, request_id: str, model: str):
        self.kind, self.id, self.model = kind, request_id, model
        self.created = int(time.time())
        self.object = "chat.completion" if kind == "chat" else "text_completion"
        self.chunk_object = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def full(self, collected: Collected, cost_usd: Decimal | None = None) -> dict:
        end = collected.end or {}
        reasoning, content = "".join(collected.reasoning), "".join(collected.content)
        finish = end.get("finish_reason", "stop")
        if self.kind == "chat":
            message = {
                "role": "assistant",
                "content": content,
                "reasoning_content": reasoning or None,
                "reasoning": reasoning or None,  # vLLM >= 0.17 name, for clients that read it
                "tool_calls": collected.tool_call_list(),
            }
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": reasoning + content, "logprobs": None, "finish_reason": finish}
        body = self._envelope(self.object, [choice])
        body["usage"] = usage_body(end, cost_usd) if end else None
        return body

    def chunk(self, event: dict | None, *, first: bool = False, usage: dict | None = None) -> dict:
        """An SSE chunk for a delta event, the opening role chunk (first) or the finish (END);
        `usage` rides along when the client asked for continuous usage stats."""
        finish = event["finish_reason"] if event and event["event"] == END else None
        if self.kind == "chat":
            delta: dict = {}
            if first:
                delta = {"role": "assistant", "content": ""}
            elif event and event["event"] == DELTA:
                if event["reasoning"]:
                    delta["reasoning_content"] = delta["reasoning"] = event["reasoning"]
                if event["content"]:
                    delta["content"] = event["content"]
                if event.get("tool_calls"):
                    delta["tool_calls"] = event["tool_calls"]
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            text = (event["reasoning"] + event["content"]) if event and event["event"] == DELTA else ""
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        body = self._envelope(self.chunk_object, [choice])
        if usage is not None:
            body["usage"] = usage
        return body

    def usage_chunk(self, end: dict, cost_usd: Decimal | None = None) -> dict:
        body = self._envelope(self.chunk_object, [])
        body["usage"] = usage_body(end, cost_usd)
        return body
