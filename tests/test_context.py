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
