"""The Anthropic Messages wire format, checked against Anthropic's own Python SDK: its types, its
stream accumulator and its client (over a mock transport, so the bytes are what it parses)."""

import json
from decimal import Decimal

import anthropic
import httpx2
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter, ValidationError

from common.protocol import delta_event, end_event
from router.wire.openai.models import ChatCompletionRequest
from router.magistral_defaults import with_system_prompt
from router.wire.openai.writer import Collected
from router.wire.anthropic import (
    CountTokensRequest,
    MessagesRequest,
    MessageWriter,
    StreamWriter,
    anthropic_status,
    count_tokens_body,
    error_body,
    mistral_call_id,
    stop_reason,
    to_chat,
)

MODEL = "magistral-small-2506"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA}]
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                  "parameters": WEATHER_SCHEMA}}]
EVENT_ADAPTER = TypeAdapter(RawMessageStreamEvent)


def request(**fields) -> MessagesRequest:
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **fields}
    return MessagesRequest.model_validate(body)


# ---- request models and translation ------------------------------------------------------

def test_system_string_blocks_and_absent():
    assert to_chat(request(system="Be brief.")).messages[0] == {"role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools.", "cache_control": {}}]
    assert to_chat(request(system=blocks)).messages[0] == {"role": "system", "content": "Be brief.\n\nUse tools."}
    messages = to_chat(request()).messages
    assert messages == [{"role": "user", "content": "Hi"}]  # no system message: the caller adds its default
    assert with_system_prompt(messages, "DEFAULT")[0] == {"role": "system", "content": "DEFAULT"}


def test_tool_use_and_tool_result_round_trip():
    chat = to_chat(request(tools=ANTHROPIC_TOOLS, messages=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two calls.", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "abcDEF123", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"city": "Roma é"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "abcDEF123", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
             "content": [{"type": "text", "text": "rain"}], "is_error": False},
            {"type": "text", "text": "Which is warmer?"}]},
    ]))
    rome = mistral_call_id("toolu_01A09q90qw90lq917835lq9")
    assert len(rome) == 9 and rome.isalnum() and rome == mistral_call_id("toolu_01A09q90qw90lq917835lq9")
    assert chat.messages == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [
            {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": rome, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Roma é"}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "abcDEF123"},
        {"role": "tool", "content": [{"type": "text", "text": "rain"}], "tool_call_id": rome},
        {"role": "user", "content": [{"type": "text", "text": "Which is warmer?"}]},
    ]
    assert chat.tools == OPENAI_TOOLS


def test_thinking_history_is_dropped():
    chat = to_chat(request(messages=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xx"},
                                          {"type": "thinking", "thinking": "hm", "signature": ""},
                                          {"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "only thought", "signature": ""}]},
        {"role": "user", "content": "Again"},
    ]))
    assert chat.messages == [{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                             {"role": "user", "content": "Again"}]


@pytest.mark.parametrize(("choice", "mapped"), [
    ({"type": "auto"}, "auto"),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    (None, None),
])
def test_tool_choice_mapping(choice, mapped):
    assert to_chat(request(tools=ANTHROPIC_TOOLS, tool_choice=choice)).tool_choice == mapped


def test_sampling_stop_and_limits():
    chat = to_chat(request(temperature=0.2, top_k=40, stop_sequences=["END"], metadata={"user_id": "u1"},
                           thinking={"type": "enabled", "budget_tokens": 1024}, service_tier="auto"))
    assert (chat.sampling, chat.stop, chat.max_tokens, chat.user_id) == ({"temperature": 0.2, "top_k": 40}, ["END"], 64, "u1")
    assert to_chat(request()).sampling == {} and to_chat(request()).stop == []
    count = to_chat(CountTokensRequest.model_validate({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}))
    assert count.max_tokens is None and count.messages == [{"role": "user", "content": "Hi"}]
    assert count_tokens_body(12) == {"input_tokens": 12}


@pytest.mark.parametrize("fields", [
    {"max_tokens": None},
    {"max_tokens": 0},
    {"messages": []},
    {"temperature": 1.5},
    {"top_p": 0},
    {"top_k": -1},
    {"tool_choice": {"type": "tool"}},
    {"messages": [{"role": "system", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
])
def test_invalid_requests(fields):
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **fields}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ValidationError):
        MessagesRequest.model_validate(body)


@pytest.mark.parametrize(("fields", "kind"), [
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}, "image"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "document"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "abcdefghi", "content": [
        {"type": "image", "source": {}}]}]}]}, "image"),
    ({"system": [{"type": "image", "source": {}}]}, "image"),
])
def test_non_text_blocks_are_refused_by_name(fields, kind):
    with pytest.raises(ValidationError) as info:
        request(**fields)
    errors = info.value.errors()
    assert errors[0]["msg"] == f"Magistral Small 2506 reads text only: content blocks of type '{kind}' are not supported"


