from context.history import AUDIO_TOKENS_PER_SECOND, Context, count_text_tokens
from llm.base import Message


def test_oldest_turns_drop_first_and_the_system_prompt_stays():
    ctx = Context(system_prompt="Be brief.", max_prompt_tokens=60)
    for i in range(20):
        ctx.add_user(f"question number {i} about something", 2.0)
        ctx.add_assistant(f"answer number {i} to that", 1.5)
    msgs = ctx.messages(Message("user", "the newest question"))
    assert msgs[0] == Message("system", "Be brief.")
    assert msgs[-1] == Message("user", "the newest question")
    assert 2 < len(msgs) < 40
    assert msgs[-2].content == "answer number 19 to that"
    assert sum(count_text_tokens(m.content) + 4 for m in msgs) <= 60 + 8
    assert "question number 0 about something" not in [m.content for m in msgs]


def test_compression_ratio_counts_audio_tokens_against_text_tokens():
    ctx = Context()
    assert ctx.compression_ratio() is None
    ctx.add_user("what is the weather like today", 2.0)  # ~8 text tokens
    ctx.add_assistant("it is sunny", 1.0)
    tokens = count_text_tokens("what is the weather like today") + count_text_tokens("it is sunny")
    assert abs(ctx.compression_ratio() - 3.0 * AUDIO_TOKENS_PER_SECOND / tokens) < 1e-9
    assert AUDIO_TOKENS_PER_SECOND == 1000 / 60 + 25


def test_truncate_only_touches_the_named_assistant_turn():
    ctx = Context()
    ctx.add_user("hi", 1.0, "u1")
    ctx.add_assistant("hello there friend", 2.0, "a1")
    assert ctx.truncate("a1", "hello", 0.5)
    assert ctx.turns[1].text == "hello" and ctx.turns[1].speech_seconds == 0.5
    assert not ctx.truncate("u1", "x", 0.1)


def test_cjk_text_counts_a_token_per_character():
    assert count_text_tokens("你好世界") == 4
    assert count_text_tokens("你好 world") == 2 + 2
    assert count_text_tokens("") == 0


def test_function_calls_and_results_are_chat_messages() -> None:
    from llm.base import ToolCall

    ctx = Context("sys", max_prompt_tokens=200)
    ctx.add_user("weather in Paris?", 1.0, "u1")
    ctx.add_assistant("Let me check.", 0.5, "a1")
    ctx.add_function_call(ToolCall("c1", "get_weather", '{"city": "Paris"}'), "f1")
    ctx.add_function_call(ToolCall("c2", "get_time", "{}"), "f2")
    ctx.add_function_output("c1", '{"t": 21}', "o1")
    ctx.add_function_output("c2", "noon", "o2")
    msgs = ctx.messages()
    assert [m.role for m in msgs] == ["system", "user", "assistant", "tool", "tool"]
    assert msgs[2].content == "Let me check." and [c.call_id for c in msgs[2].tool_calls] == ["c1", "c2"]
    assert (msgs[3].tool_call_id, msgs[3].content) == ("c1", '{"t": 21}')
    assert ctx.find_call("c2").item_id == "f2" and ctx.find_call("nope") is None
    # a call with no text before it is an assistant message of its own
    ctx.add_function_call(ToolCall("c3", "get_time", "{}"), "f3")
    assert ctx.messages()[-1].tool_calls[0].call_id == "c3" and ctx.messages()[-1].content == ""
    # a result whose call fell out of the budget is dropped with it
    small = Context("", max_prompt_tokens=12)
    small.add_function_call(ToolCall("c1", "get_weather", '{"city": "Paris, the capital of France"}'), "f1")
    small.add_function_output("c1", "21", "o1")
    assert [m.role for m in small.messages()] == []
