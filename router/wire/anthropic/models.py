"""Anthropic Messages API request bodies as pydantic models. Unknown fields are ignored.

Magistral Small 2506 reads text only: a content block of any other type (image, document,
search_result, server tool blocks...) is refused at validation with a message naming its type.
Thinking blocks sent back in the history are accepted and dropped (see translate.py).
Types are strict, as on the OpenAI routes (router/wire/openai/models.py): a string or a boolean
where a number or a boolean belongs is a 400, not a coerced value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from router.json_nesting import check_nesting
from router.unicode_text import check_unicode
from router.wire.openai.models import MAX_INT32, MaxTokens

MODEL_NAME = "Magistral Small 2506"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


def _unsupported(block_type: object) -> PydanticCustomError:
    return PydanticCustomError(
        "unsupported_content",
        "{model} reads text only: content blocks of type '{block_type}' are not supported",
        {"model": MODEL_NAME, "block_type": str(block_type)},
    )


def _check_types(value: Any, allowed: tuple[str, ...]) -> Any:
    """Refuse a block whose type is not `allowed` (inside a tool_result: not text) with a message
    naming the type, instead of pydantic's union-tag error."""
    if isinstance(value, list):
        for block in value:
            if not isinstance(block, dict):
                continue
            block_type = block.get("type")
            if block_type is not None and block_type not in allowed:
                raise _unsupported(block_type)
            if block_type == "tool_result":
                _check_types(block.get("content"), ("text",))
    return value


def _only(*allowed: str) -> BeforeValidator:
    return BeforeValidator(lambda value: _check_types(value, allowed))


def _str_or_list(value: Any) -> str:
    return "str" if isinstance(value, str) else "list"


def _content(block: Any) -> Any:
    """`str | list[block]`, validated as the one the value is: a bad block then reports its own
    error, not also "Input should be a valid string"."""
    return Annotated[
        Annotated[str, Tag("str")] | Annotated[list[block], Tag("list")],
        Discriminator(_str_or_list),
    ]


class TextBlock(_Body):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Body):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Body):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Annotated[_content(TextBlock) | None, _only("text")] = None
    is_error: bool | None = None


class ThinkingBlock(_Body):
    """Accepted in the history, then dropped: Magistral does not read earlier turns' thinking."""

    type: Literal["thinking"]
    thinking: str = ""
    signature: str | None = None


class RedactedThinkingBlock(_Body):
    type: Literal["redacted_thinking"]
    data: str = ""


ContentBlock = Annotated[
    TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]
_MESSAGE_BLOCKS = ("text", "tool_use", "tool_result", "thinking", "redacted_thinking")
_NOT_IN = {"user": ("tool_use", "thinking", "redacted_thinking"), "assistant": ("tool_result",)}


class Message(_Body):
    role: Literal["user", "assistant"]
    content: Annotated[_content(ContentBlock), _only(*_MESSAGE_BLOCKS)]

    @model_validator(mode="after")
    def _blocks_fit_role(self) -> Message:
        if isinstance(self.content, list) and not self.content:
            raise PydanticCustomError("empty_content", "a message needs at least one content block")
        if isinstance(self.content, list):
            for block in self.content:
                if block.type in _NOT_IN[self.role]:
                    raise PydanticCustomError(
                        "block_not_allowed", "{role} messages may not contain '{block_type}' blocks",
                        {"role": self.role, "block_type": block.type})
        return self


class Tool(_Body):
    """A client tool (JSON-schema input). Anthropic's server tools (web search, bash, ...) have
    a versioned `type` and no schema: refused."""

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _client_tool(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") not in (None, "custom"):
            raise PydanticCustomError(
                "unsupported_tool", "{model} runs client tools only: tools of type '{tool_type}' are not supported",
                {"model": MODEL_NAME, "tool_type": str(value["type"])})
        return value


class ToolChoiceAuto(_Body):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Body):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Body):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Body):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class Metadata(_Body):
    user_id: str | None = None


class CountTokensRequest(_Body):
    """POST /v1/messages/count_tokens: the prompt part of a Messages request."""

    @model_validator(mode="before")
    @classmethod
    def _valid_json(cls, data: Any) -> Any:
        # Nested too deep or a lone surrogate: the client's 400, never a recursion's or the
        # tokenizer's 500.
        return check_unicode(check_nesting(data))

    model: str
    messages: list[Message] = Field(min_length=1)
    system: Annotated[_content(TextBlock) | None, _only("text")] = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Any = None  # accepted and ignored: Magistral always thinks


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: MaxTokens
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_INT32)
    stream: bool = False
    metadata: Metadata | None = None
    # Anthropic's: both run at the tenant's own priority tier.
    service_tier: Literal["auto", "standard_only"] | None = None

    def asked_tier(self) -> str | None:
        return None

    # The helpers the OpenAI request models offer, so route code can treat both alike.
    def requested_max_tokens(self) -> int:
        return self.max_tokens

    def stop_list(self) -> list[str]:
        return list(self.stop_sequences or [])

    def sampling(self) -> dict[str, Any]:
        values = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return {k: v for k, v in values.items() if v is not None}