def test_server_tools_are_refused():
    with pytest.raises(ValidationError, match="tools of type 'web_search_20250305' are not supported"):
        request(tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert request(tools=[{**ANTHROPIC_TOOLS[0], "type": "custom"}]).tools[0].name == "get_weather"


def test_same_conversation_as_the_openai_route(counter):
    """Translated messages equal the OpenAI route's for the same conversation, so the prompt
    counts (and what the replica renders) are the same."""
    anthropic_body = request(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
        tools=ANTHROPIC_TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Call the tool.", "signature": ""},
                {"type": "tool_use", "id": "abcdefghi", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "abcdefghi", "content": "sunny, 21 C"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Sunny, 21 C."}]},
            {"role": "user", "content": [{"type": "text", "text": "Thanks."}, {"type": "text", "text": "And Rome?"}]},
        ])
    openai_body = ChatCompletionRequest.model_validate({"model": MODEL, "tools": OPENAI_TOOLS, "messages": [
        {"role": "system", "content": "Be brief.\n\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "Call the tool.", "tool_calls": [
            {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "sunny, 21 C"},
        {"role": "assistant", "content": [{"type": "text", "text": "Sunny, 21 C."}]},
        {"role": "user", "content": [{"type": "text", "text": "Thanks."}, {"type": "text", "text": "And Rome?"}]},
    ]})
    chat = to_chat(anthropic_body)
    assert chat.messages == openai_body.message_dicts()
    assert chat.tools == openai_body.tools
    assert counter.count_chat(chat.messages, chat.tools) == counter.count_chat(openai_body.message_dicts(), openai_body.tools)

    plain = to_chat(request(messages=[{"role": "user", "content": "Hello 🙂"}]))
    openai_plain = ChatCompletionRequest.model_validate({"model": MODEL, "messages": [{"role": "user", "content": "Hello 🙂"}]})
    assert counter.count_chat(with_system_prompt(plain.messages, "S")) == counter.count_chat(
        with_system_prompt(openai_plain.message_dicts(), "S"))


# ---- responses ---------------------------------------------------------------------------

def answer_events(finish: str = "tool_calls", **end_extra) -> list[dict]:
    end = end_event(finish_reason=finish, prompt_tokens=42, completion_tokens=17, reasoning_tokens=6)
    return [
        delta_event(reasoning="The user wants ", completion_tokens=3),
        delta_event(reasoning="the weather.", completion_tokens=6),
        delta_event(content="Let me ", completion_tokens=8),
        delta_event(content="check.", completion_tokens=9),
        delta_event(tool_calls=[{"index": 0, "id": "abcDEF123", "type": "function",
                                 "function": {"name": "get_weather", "arguments": '{"ci'}}], completion_tokens=12),
        delta_event(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}], completion_tokens=14),
        delta_event(tool_calls=[{"index": 1, "id": "zzzzzzzz9", "function": {"name": "now", "arguments": ""}}],
                    completion_tokens=17),
        {**end, **end_extra},
    ]


