"""vLLM's own Magistral parsers, configured as the vLLM pools use them, on Magistral-shaped text.

Uses the tiny model's v11 Tekken (Magistral 2506's tokenizer version; the parser splits `<think>`
only for v11+). Also guards the mistral-common / vLLM pair: with mistral-common 1.13.x,
`adjust_request` raises TypeError (force_tool_names) and every engine chat request fails.
"""

import pytest

from deployments.vllm_config import MAGISTRAL_ENGINE_KWARGS

pytestmark = pytest.mark.integration
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from vllm.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_pretrained(str(tiny_model_dir))


def chat_request(**kwargs):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(model="magistral-small-2506", messages=[{"role": "user", "content": "Weather in Paris?"}], **kwargs)


@pytest.fixture(scope="module")
def reasoning_parser(tokenizer):
    from vllm.reasoning import ReasoningParserManager

    return ReasoningParserManager.get_reasoning_parser(MAGISTRAL_ENGINE_KWARGS["reasoning_parser"])(tokenizer)


@pytest.fixture(scope="module")
def tool_parser(tokenizer):
    from vllm.tool_parsers import ToolParserManager

    return ToolParserManager.get_tool_parser(MAGISTRAL_ENGINE_KWARGS["tool_call_parser"])(tokenizer)


@pytest.mark.parametrize("tool_kwargs", [{}, {"tools": TOOLS, "tool_choice": "auto"}, {"tools": TOOLS, "tool_choice": "required"}])
def test_requests_get_mistral_grammar_without_error(reasoning_parser, tool_kwargs):
    adjusted = reasoning_parser.adjust_request(chat_request(**tool_kwargs))
    assert adjusted.structured_outputs.grammar


def test_think_block_is_split_from_the_answer(reasoning_parser):
    request = reasoning_parser.adjust_request(chat_request())
    text = "<think>\nThe user asks about Paris. Check the forecast.\n</think>\n\nIt is sunny in Paris."
    reasoning, content = reasoning_parser.extract_reasoning(text, request)
    assert "forecast" in reasoning and "<think>" not in reasoning + content
    assert content.strip() == "It is sunny in Paris."


def test_text_without_think_is_all_answer(reasoning_parser):
    request = reasoning_parser.adjust_request(chat_request())
    reasoning, content = reasoning_parser.extract_reasoning("Just an answer.", request)
    assert not reasoning and content == "Just an answer."


def test_tool_calls_output_is_parsed(tool_parser):
    request = chat_request(tools=TOOLS, tool_choice="auto")
    out = tool_parser.extract_tool_calls('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', request)
    assert out.tools_called and len(out.tool_calls) == 1
    call = out.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city": "Paris"}'
    assert call.id and len(call.id) == 9  # Mistral tool-call ids are 9 alphanumerics


def test_plain_text_is_not_a_tool_call(tool_parser):
    out = tool_parser.extract_tool_calls("No tools needed.", chat_request(tools=TOOLS, tool_choice="auto"))
    assert not out.tools_called and out.content == "No tools needed."


def test_anthropic_tool_use_round_trips_through_the_magistral_parser(tool_parser, tiny_model_dir):
    """Anthropic tools -> the request vLLM gets -> Magistral's tool-call text parsed by vLLM's
    parser -> a tool_use block the SDK reads -> sent back with its tool_result -> a prompt the
    model's tokenizer renders."""
    import anthropic

    from common.protocol import delta_event, end_event
    from common.tokens import TekkenCounter
    from router.wire.anthropic import MessagesRequest, MessageWriter, to_chat

    tools = [{"name": "get_weather", "description": "Weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    question = {"role": "user", "content": "Weather in Paris?"}
    chat = to_chat(MessagesRequest.model_validate({"model": "magistral-small-2506", "max_tokens": 64, "tools": tools,
                                                   "tool_choice": {"type": "any"}, "messages": [question]}))
    request = chat_request(tools=chat.tools, tool_choice=chat.tool_choice)  # what the vLLM pool is sent
    assert request.tool_choice == "required"
    parsed = tool_parser.extract_tool_calls('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', request)
    call = parsed.tool_calls[0]
    events = [delta_event(tool_calls=[{"index": 0, "id": call.id, "type": "function",
                                       "function": {"name": call.function.name, "arguments": call.function.arguments}}],
                          completion_tokens=9),
              end_event(finish_reason="tool_calls", prompt_tokens=40, completion_tokens=9, reasoning_tokens=0)]
    message = anthropic.types.Message.model_validate(MessageWriter("msg_1", "magistral-small-2506").full(events))
    [tool_use] = message.content
    assert (tool_use.type, tool_use.name, tool_use.input, message.stop_reason) == \
        ("tool_use", "get_weather", {"city": "Paris"}, "tool_use")

    follow_up = to_chat(MessagesRequest.model_validate({
        "model": "magistral-small-2506", "max_tokens": 64, "tools": tools, "messages": [
            question,
            {"role": "assistant", "content": [tool_use.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny, 21 C"}]},
        ]}))
    assert follow_up.messages[1]["tool_calls"][0]["id"] == follow_up.messages[2]["tool_call_id"]
    counter = TekkenCounter(str(tiny_model_dir / "tekken.json"))
    assert counter.count_chat(follow_up.messages, follow_up.tools) > counter.count_chat([question], follow_up.tools)
