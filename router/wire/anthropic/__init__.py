"""Anthropic's Messages API on the wire: request models, translation to the internal chat
input, Message bodies and SSE frames from replica events, and error bodies. Pure: no Ray, no
FastAPI; the ingress wires it to /v1/messages and /v1/messages/count_tokens."""

from router.wire.anthropic.errors import anthropic_status, error_body, error_type
from router.wire.anthropic.models import CountTokensRequest, MessagesRequest
from router.wire.anthropic.translate import ChatInput, mistral_call_id, to_chat
from router.wire.anthropic.writer import (
    MessageWriter,
    StreamWriter,
    count_tokens_body,
    message_id,
    stop_reason,
    usage_body,
)

__all__ = [
    "ChatInput", "CountTokensRequest", "MessageWriter", "MessagesRequest", "StreamWriter", "anthropic_status",
    "count_tokens_body", "error_body", "error_type", "message_id", "mistral_call_id", "stop_reason", "to_chat",
    "usage_body",
]