def stream_frames(events: list[dict], cost: Decimal | None = None, input_tokens: int | None = 42) -> list[str]:
    writer = StreamWriter("msg_r1", MODEL, input_tokens)
    frames = writer.start()
    for event in events[:-1]:
        frames += writer.feed(event)
    return frames + writer.finish(events[-1], cost)


def parse(frames: list[str]) -> list[tuple[str, dict]]:
    out = []
    for text in frames:
        assert text.endswith("\n\n") and text.count("\n\n") == 1
        name_line, data_line = text[:-2].split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        name, data = name_line[7:], json.loads(data_line[6:])
        assert data["type"] == name
        out.append((name, data))
    return out


def accumulate(frames: list[str]):
    snapshot, bufs = None, {}
    for name, data in parse(frames):
        if name == "ping":
            continue
        event = EVENT_ADAPTER.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


def test_full_message_is_an_sdk_message():
    body = MessageWriter("msg_r1", MODEL).full(answer_events(), Decimal("0.000123"))
    message = Message.model_validate(body)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].thinking == "The user wants the weather." and message.content[0].signature == ""
    assert message.content[1].text == "Let me check."
    assert (message.content[2].id, message.content[2].name, message.content[2].input) == (
        "abcDEF123", "get_weather", {"city": "Paris"})
    assert (message.content[3].id, message.content[3].input) == ("zzzzzzzz9", {})
    assert (message.id, message.model, message.stop_reason, message.stop_sequence) == ("msg_r1", MODEL, "tool_use", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (42, 17)
    assert message.usage.output_tokens_details.thinking_tokens == 6
    assert body["usage"]["cost_usd"] == 0.000123
    assert "cost_usd" not in MessageWriter("msg_r1", MODEL).full(answer_events())["usage"]
    collected = Collected()
    for event in answer_events():
        collected.add(event)
    assert MessageWriter("msg_r1", MODEL).full(collected) == MessageWriter("msg_r1", MODEL).full(answer_events())


@pytest.mark.parametrize(("finish", "sequence", "tools", "reason"), [
    ("stop", None, False, "end_turn"),
    ("stop", "END", False, "stop_sequence"),
    ("length", None, False, "max_tokens"),
    ("tool_calls", None, True, "tool_use"),
    ("stop", None, True, "tool_use"),  # vLLM ends a call forced by a named tool_choice with 'stop'
    ("abort", None, False, "end_turn"),
])
def test_stop_reason(finish, sequence, tools, reason):
    assert stop_reason(finish, sequence, tool_use=tools) == reason


def test_stream_follows_anthropics_event_sequence():
    events = parse(stream_frames(answer_events()))
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert (start["usage"]["input_tokens"], start["usage"]["output_tokens"]) == (42, 1)
    blocks = [(d["index"], d["content_block"]["type"]) for n, d in events if n == "content_block_start"]
    assert blocks == [(0, "thinking"), (1, "text"), (2, "tool_use"), (3, "tool_use")]
    # every block is closed before the next opens, and deltas go to the open block
    open_index = None
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    tool_start = next(d for n, d in events if n == "content_block_start" and d["index"] == 2)["content_block"]
    assert tool_start == {"type": "tool_use", "id": "abcDEF123", "name": "get_weather", "input": {}}
    pieces = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 2]
    assert pieces == ['{"ci', 'ty": "Paris"}']
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 17 and "cost_usd" not in delta["usage"]


