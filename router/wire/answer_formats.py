"""How a generation route answers, whole or streamed: one small adapter per wire format over the
same replica events, so the pipeline runs once (settle, bill, trace) for both APIs."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from router import errors
from router.wire.openai.writer import Collected, ResponseWriter, sse
from router.wire.anthropic import MessageWriter, StreamWriter


class OpenAIAnswer:
    def __init__(self, writer: ResponseWriter, body):
        self.writer, self.body = writer, body

    def full(self, collected: Collected, cost: Decimal | None) -> dict:
        return self.writer.full(collected, cost)

    def opening(self) -> list[bytes]:
        return [sse(self.writer.chunk(None, first=True))]

    def delta(self, event: dict, usage: Callable[[], dict]) -> list[bytes]:
        # With continuous usage stats the chunk states what the client is billed once it has it.
        return [sse(self.writer.chunk(event, usage=usage() if self.body.continuous_usage else None))]

    def end(self, event: dict, cost: Decimal | None) -> list[bytes]:
        out = [sse(self.writer.chunk(event))]
        if self.body.include_usage:
            out.append(sse(self.writer.usage_chunk(event, cost)))
        return out

    def error(self, error: errors.APIError) -> list[bytes]:
        return [sse(error.body())]

    def closing(self) -> list[bytes]:
        return [sse("[DONE]")]


class AnthropicAnswer:
    def __init__(self, message_id: str, model: str, input_tokens: int | None):
        self.whole = MessageWriter(message_id, model)
        self.stream = StreamWriter(message_id, model, input_tokens)

    def full(self, collected: Collected, cost: Decimal | None) -> dict:
        return self.whole.full(collected, cost)

    def opening(self) -> list[bytes]:
        return [f.encode() for f in self.stream.start()]

    def delta(self, event: dict, usage: Callable[[], dict]) -> list[bytes]:
        return [f.encode() for f in self.stream.feed(event)]

    def end(self, event: dict, cost: Decimal | None) -> list[bytes]:
        return [f.encode() for f in self.stream.finish(event, cost)]

    def error(self, error: errors.APIError) -> list[bytes]:
        return [self.stream.error(error.status, error.message).encode()]

    def closing(self) -> list[bytes]:
        return []
