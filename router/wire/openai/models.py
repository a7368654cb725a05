"""OpenAI request bodies as pydantic models. Unknown fields are ignored, as vLLM does.

Types are strict, as OpenAI's API checks them: `"max_tokens": "5"`, `true` for a number or
`"stream": "true"` is a 400, not a value coerced (and billed). JSON numbers still fit either
numeric type where the field is a float (`"temperature": 1`); an integer field takes no 5.0.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from router.json_nesting import check_nesting
from router.unicode_text import check_unicode


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Request(_Body):
    """A whole request body: nested at most router.json_nesting.MAX_DEPTH deep, and every string
    in it valid Unicode (router/unicode_text.py)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_json(cls, data: Any) -> Any:
        return check_unicode(check_nesting(data))


MAX_INT32 = 2**31 - 1  # bigger counts mean nothing under a 40 960-token cap, and overflow engines
# A completion budget: at least 1; above MAX_INT32 read as MAX_INT32, which the context cap then
# clamps to what is left (or refuses under the `strict` overflow policy) like any budget over it.
MaxTokens = Annotated[int, Field(ge=1), AfterValidator(lambda n: min(n, MAX_INT32))]
TEXT_ONLY = "Magistral Small 2506 reads text only: content parts of type '{}' are not supported"


class ContentPart(_Body):
    type: Literal["text"]
    text: str


class ToolCallFunction(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, v: Any) -> Any:
        """Say why an image or audio part is refused (not just that it is not a text part)."""
        if isinstance(v, list):
            for part in v:
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind != "text":
                    raise ValueError(TEXT_ONLY.format(kind))
        return v

    @model_validator(mode="after")
    def _has_content(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's extension: usage so far on every chunk


class _Sampling(_Request):
    model: str
    max_tokens: MaxTokens | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # what engines and OTLP carry
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)  # one choice per request
    user: str | None = None
    # vLLM's extension: generate up to max_tokens whatever the model's end token says
    # (benchmarks fix output lengths with it, as vLLM's own do).
    ignore_eos: bool | None = None
    # OpenAI's processing tier: "flex" runs at the `batch` priority, "priority" at `interactive`
    # (never above the tenant's own tier); the others at the tenant's tier.
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None

    def asked_tier(self) -> str | None:
        return {"flex": "batch", "priority": "interactive"}.get(self.service_tier or "")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        if v == "" or (isinstance(v, list) and "" in v):
            raise ValueError("a stop sequence may not be empty")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self) -> dict[str, Any]:
        values = {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "ignore_eos": self.ignore_eos}
        return {k: v for k, v in values.items() if v is not None}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage on every chunk: what a client that stops reading now will be billed."""
        return self.include_usage and bool(self.stream_options.continuous_usage_stats)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None  # newer name for max_tokens
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None  # json_object / json_schema (vLLM pools)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def message_dicts(self) -> list[dict]:
        out = []
        for m in self.messages:
            d = m.model_dump(exclude_none=True)
            if d["role"] == "developer":  # OpenAI's newer name for system
                d["role"] = "system"
            out.append(d)
        return out


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens
