"""llm/tool_text.py: tool calls written as text by small models; llm/openai_chat.py's tool pieces."""
from __future__ import annotations

import json
from types import SimpleNamespace

from llm.base import Message, ReplyCut, ToolCall, ToolCallDelta, chat_message
from llm.openai_chat import _pieces_of
from llm.tool_text import calls_in_text, parse_calls


async def run(pieces, names=("get_weather",)):
    async def gen():
        for p in pieces:
            yield p
    return [p async for p in calls_in_text(gen(), names)]


async def test_a_fenced_json_call_becomes_a_tool_call() -> None:
    text = '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```'
    out = await run([text[i:i + 3] for i in range(0, len(text), 3)])
    assert len(out) == 1 and isinstance(out[0], ToolCallDelta)
    assert out[0].name == "get_weather" and json.loads(out[0].arguments) == {"city": "Paris"}
    out = await run(['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'])
    assert out[0].name == "get_weather"


async def test_text_streams_through_unchanged() -> None:
    assert await run(["It", " is", " sunny."]) == ["It", " is", " sunny."]
    assert await run(["  ", "Hi", " there"]) == ["  Hi", " there"]
    # starts like a call but is not one: the text as it was
    assert await run(['{"city": "Paris"} is what I know']) == ['{"city": "Paris"} is what I know']
    # a call of a tool not offered is still a call (the controller answers it with an error)
    assert (await run(['{"name": "add", "arguments": {"a": 2}}']))[0].name == "add"
    assert await run(["``", "`python\nprint(1)\n```"]) == ["```python\nprint(1)\n```"]
    real = ToolCallDelta(0, "c", "get_weather", "{}")
    assert await run(["Let me check. ", real]) == ["Let me check. ", real]


async def test_a_cut_at_max_tokens_comes_last_after_held_text() -> None:
    cut = ReplyCut()
    assert await run(["It", " is", cut]) == ["It", " is", cut]
    # a call cut before its end is no call, and no text to say either
    assert await run(['{"name": "get_weather", "argu', cut]) == [cut]
    assert await run(['{"name": "get_weather", "argu']) == ['{"name": "get_weather", "argu']  # not cut: as before


def test_parse_calls() -> None:
    assert parse_calls('[{"name": "a", "parameters": {"x": 1}}, {"name": "b"}]', {"a", "b"}) == \
        [("a", '{"x": 1}'), ("b", "{}")]
    assert parse_calls('{"name": "a"} and more', {"a"}) == [("a", "{}")]  # the explanation after it is dropped
    assert parse_calls('```json\n{"name": "a", "arguments": {}}\n```\n\nThis calls a.', {"a"}) == [("a", "{}")]
    assert parse_calls('{"name": "b", "city": "x"}', {"a"}) == []  # not offered, not call-shaped


def test_pieces_of_a_streamed_choice_and_chat_messages() -> None:
    fn = SimpleNamespace(name="get_weather", arguments='{"ci')
    choice = SimpleNamespace(delta=SimpleNamespace(content=None, tool_calls=[SimpleNamespace(index=0, id="call_1",
                                                                                            function=fn)]))
    assert _pieces_of(choice) == [ToolCallDelta(0, "call_1", "get_weather", '{"ci')]
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    assert chat_message(Message("assistant", "", (call,))) == {
        "role": "assistant", "content": "",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    assert chat_message(Message("tool", "21", tool_call_id="call_1")) == \
        {"role": "tool", "tool_call_id": "call_1", "content": "21"}
