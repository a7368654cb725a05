"""Replica events -> Anthropic Message bodies and SSE frames.

Non-streamed: `MessageWriter.full` builds a Message (content: a thinking block when the model
thought, a text block when it answered, a tool_use block per call). Streamed: `StreamWriter`
turns the same events into Anthropic's event sequence:

    message_start, ping,
    (content_block_start, content_block_delta*, content_block_stop) per block, in content order,
    message_delta (stop_reason, stop_sequence, usage), message_stop

A block is closed before the next opens. Thinking blocks carry an empty signature: Magistral's
thinking is not signed, and thinking sent back in a later request is dropped anyway.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal

from common.protocol import DELTA
from router.wire.openai.writer import Collected
from router.wire.anthropic.errors import error_body
from router.wire.anthropic.translate import mistral_call_id

_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


def message_id(request_id: str) -> str:
    return f"msg_{request_id}"


def stop_reason(finish_reason: str | None, stop_sequence: str | None = None, *, tool_use: bool = False) -> str:
    """The replica's finish_reason -> Anthropic's stop_reason. 'stop' is a stop sequence when END
    names one, and tool_use when the answer holds tool calls (vLLM finishes a call forced by a
    named tool_choice with 'stop'); anything else ends the turn."""
    if finish_reason in _STOP_REASONS:
        return _STOP_REASONS[finish_reason]
    if stop_sequence:
        return "stop_sequence"
    return "tool_use" if tool_use else "end_turn"


def usage_body(end: dict, cost_usd: Decimal | None = None) -> dict:
    """Anthropic's usage from END, plus `cost_usd` (what the ledger bills) when it is known."""
    body = {
        "input_tokens": end.get("prompt_tokens") or 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": end.get("completion_tokens") or 0,
    }
    if end.get("reasoning_tokens") is not None:
        body["output_tokens_details"] = {"thinking_tokens": end["reasoning_tokens"]}
    if cost_usd is not None:
        body["cost_usd"] = float(cost_usd)  # as the OpenAI route: the shortest exact repr
    return body


def count_tokens_body(input_tokens: int) -> dict:
    """The answer of POST /v1/messages/count_tokens."""
    return {"input_tokens": input_tokens}


def frame(name: str, data: dict) -> str:
    """One SSE frame: Anthropic names every event and repeats the name as data.type."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _tool_input(arguments: str) -> dict:
    """A call's arguments as the object Anthropic's `input` is ({} when empty or not an object)."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
        json.dumps(value, allow_nan=False)  # NaN, Infinity, 1e999: no JSON response can carry them
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _call_id(raw: str | None, message: str, index: int) -> str:
    return raw or mistral_call_id(f"{message}:{index}")


class MessageWriter:
    """Builds the non-streamed answer for one request."""

    def __init__(self, message_id: str, model: str):
        self.id, self.model = message_id, model

    def full(self, collected: Collected | Iterable[dict], cost_usd: Decimal | None = None) -> dict:
        if not isinstance(collected, Collected):
            events, collected = collected, Collected()
            for event in events:
                collected.add(event)
        end = collected.end or {}
        reasoning, text = "".join(collected.reasoning), "".join(collected.content)
        content: list[dict] = []
        if reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        if text:
            content.append({"type": "text", "text": text})
        for index in sorted(collected.tool_calls):
            call = collected.tool_calls[index]
            content.append({"type": "tool_use", "id": _call_id(call["id"], self.id, index),
                            "name": call["function"]["name"], "input": _tool_input(call["function"]["arguments"])})
        stop_sequence = end.get("stop_sequence")
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason(end.get("finish_reason"), stop_sequence, tool_use=bool(collected.tool_calls)),
            "stop_sequence": stop_sequence,
            "usage": usage_body(end, cost_usd),
        }


class StreamWriter:
    """The SSE frames of one streamed answer: `start()`, then `feed(event)` per DELTA, then
    `finish(end)`; `error()` reports a failure in-band once the headers are out."""

    def __init__(self, message_id: str, model: str, input_tokens: int | None):
        self.id, self.model, self.input_tokens = message_id, model, input_tokens or 0
        self._index = -1  # the latest block's index
        self._open: str | None = None  # kind of the open block: 'thinking', 'text', 'tool:<i>'
        self._tool_blocks: dict[int, int] = {}  # tool-call index -> block index

    def start(self) -> list[str]:
        message = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 1},
        }
        return [frame("message_start", {"type": "message_start", "message": message}), self.ping()]

    def ping(self) -> str:
        return frame("ping", {"type": "ping"})

    def feed(self, event: dict) -> list[str]:
        if event.get("event") != DELTA:
            return []
        out: list[str] = []
        if event.get("reasoning"):
            out += self._switch("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta(self._index, {"type": "thinking_delta", "thinking": event["reasoning"]}))
        if event.get("content"):
            out += self._switch("text", {"type": "text", "text": ""})
            out.append(self._delta(self._index, {"type": "text_delta", "text": event["content"]}))
        for position, call in enumerate(event.get("tool_calls") or []):
            tool = call.get("index", position)
            function = call.get("function") or {}
            if tool not in self._tool_blocks:
                block = {"type": "tool_use", "id": _call_id(call.get("id"), self.id, tool),
                         "name": function.get("name") or "", "input": {}}
                out += self._switch(f"tool:{tool}", block)
                self._tool_blocks[tool] = self._index
            if function.get("arguments"):
                # A piece for a call whose block was closed still goes to that block's index.
                out.append(self._delta(self._tool_blocks[tool],
                                       {"type": "input_json_delta", "partial_json": function["arguments"]}))
        return out

    def finish(self, end: dict, cost_usd: Decimal | None = None) -> list[str]:
        out = self._close()
        stop_sequence = end.get("stop_sequence")
        reason = stop_reason(end.get("finish_reason"), stop_sequence, tool_use=bool(self._tool_blocks))
        usage = usage_body(end, cost_usd)
        out.append(frame("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": reason, "stop_sequence": stop_sequence},
                                           "usage": usage}))
        out.append(frame("message_stop", {"type": "message_stop"}))
        return out

    def error(self, status: int, message: str) -> str:
        return frame("error", error_body(status, message))

    # ---- blocks -------------------------------------------------------------------------
    def _switch(self, kind: str, block: dict) -> list[str]:
        """Keep the open block if it is of `kind`, else close it and open a new one."""
        if self._open == kind:
            return []
        out = self._close()
        self._index += 1
        self._open = kind
        out.append(frame("content_block_start", {"type": "content_block_start", "index": self._index,
                                                 "content_block": block}))
        return out

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        out = []
        if self._open == "thinking":
            out.append(self._delta(self._index, {"type": "signature_delta", "signature": ""}))
        out.append(frame("content_block_stop", {"type": "content_block_stop", "index": self._index}))
        self._open = None
        return out

    @staticmethod
    def _delta(index: int, delta: dict) -> str:
        return frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