@pytest.mark.parametrize("events", [
    answer_events(),
    answer_events("stop", stop_sequence="END"),
    [delta_event(reasoning="thinking only"), end_event(finish_reason="length", prompt_tokens=5,
                                                         completion_tokens=3, reasoning_tokens=3)],
    [delta_event(content="Hi"), end_event(finish_reason="stop", prompt_tokens=5, completion_tokens=1, reasoning_tokens=0)],
    [end_event(finish_reason="stop", prompt_tokens=5, completion_tokens=0, reasoning_tokens=0)],
], ids=["tools", "stop_sequence", "thinking_only", "text_only", "empty"])
def test_streamed_message_equals_the_non_streamed_one(events):
    streamed = accumulate(stream_frames(events, input_tokens=None))  # the count may come only with END
    whole = Message.model_validate(MessageWriter("msg_r1", MODEL).full(events))
    assert streamed.model_dump(exclude_none=True) == whole.model_dump(exclude_none=True)
    assert streamed.usage.input_tokens == events[-1]["prompt_tokens"]


def test_stream_carries_the_cost_and_the_stop_sequence():
    events = parse(stream_frames(answer_events("stop", stop_sequence="END"), Decimal("0.5")))
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert delta["usage"]["cost_usd"] == 0.5


def sdk_client(handler) -> anthropic.Anthropic:
    transport = httpx2.MockTransport(handler)
    return anthropic.Anthropic(api_key="k", base_url="http://router.test", max_retries=0,
                               http_client=httpx2.Client(transport=transport))


def test_the_sdk_client_reads_both_answers():
    events = answer_events()
    whole = MessageWriter("msg_r1", MODEL).full(events)
    sse = "".join(stream_frames(events)).encode()

    def handler(request):
        if json.loads(request.content).get("stream"):
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=sse)
        return httpx2.Response(200, json=whole)

    client = sdk_client(handler)
    params = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    created = client.messages.create(**params)
    with client.messages.stream(**params) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["Let me ", "check."]
    assert created.content[2].input == final.content[2].input == {"city": "Paris"}
    assert final.model_dump(exclude_none=True) == created.model_dump(exclude_none=True)


@pytest.mark.parametrize(("status", "sent", "kind", "exception"), [
    (400, 400, "invalid_request_error", anthropic.BadRequestError),
    (401, 401, "authentication_error", anthropic.AuthenticationError),
    (403, 403, "permission_error", anthropic.PermissionDeniedError),
    (404, 404, "not_found_error", anthropic.NotFoundError),
    (413, 413, "request_too_large", anthropic.APIStatusError),
    (429, 429, "rate_limit_error", anthropic.RateLimitError),
    (500, 500, "api_error", anthropic.InternalServerError),
    (503, 529, "overloaded_error", anthropic.OverloadedError),
    (529, 529, "overloaded_error", anthropic.OverloadedError),
    (422, 422, "invalid_request_error", anthropic.UnprocessableEntityError),
    (502, 502, "api_error", anthropic.InternalServerError),
])
def test_error_bodies(status, sent, kind, exception):
    body = error_body(status, "nope")
    assert body == {"type": "error", "error": {"type": kind, "message": "nope"}}
    assert anthropic_status(status) == sent
    if kind != "request_too_large":  # documented by Anthropic, not (yet) in the SDK's error union
        assert ErrorResponse.model_validate(body).error.type == kind
    client = sdk_client(lambda request: httpx2.Response(sent, json=body))
    with pytest.raises(exception) as info:
        client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == sent and info.value.body["error"]["message"] == "nope"
    assert error_body(status, "nope", request_id="req_1")["request_id"] == "req_1"


def test_in_band_stream_error_reaches_the_sdk():
    writer = StreamWriter("msg_r1", MODEL, 5)
    frames = writer.start() + writer.feed(delta_event(content="Hel")) + [writer.error(503, "replica failed")]
    name, data = parse(frames[-1:])[0]
    assert (name, data["error"]["type"]) == ("error", "overloaded_error")
    client = sdk_client(lambda request: httpx2.Response(200, headers={"content-type": "text/event-stream"},
                                                        content="".join(frames).encode()))
    params = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(anthropic.APIStatusError, match="replica failed"), client.messages.stream(**params) as stream:
        stream.get_final_message()
