"""Whisper and languages: detection among candidates, a session's own language, Chinese script,
and the config errors for languages the model does not know."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from core.config import ConfigError
from core.stages import BuildEnv, build_stage
from streaming_tokenizer.whisper import pick_language
from tests.speech_util import espeak, frames, piper, silence, wer
from tests.test_whisper_tokenizer import WAIT_S, _transcribe, model_cache, whisper  # noqa: F401 - fixtures


@pytest.mark.integration
def test_unknown_language_is_a_config_error(model_cache):
    with pytest.raises(ConfigError, match="tokenizer.language.*'xx'"):
        build_stage("tokenizer", "whisper", {"language": "xx"}, BuildEnv(model_cache))


def _han(text: str) -> int:
    return sum("\u4e00" <= ch <= "\u9fff" for ch in text)


@pytest.mark.integration
async def test_mandarin_comes_out_in_simplified_characters(model_cache):
    """Whisper base writes this sentence with traditional characters (過, 來); the transcript
    is converted to simplified ones (chinese_script, the default), and null keeps Whisper's."""
    import opencc

    to_simplified = opencc.OpenCC("t2s").convert
    audio = espeak("秋风吹过，树叶落下来了。", "cmn-latn-pinyin", 150)
    raw_factory = build_stage("tokenizer", "whisper", {"language": "zh", "chinese_script": None},
                              BuildEnv(model_cache))
    factory = build_stage("tokenizer", "whisper", {"language": None}, BuildEnv(model_cache))
    try:
        _, raw = await _transcribe(raw_factory, audio)
        _, result = await _transcribe(factory, audio)
    finally:
        await raw_factory.close()
        await factory.close()
    assert result.language == "zh" and _han(result.text) >= 5, result.text
    assert to_simplified(raw.text) != raw.text, f"Whisper wrote no traditional character: {raw.text}"
    assert result.text == to_simplified(raw.text)


def test_language_is_picked_among_the_candidates():
    ranked = [("<|th|>", 0.5), ("<|zh|>", 0.3), ("<|en|>", 0.1)]
    assert pick_language(ranked, {"en", "zh"}) == "zh"
    assert pick_language(ranked, set()) == "th"  # no candidates: Whisper's first choice
    assert pick_language([("ko", 0.9), ("en", 0.1)], {"en"}) == "en"  # faster-whisper's codes
    assert pick_language(ranked, {"fr"}) == "th"  # none ranked: Whisper's first choice


@pytest.mark.integration
async def test_candidate_languages_keep_a_mandarin_turn_mandarin(model_cache):
    """Whisper base takes this two-sentence Mandarin turn (pinyin espeak) for Thai and loops; with
    `languages: [en, zh]` it is Mandarin, right, and decoded once."""
    audio = np.concatenate([espeak("ni3 hao3, wo3 xiang3 wen4 yi2 xia4 tian1 qi4.", "cmn-latn-pinyin", 150),
                            silence(0.4), espeak("ming2 tian1 hui4 xia4 yu3 ma5?", "cmn-latn-pinyin", 150)])
    factory = build_stage("tokenizer", "whisper", {"languages": ["en", "zh"]}, BuildEnv(model_cache))
    try:
        _, result = await _transcribe(factory, audio)
        assert factory.engine.loop_retries == 0
    finally:
        await factory.close()
    assert result.language == "zh" and "天气" in result.text and "下雨" in result.text, result.text


@pytest.mark.integration
async def test_a_session_language_overrides_detection(whisper):
    """set_language (the Realtime API's transcription.language): the caller's language is used
    instead of detecting one (this Mandarin turn is otherwise taken for Thai, see above); an
    unknown one is refused; None detects again, on a fresh transcription."""
    tok = whisper.create()
    with pytest.raises(ValueError, match="xx"):
        tok.set_language("xx")
    tok.set_language("zh")
    audio = np.concatenate([espeak("ni3 hao3, wo3 xiang3 wen4 yi2 xia4 tian1 qi4.", "cmn-latn-pinyin", 150),
                            silence(0.4), espeak("ming2 tian1 hui4 xia4 yu3 ma5?", "cmn-latn-pinyin", 150)])
    for f in frames(np.concatenate([silence(0.3), audio, silence(0.3)])):
        tok.push(f)
    told = await asyncio.wait_for(tok.finalize(), WAIT_S)
    assert told.language == "zh" and "天气" in told.text and "下雨" in told.text, told.text
    tok.set_language(None)
    await asyncio.wait_for(tok.finalize(), WAIT_S)  # the same audio: not the cached "zh" result
    assert tok.transcriptions == 2


@pytest.mark.integration
def test_unknown_candidate_language_is_a_config_error(model_cache):
    with pytest.raises(ConfigError, match="tokenizer.languages.*'xx'"):
        build_stage("tokenizer", "whisper", {"languages": ["en", "xx"]}, BuildEnv(model_cache))


def test_bad_chinese_script(tmp_path):
    with pytest.raises(ConfigError, match="chinese_script"):
        build_stage("tokenizer", "whisper", {"chinese_script": "pinyin"}, BuildEnv(tmp_path))


def test_the_model_tier_tokenizer_refuses_an_unknown_language_when_it_is_set():
    """ray-whisper's model is on the tier: an unknown language must be refused here (an
    `invalid_value` for session.update, a config error at start), not fail the turn there."""
    from streaming_tokenizer.ray_whisper import Options, RayWhisperEngine, WhisperTokenizer

    tok = WhisperTokenizer(RayWhisperEngine(handle=None, opts=Options(address="127.0.0.1:1")), None)
    with pytest.raises(ValueError, match="'xx'"):
        tok.set_language("xx")
    assert tok._language is None  # nothing changed
    tok.set_language("zh")
    assert tok._language == "zh"
    with pytest.raises(ConfigError, match="tokenizer.language.*'xx'"):  # before connecting to the tier
        build_stage("tokenizer", "ray-whisper", {"address": "127.0.0.1:1", "language": "xx"}, BuildEnv("."))


@pytest.mark.integration
async def test_the_english_only_model_transcribes_english_and_refuses_other_languages(model_cache):
    """configs/english.yaml's Whisper tiny.en: English in, other languages refused where they are
    set (config, session.update), never silently transcribed as English."""
    from core import assets

    assets.ensure("whisper-tiny-en", model_cache, progress=lambda m: None)
    factory = build_stage("tokenizer", "whisper", {"model": "whisper-tiny-en", "language": "en", "languages": None},
                          BuildEnv(model_cache))
    try:
        assert not factory.engine.model.model.is_multilingual
        sentence = "Please turn on the kitchen lights."
        tok, result = await _transcribe(factory, piper(sentence))
        assert wer(sentence, result.text) <= 0.2, result.text
        assert result.language == "en"
        with pytest.raises(ValueError, match="English-only"):
            tok.set_language("zh")
        tok.set_language("en")
    finally:
        await factory.close()
    for key, value in (("language", "zh"), ("languages", ["en", "zh"])):
        with pytest.raises(ConfigError, match=f"tokenizer.{key}: .*English-only"):
            build_stage("tokenizer", "whisper", {"model": "whisper-tiny-en", "language": None, key: value},
                        BuildEnv(model_cache))
