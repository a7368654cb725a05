from common.protocol import delta_event, end_event
from router.wire.openai.writer import Collected, ResponseWriter

END = end_event(finish_reason="tool_calls", prompt_tokens=10, completion_tokens=7, reasoning_tokens=3)


def test_streamed_tool_call_deltas_merge_into_whole_calls():
    collected = Collected()
    collected.add(delta_event(reasoning="think"))
    collected.add(delta_event(tool_calls=[{"index": 0, "id": "abcDEF123", "type": "function",
                                           "function": {"name": "get_weather", "arguments": '{"ci'}}]))
    collected.add(delta_event(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]))
    collected.add(delta_event(tool_calls=[{"index": 1, "id": "zzzzzzzz9", "function": {"name": "now", "arguments": "{}"}}]))
    collected.add(END)
    body = ResponseWriter("chat", "chatcmpl-1", "m").full(collected)
    message = body["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "zzzzzzzz9", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]
    assert message["reasoning_content"] == message["reasoning"] == "think"
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17,
                             "completion_tokens_details": {"reasoning_tokens": 3}}


def test_stream_chunks_carry_reasoning_content_and_tool_calls():
    writer = ResponseWriter("chat", "chatcmpl-1", "m")
    assert writer.chunk(None, first=True)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    delta = writer.chunk(delta_event(reasoning="r", content="c", tool_calls=[{"index": 0}]))["choices"][0]["delta"]
    assert delta == {"reasoning_content": "r", "reasoning": "r", "content": "c", "tool_calls": [{"index": 0}]}
    assert writer.chunk(END)["choices"][0]["finish_reason"] == "tool_calls"
    assert writer.usage_chunk(END)["choices"] == []


def test_text_completion_joins_raw_text():
    collected = Collected()
    collected.add(delta_event(content="<think>x</think>y"))
    collected.add(END)
    assert ResponseWriter("completion", "cmpl-1", "m").full(collected)["choices"][0]["text"] == "<think>x</think>y"
