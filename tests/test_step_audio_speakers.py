"""Speaker directories: our NAME.json layout and the reference's speakers_info.json layout, whose
prompt codes are computed at start-up by the Step-Audio speech tokenizer (tiny random fixture)."""
from __future__ import annotations

import json
import math
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("kaldi_native_fbank")

from decoder.step_audio.prompt_codes import SpeechTokenizerCodes, preprocess, speech_bounds, trim_silence  # noqa: E402
from core.config import ConfigError  # noqa: E402
from core.stages import BuildEnv, build_stage  # noqa: E402
from streaming_tokenizer.step_audio.interleave import interleave, token_ids  # noqa: E402
from tests.fixtures.step_audio_tiny import speechlike, write_tiny_tokenizer  # noqa: E402
from tests.step_audio_fixtures import FIX, _one_torch_thread  # noqa: E402,F401 (fixture)

A = 65536


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("speaker_tokenizer"), seed=1)


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())


def _padded_speech(rate: int = 16_000, before: float = 0.5, speech: float = 1.5, after: float = 0.7, seed=4):
    x = speechlike(speech, seed=seed, sample_rate=rate) * 0.3
    return np.concatenate([np.zeros(int(before * rate)), x, np.zeros(int(after * rate))]).astype(np.float32)


def test_trim_keeps_50_ms_before_and_pads_to_the_reference_length():
    audio = _padded_speech()
    start, end = speech_bounds(audio)
    assert abs(start - 8000) <= 512 and abs(end - 32000) <= 512  # speech is 0.5 s .. 2.0 s
    out = trim_silence(audio)
    assert len(out) == math.ceil((end - start) / 240) * 240 + 4320  # 15 ms hops + 50 ms + 220 ms
    assert np.array_equal(out, audio[start - 800:start - 800 + len(out)])  # starts 50 ms before the speech
    # Speech right at the start: zeros are prepended to keep the 50 ms margin.
    tone = (0.3 * np.sin(np.arange(16000) * 0.1)).astype(np.float32)
    assert speech_bounds(tone) == (0, 16000)
    early = trim_silence(tone)
    assert not early[:800].any() and np.array_equal(early[800:16800], tone)
    assert len(early) == 16000 // 240 * 240 + 240 + 4320 and not early[16800:].any()
    # Silence only: nothing is speech, so only the kept margins remain (zeros).
    assert not trim_silence(np.zeros(16000, dtype=np.float32)).any()


def test_preprocess_normalises_the_peak_and_resamples():
    audio = _padded_speech(rate=24_000)
    out = preprocess(audio, 24_000)
    assert abs(np.abs(out).max() - 0.999) < 0.02  # energy_norm (resampling ripples a little)
    assert abs(len(out) - len(preprocess(_padded_speech(), 16_000))) <= 240


def _reference_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "speakers_info.json").write_text(json.dumps({"Tingting": "那等我们到海洋馆之后", "Other": "你好"},
                                                        ensure_ascii=False), encoding="utf-8")
    _write_wav(path / "Tingting_prompt.wav", _padded_speech(rate=24_000), 24_000)
    _write_wav(path / "Other_prompt.wav", _padded_speech(rate=16_000, seed=9), 16_000)
    return path


def _build(tmp_path, speaker_dir, **extra):
    return build_stage("decoder", "step-audio", {
        "model_dir": str(FIX / "model"), "speaker_dir": str(speaker_dir), "speaker": "Tingting",
        "llm_base_url": "http://127.0.0.1:9/v1", "seed": 1, **extra}, BuildEnv(cache_dir=tmp_path))


