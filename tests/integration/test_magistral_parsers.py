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
