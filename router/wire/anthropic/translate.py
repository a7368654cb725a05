"""An Anthropic Messages request -> the router's internal chat input (OpenAI-style dicts).

The messages come out exactly as the OpenAI route's `ChatCompletionRequest.message_dicts()`
gives them for the same conversation, so counting, the context cap, the default system prompt
and the replica treat both routes alike:

- `system` (a string, or text blocks joined with a blank line) -> one system message; none at
  all when `system` is absent, so the caller adds its default system prompt as for OpenAI.
- A string content stays a string; text blocks become text parts [{type: text, text}].
- A user turn's tool_result blocks become tool messages (in order), its text a user message.
- An assistant turn's tool_use blocks become `tool_calls` (arguments: the input as JSON); its
  thinking blocks are dropped, and a turn left with nothing is dropped too.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from router.wire.anthropic.models import (
    CountTokensRequest,
    Message,
    MessagesRequest,
    TextBlock,
)

_MISTRAL_CALL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class ChatInput:
    messages: list[dict]
    tools: list[dict] | None = None
    tool_choice: Any = None  # 'auto' | 'required' | 'none' | {'type': 'function', 'function': {'name'}}
    stop: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, top_k (when given)
    max_tokens: int | None = None  # None for a count_tokens request
    user_id: str | None = None  # metadata.user_id


def to_chat(req: MessagesRequest | CountTokensRequest) -> ChatInput:
    messages = [] if req.system is None else [{"role": "system", "content": _system_text(req.system)}]
    for message in req.messages:
        messages.extend(_user_turn(message) if message.role == "user" else _assistant_turn(message))
    chat = ChatInput(messages=messages, tools=_tools(req), tool_choice=_tool_choice(req))
    if isinstance(req, MessagesRequest):
        chat.stop, chat.sampling, chat.max_tokens = req.stop_list(), req.sampling(), req.max_tokens
        chat.user_id = req.metadata.user_id if req.metadata else None
    return chat


def mistral_call_id(call_id: str) -> str:
    """Mistral's template takes tool-call ids of 9 letters or digits. The model's own ids pass
    unchanged; others (Anthropic's `toolu_…`) map to a stable 9-character id, the same for a
    tool_use and the tool_result that answers it."""
    if _MISTRAL_CALL_ID.match(call_id):
        return call_id
    n = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    out = []
    for _ in range(9):
        n, digit = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[digit])
    return "".join(out)


def _system_text(system: str | list[TextBlock]) -> str:
    return system if isinstance(system, str) else "\n\n".join(block.text for block in system)


def _parts(blocks: list[TextBlock]) -> list[dict]:
    return [{"type": "text", "text": block.text} for block in blocks]


def _user_turn(message: Message) -> list[dict]:
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict] = []
    texts: list[TextBlock] = []
    for block in message.content:
        if block.type == "text":
            texts.append(block)
        elif block.type == "tool_result":
            if texts:
                out.append({"role": "user", "content": _parts(texts)})
                texts = []
            content = block.content if isinstance(block.content, str) else _parts(block.content or []) or ""
            out.append({"role": "tool", "content": content, "tool_call_id": mistral_call_id(block.tool_use_id)})
    if texts:
        out.append({"role": "user", "content": _parts(texts)})
    return out


def _assistant_turn(message: Message) -> list[dict]:
    if isinstance(message.content, str):
        return [{"role": "assistant", "content": message.content}] if message.content else []
    texts = [block for block in message.content if block.type == "text"]
    calls = [
        {"id": mistral_call_id(block.id), "type": "function",
         "function": {"name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}}
        for block in message.content if block.type == "tool_use"
    ]
    out: dict = {"role": "assistant"}
    if texts:
        out["content"] = _parts(texts)
    if calls:
        out["tool_calls"] = calls
    return [out] if len(out) > 1 else []


def _tools(req: CountTokensRequest) -> list[dict] | None:
    if not req.tools:
        return None
    out = []
    for tool in req.tools:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.input_schema
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(req: CountTokensRequest) -> Any:
    choice = req.tool_choice
    if choice is None:
        return None
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]