async def test_reference_layout_codes_come_from_the_speech_tokenizer(tmp_path, tokenizer_dir):
    spk_dir = _reference_dir(tmp_path / "speakers")
    dec = _build(tmp_path, spk_dir, tokenizer_model_dir=str(tokenizer_dir))
    spk = dec.common.speakers["Tingting"]
    assert spk.prompt_text == "那等我们到海洋馆之后" and set(dec.common.speakers) == {"Tingting", "Other"}
    codes = spk.prompt_codes
    # 2 linguistic + 3 semantic codes per 120 ms of the trimmed prompt (~1.77 s: 1.5 s + margins).
    assert len(codes) % 5 == 0 and abs(len(codes) / 5 - 1.77 / 0.12) <= 2
    for g in range(0, len(codes), 5):
        assert all(A <= c < A + 1024 for c in codes[g:g + 2])
        assert all(A + 1024 <= c < A + 1024 + 4096 for c in codes[g + 2:g + 5])
    assert len(set(codes)) > 5  # really computed from the audio
    # Exactly the tokenizer's output for the reference's preprocessing of the prompt wav.
    tok = SpeechTokenizerCodes(str(tokenizer_dir))
    from decoder.step_audio.speakers import read_wav

    audio, rate = read_wav(spk_dir / "Tingting_prompt.wav")
    assert codes == token_ids(interleave(*tok.models.tokenize(preprocess(audio, rate))))
    assert codes != token_ids(interleave(*tok.models.tokenize(preprocess(audio, rate)[2000:])))
    # The flow prompt uses the same codes (minus the LLM offset), as the reference does.
    assert spk.flow_prompt.token.tolist() == [[c - A for c in codes]]
    assert dec.common.speakers["Other"].prompt_codes != codes
    await dec.close()


async def test_name_json_wins_and_needs_no_tokenizer(tmp_path):
    spk_dir = _reference_dir(tmp_path / "speakers")
    for name in ("Tingting", "Other"):
        (spk_dir / f"{name}.json").write_text(json.dumps({"prompt_text": "你好", "prompt_codes": [A + 5, 7]}))
    dec = _build(tmp_path, spk_dir)  # no tokenizer_model_dir: every speaker has its codes
    assert dec.common.speakers["Tingting"].prompt_codes == [A + 5, A + 7]
    assert set(dec.common.speakers) == {"Tingting", "Other"}  # speakers_info.json is not a speaker
    await dec.close()


def test_reference_layout_without_tokenizer_is_a_clear_error(tmp_path):
    spk_dir = _reference_dir(tmp_path / "speakers")
    with pytest.raises(ValueError, match="tokenizer_model_dir"):
        _build(tmp_path, spk_dir)


def test_missing_prompt_wav_is_named(tmp_path, tokenizer_dir):
    spk_dir = _reference_dir(tmp_path / "speakers")
    (spk_dir / "Other_prompt.wav").unlink()
    with pytest.raises(FileNotFoundError, match="Other_prompt.wav"):
        _build(tmp_path, spk_dir, tokenizer_model_dir=str(tokenizer_dir))


def test_bad_tokenizer_dir_is_a_config_error(tmp_path):
    spk_dir = _reference_dir(tmp_path / "speakers")
    with pytest.raises(ConfigError, match="tokenizer.model_dir"):
        _build(tmp_path, spk_dir, tokenizer_model_dir=str(tmp_path / "nope"))


async def test_music_voice_reuses_the_computed_codes(tmp_path, tokenizer_dir, monkeypatch):
    import decoder.step_audio.prompt_codes as pc

    calls = []
    real_call = pc.SpeechTokenizerCodes.__call__
    monkeypatch.setattr(pc.SpeechTokenizerCodes, "__call__",
                        lambda self, audio, rate: calls.append(rate) or real_call(self, audio, rate))
    root = tmp_path / "tts"
    shutil.copytree(FIX / "model", root / "CosyVoice-300M-25Hz")
    shutil.copytree(FIX / "model", root / "CosyVoice-300M-25Hz-Music")
    spk_dir = _reference_dir(tmp_path / "speakers")
    dec = build_stage("decoder", "step-audio", {
        "model_dir": str(root), "speaker_dir": str(spk_dir), "speaker": "Tingting",
        "tokenizer_model_dir": str(tokenizer_dir)}, BuildEnv(cache_dir=tmp_path))
    assert dec.music is not None
    assert dec.music.speakers["Tingting"].prompt_codes == dec.common.speakers["Tingting"].prompt_codes
    assert len(calls) == 2  # two speakers, tokenized once each for both voices
    await dec.close()
