import random

import pytest

from common.tokens import PromptInvalid, chat_upper_bound, text_upper_bound

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CHAT = [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "abcdefghi", "content": "sunny, 21 C"},
    {"role": "user", "content": "Thanks"},
]


@pytest.mark.parametrize("messages, tools", [
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}], None),
    ([{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
      {"role": "user", "content": [{"type": "text", "text": "three "}, {"type": "text", "text": "四"}]}], None),
    (TOOL_CHAT, TOOLS),
])
def test_count_is_the_chat_templates_token_count(counter, messages, tools):
    """Our encode skips only the text mistral-common renders back: the tokens are its own."""
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    direct = counter.tokenizer.encode_chat_completion(ChatCompletionRequest.from_openai(messages, tools=tools)).tokens
    assert counter.count_chat(messages, tools) == len(direct)
    assert counter.encode_chat(messages, tools) == direct


def test_longer_prompt_counts_more(counter):
    assert counter.count_chat([{"role": "user", "content": "hello " * 100}]) > counter.count_chat(
        [{"role": "user", "content": "hello"}]
    )


@pytest.mark.parametrize("seed", range(5))
def test_upper_bound_is_never_below_exact_count(counter, seed):
    rng = random.Random(seed)
    alphabet = ["a", "Z", " ", "\n", "\t", "é", "数", "🙂", "{", "\"", "\\", "<think>", "[INST]", "0"]
    for _ in range(50):
        n = rng.randint(1, 4)
        messages = []
        for i in range(n):
            role = "user" if i % 2 == 0 else "assistant"
            messages.append({"role": role, "content": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))) or "x"})
        if messages[-1]["role"] != "user":
            messages.append({"role": "user", "content": "ok"})
        assert chat_upper_bound(messages) >= counter.count_chat(messages)


def test_no_byte_bound_for_tools_or_tool_calls(counter):
    """The template re-serialises arguments: `1e15` renders as 1000000000000000.0 (and with
    other separators), so bytes of the request do not bound the tokens of the prompt."""
    args = "[" + ",".join(["1e15"] * 300) + "]"
    chat = [TOOL_CHAT[0], TOOL_CHAT[1],
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "abcdefghi", "content": "ok"}]
    no_tools_bound = 8 + sum(8 + len(str(m)) for m in chat)  # what a naive bound would be
    assert counter.count_chat(chat, TOOLS) > no_tools_bound  # the trap is real
    assert chat_upper_bound(chat, TOOLS) is None
    assert chat_upper_bound(chat) is None  # tool calls alone
    assert chat_upper_bound(TOOL_CHAT[:2], TOOLS) is None  # tools alone


def test_text_upper_bound(counter):
    for text in ["", "hello", "🙂" * 50, "a b c\n" * 300]:
        assert text_upper_bound(text) >= counter.count_text(text)


def test_template_refusal_is_prompt_invalid(counter):
    bad = [{"role": "assistant", "content": "I speak first"}]
    with pytest.raises(PromptInvalid):
        counter.count_chat(bad)
    with pytest.raises(PromptInvalid):
        counter.validate_chat(bad)
    counter.validate_chat(TOOL_CHAT, TOOLS)  # a valid tool conversation passes
