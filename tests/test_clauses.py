"""Clause cutting (decoder.clauses) and the script helpers the TTS decoders use."""
from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from decoder.audio_chunks import chunked, script_language, script_runs
from decoder.clauses import clauses, sentence_end


async def _pieces(items: list[str], log: list[str] | None = None) -> AsyncIterator[str]:
    for item in items:
        if log is not None:
            log.append(item)
        yield item


async def _cut(text: str | list[str], **kw) -> list[str]:
    items = list(text) if isinstance(text, str) else text  # a str streams one character at a time
    return [c async for c in clauses(_pieces(items), **kw)]


async def test_first_clause_cut_at_comma_later_ones_at_sentence_end():
    got = await _cut("Well, I think that, on balance, it will rain today. Take an umbrella, just in case.")
    assert got == ["Well, I think that,", "on balance, it will rain today.", "Take an umbrella, just in case."]


async def test_short_comma_does_not_cut_first_clause():
    assert (await _cut("Hi, Bob. Nice day."))[0] == "Hi, Bob."


async def test_first_sentence_cut_even_when_short():
    assert await _cut("Yes. It is.") == ["Yes.", "It is."]


async def test_decimal_point_and_abbreviations_are_not_ends():
    got = await _cut("It costs 3.5 dollars today. Mr. Smith agrees, e.g. about that.")
    assert got == ["It costs 3.5 dollars today.", "Mr. Smith agrees, e.g. about that."]


async def test_decimal_split_across_pieces_is_not_an_end():
    assert await _cut(["It is 3.", "5 degrees outside now."], first_words=0) == ["It is 3.5 degrees outside now."]


async def test_first_clause_goes_after_a_few_words_without_punctuation():
    text = "The capital of France is Paris and it is lovely. Truly lovely indeed my friend."
    assert await _cut(text, first_words=5) == ["The capital of France is", "Paris and it is lovely.",
                                               "Truly lovely indeed my friend."]
    assert (await _cut(text, first_words=0))[0] == "The capital of France is Paris and it is lovely."
    assert (await _cut("Yes, of course I can help you with that."))[0] == "Yes, of course I can"


async def test_chinese_punctuation_cuts_without_spaces():
    assert await _cut("你好，今天天气很好，我们出去吧。好的！") == ["你好，今天天气很好，", "我们出去吧。", "好的！"]


async def test_long_text_without_punctuation_is_capped_at_a_space():
    text = " ".join(["word"] * 60)
    got = await _cut(text, max_chars=50)
    assert all(len(c) <= 50 for c in got)
    assert " ".join(got) == text


async def test_remainder_is_flushed_and_whitespace_dropped():
    assert await _cut(["  Hello there", " my friend  "]) == ["Hello there my friend"]
    assert await _cut(["   ", "\n"]) == []


async def test_clause_leaves_as_soon_as_it_is_complete():
    log: list[str] = []
    pieces = ["Sure thing, Bob,", " my", " friend.", " More", " words", " here."]
    gen = clauses(_pieces(pieces, log))
    first = await gen.__anext__()
    assert first == "Sure thing, Bob,"
    assert log == ["Sure thing, Bob,", " my"]  # one piece of look-ahead (to see the space), not the whole text
    await gen.aclose()


async def test_piecewise_equals_whole():
    text = "First of all, thanks. The answer is 42. 你好。Bye!"
    assert await _cut(text) == await _cut([text])


def test_script_language():
    assert script_language("Hello") is None
    assert script_language("你好") == "zh"
    assert script_language("こんにちは世界") == "ja"
    assert script_language("안녕하세요") == "ko"


def test_script_runs_split_at_script_changes():
    assert script_runs("I am fine. 你好，世界。") == ["I am fine.", "你好，世界。"]
    assert script_runs("我有3个苹果。 Then English.") == ["我有3个苹果。", "Then English."]
    assert script_runs("Plain English, only.") == ["Plain English, only."]
    assert script_runs("... ") == []


def test_chunked_puts_text_on_first_chunk_only():
    pcm = np.arange(1000, dtype=np.int16)
    chunks = list(chunked(pcm, 1000, 0.3, "hello"))
    assert [len(c.pcm) for c in chunks] == [300, 300, 300, 100]
    assert [c.text for c in chunks] == ["hello", "", "", ""]
    assert np.array_equal(np.concatenate([c.pcm for c in chunks]), pcm)


def test_sentence_end_finds_the_first_whole_sentence():
    assert sentence_end("Hi there. Next") == len("Hi there.")
    assert sentence_end("Hi there.") == -1  # may be "3." of "3.5": wait for the next piece
    assert sentence_end("Ask Dr. Smith. Then") == len("Ask Dr. Smith.")
    assert sentence_end("It is 3.5 now! Yes") == len("It is 3.5 now!")
    assert sentence_end("你好。明天") == len("你好。")
    assert sentence_end("\nA list") == -1  # a leading newline ends nothing
    assert sentence_end("no end yet, still going") == -1
