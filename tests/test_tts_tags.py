"""Step-Audio-TTS-3B instruction tags, generation prompt, audio-token parsing and the
repetition-aware sampling rule. No torch needed."""
from __future__ import annotations

import hashlib

import pytest

from decoder.step_audio import tags, tts_prompt
from decoder.step_audio.ras import RepetitionAwareLogitsProcessor, banned_token
from decoder.step_audio.tts_prompt import AudioTokenParser, build_prompt_ids


@pytest.mark.parametrize("text, expected_tags, body, instruction", [
    ("(高兴1)今天真好", ("高兴1",), "今天真好", "高兴1"),
    ("（粤语）（慢速2）早晨", ("粤语", "慢速2"), "早晨", "粤语"),
    ("(生气2)（英文）(快速1) Hello there", ("生气2", "英文", "快速1"), "Hello there", "生气2"),
    ("(RAP)说唱一段", ("RAP",), "说唱一段", "RAP"),
    ("（高兴1，四川话）巴适", ("高兴1", "四川话"), "巴适", "高兴1，四川话"),
    ("没有标签(高兴1)", (), "没有标签(高兴1)", ""),
    ("", (), "", ""),
])
def test_leading_tags(text, expected_tags, body, instruction):
    t = tags.parse(text)
    assert t.tags == expected_tags and t.body == body and t.instruction == instruction
    assert t.text == text  # the model reads the tags itself


def test_music_follows_the_first_group_only():
    assert tags.parse("(哼唱)啦啦啦").music == "哼唱"
    assert tags.parse("（RAP）(粤语)yo").music == "RAP"
    assert tags.parse("(粤语)(RAP)yo").music == ""  # the reference looks at the first group only
    assert tags.parse("(开心)你好").unknown == ("开心",)


def test_with_tags_builds_the_demo_form():
    assert tags.with_tags("你好", "高兴1", "", "慢速1") == "(高兴1)(慢速1)你好"


# sha256[:16] of the reference's four system prompts (stepfun-ai/Step-Audio tts.py).
@pytest.mark.parametrize("prompt, digest", [
    (tts_prompt.SYS_PROMPT_WITHOUT_SPEAKER, "fbfae76f25639012"),
    (tts_prompt.SYS_PROMPT_WITH_SPEAKER, "f18b3010e2b1bdcb"),
    (tts_prompt.SYS_PROMPT_RAP, "94e57ef98fca7e17"),
    (tts_prompt.SYS_PROMPT_HUMMING, "fe285fced3761654"),
])
def test_system_prompts_are_the_published_ones(prompt, digest):
    assert hashlib.sha256(prompt.encode()).hexdigest()[:16] == digest


def fake_encode(text: str) -> list[int]:
    """A tokenizer that, like sentencepiece, treats text after a newline specially."""
    return [1000 + ord(c) for c in text]


def test_prompt_layout_with_speaker():
    tagged = tags.parse("(高兴1)你好")
    ids = build_prompt_ids(fake_encode, tagged, "Tingting", "提示", [65536 + 3, 65536 + 9])
    enc = fake_encode
    system = enc("system\n" + tts_prompt.SYS_PROMPT_WITH_SPEAKER.format("Tingting"))
    expected = ([1, 4] + system + [3]
                + [4] + enc("human\n") + enc("提示") + [3]
                + [4] + enc("assistant\n") + [65536 + 3, 65536 + 9] + [3]
                + [4] + enc("human\n") + enc("(高兴1)你好") + [3]
                + [4] + enc("assistant\n"))
    assert ids == expected


def test_prompt_for_rap_and_humming_and_no_speaker():
    rap = build_prompt_ids(fake_encode, tags.parse("(RAP)yo"), "Tingting", "p", [65536])
    assert rap[2:2 + len(fake_encode("system\n" + tts_prompt.SYS_PROMPT_RAP))] == fake_encode(
        "system\n" + tts_prompt.SYS_PROMPT_RAP)
    hum = build_prompt_ids(fake_encode, tags.parse("(哼唱)啦"), "", "", ())
    assert hum[2:2 + len(fake_encode("system\n" + tts_prompt.SYS_PROMPT_HUMMING))] == fake_encode(
        "system\n" + tts_prompt.SYS_PROMPT_HUMMING)
    plain = build_prompt_ids(fake_encode, tags.parse("你好"))
    assert plain.count(4) == 3  # system, human, assistant: no speaker turns


def test_audio_token_parser_handles_splits_and_other_text():
    p = AudioTokenParser()
    out = []
    for piece in ["<audio_1", "2>", "<|EOT|>junk<audio_", "0><audio_4095>", "<au", "dio_7>"]:
        out += p.feed(piece)
    assert out == [12, 0, 4095, 7]


def test_repetition_aware_rule():
    assert banned_token([1, 2, 3]) is None  # shorter than the window
    assert banned_token(list(range(10))) is None  # last token occurs once
    assert banned_token([5, 1, 2, 3, 4, 6, 7, 8, 9, 5]) == 5  # twice in the last 10 -> banned
    assert banned_token([5] + list(range(10, 19)) + [5]) is None  # the first 5 left the window


def test_repetition_processor_masks_scores():
    torch = pytest.importorskip("torch")
    ids = torch.tensor([[5, 1, 2, 3, 4, 6, 7, 8, 9, 5], [0, 1, 2, 3, 4, 6, 7, 8, 9, 5]])
    scores = torch.zeros(2, 12)
    out = RepetitionAwareLogitsProcessor()(ids, scores)
    assert out[0, 5] == float("-inf") and torch.isfinite(out[1]).all()
