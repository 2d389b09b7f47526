"""Whisper tokenizer (streaming_tokenizer.whisper): caching and sharing of finalize(), and the
real model's accuracy on synthesized English."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from realtime.config import ConfigError
from realtime.stages import BuildEnv, build_stage
from streaming_tokenizer.whisper import WhisperTokenizer, _repeats
from tests.speech_util import espeak, frames, piper, silence, wer

WAIT_S = 120  # bounds a broken test instead of hanging; never reached when it works


class GatedEngine:
    """Stands in for WhisperEngine: 'transcribes' to the sample count, when the test allows."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def transcribe(self, audio: np.ndarray, language: str | None) -> tuple[str, str | None]:
        self.calls.append(len(audio))
        self.started.set()
        assert self.release.wait(WAIT_S)
        return f"{len(audio)} samples", language or "en"


@pytest.fixture
def engine():
    eng = GatedEngine()
    yield eng
    eng.release.set()
    eng.executor.shutdown(wait=True)


def _push(tok, n_frames: int, value: int = 1000) -> None:
    for _ in range(n_frames):
        tok.push(np.full(320, value, dtype=np.int16))


async def _started(engine: GatedEngine) -> None:
    assert await asyncio.to_thread(engine.started.wait, WAIT_S)
    engine.started.clear()


async def test_finalize_without_new_audio_returns_the_cached_result(engine):
    tok = WhisperTokenizer(engine, "en")
    _push(tok, 50)
    engine.release.set()
    first = await tok.finalize()
    assert first.text == "16000 samples" and first.speech_seconds == pytest.approx(1.0)
    again = await tok.finalize()
    assert again is first and engine.calls == [16000]
    _push(tok, 10)
    assert (await tok.finalize()).text == "19200 samples"
    assert engine.calls == [16000, 19200]


async def test_concurrent_finalize_calls_share_one_job(engine):
    tok = WhisperTokenizer(engine, None)
    _push(tok, 25)
    calls = [asyncio.create_task(tok.finalize()) for _ in range(3)]
    await _started(engine)
    engine.release.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
    assert engine.calls == [8000] and tok.transcriptions == 1
    assert {r.text for r in results} == {"8000 samples"}


async def test_push_during_finalize_is_snapshotted(engine):
    tok = WhisperTokenizer(engine, "en")
    _push(tok, 25)
    running = asyncio.create_task(tok.finalize())
    await _started(engine)
    _push(tok, 25, value=-3000)  # the user resumed while we transcribe
    engine.release.set()
    assert (await asyncio.wait_for(running, WAIT_S)).text == "8000 samples"
    later = await tok.finalize()
    assert later.text == "16000 samples" and later.speech_seconds == pytest.approx(1.0)


async def test_a_cancelled_caller_does_not_cancel_the_shared_job(engine):
    tok = WhisperTokenizer(engine, "en")
    _push(tok, 25)
    quitter = asyncio.create_task(tok.finalize())
    stayer = asyncio.create_task(tok.finalize())
    await _started(engine)
    quitter.cancel()
    engine.release.set()
    assert (await asyncio.wait_for(stayer, WAIT_S)).text == "8000 samples"
    assert quitter.cancelled()
    assert (await tok.finalize()).text == "8000 samples" and len(engine.calls) == 1


async def test_reset_forgets_the_turn_even_while_a_job_runs(engine):
    tok = WhisperTokenizer(engine, "en")
    _push(tok, 25)
    old = asyncio.create_task(tok.finalize())
    await _started(engine)
    tok.reset()
    _push(tok, 25)  # same length as the old turn: must not be served the old turn's result
    engine.release.set()
    await asyncio.wait_for(old, WAIT_S)
    await tok.finalize()
    assert len(engine.calls) == 2


async def test_no_audio_needs_no_model(engine):
    tok = WhisperTokenizer(engine, "en")
    result = await tok.finalize()
    assert result.text == "" and result.speech_seconds == 0.0 and engine.calls == []


def test_loop_detector():
    assert _repeats([5, 6, 7, 8, 5, 6, 7])
    assert not _repeats([5, 6, 7, 8, 5, 6, 9, 10])


# -- the real model ------------------------------------------------------------------------------

SENTENCES = [
    "Please turn on the kitchen lights.",
    "What time does the train to Boston leave tomorrow morning?",
]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    """whisper-base assembled once for this module (model.bin is two packages' parts joined)."""
    from realtime import assets

    cache = tmp_path_factory.mktemp("models")
    try:
        assets.ensure("whisper-base", cache, progress=lambda m: None)
    except assets.AssetError as exc:
        pytest.skip(str(exc))
    return cache


@pytest.fixture(scope="module")
def whisper(model_cache):
    factory = build_stage("tokenizer", "whisper", {"model": "whisper-base", "language": None},
                          BuildEnv(model_cache))
    yield factory
    factory.engine.executor.shutdown(wait=True)


async def _transcribe(factory, audio: np.ndarray):
    tok = factory.create()
    for f in frames(np.concatenate([silence(0.3), audio, silence(0.3)])):
        tok.push(f)
    return tok, await asyncio.wait_for(tok.finalize(), WAIT_S)


@pytest.mark.integration
@pytest.mark.parametrize("sentence", SENTENCES)
async def test_piper_speech_is_transcribed(whisper, sentence):
    _, result = await _transcribe(whisper, piper(sentence))
    assert wer(sentence, result.text) <= 0.2, result.text
    assert result.language == "en"
    assert result.speech_seconds > 1.0


@pytest.mark.integration
async def test_espeak_speech_is_transcribed(whisper):
    sentence = "Could you tell me a short story about a friendly dragon?"
    _, result = await _transcribe(whisper, espeak(sentence))
    assert wer(sentence, result.text) <= 0.2, result.text


@pytest.mark.integration
async def test_full_window_path(model_cache):
    """encoder_window_s: null runs faster-whisper's own transcribe() (the loop fallback)."""
    factory = build_stage("tokenizer", "whisper", {"encoder_window_s": None, "language": "en"},
                          BuildEnv(model_cache))
    try:
        _, result = await _transcribe(factory, piper(SENTENCES[0]))
        assert wer(SENTENCES[0], result.text) <= 0.2, result.text
        assert factory.engine.full_runs == 1 and factory.engine.window_runs == 0
    finally:
        await factory.close()


@pytest.mark.integration
async def test_a_looping_short_window_decode_is_redone_on_the_full_window(whisper, monkeypatch):
    import streaming_tokenizer.whisper as module

    monkeypatch.setattr(module, "token_budget", lambda seconds: 3)  # any sentence "loops"
    engine = whisper.engine
    window_runs, full_runs = engine.window_runs, engine.full_runs
    _, result = await _transcribe(whisper, piper(SENTENCES[1]))
    assert wer(SENTENCES[1], result.text) <= 0.2, result.text
    assert (engine.window_runs, engine.full_runs) == (window_runs + 1, full_runs + 1)


@pytest.mark.integration
async def test_real_model_cache_and_push_during_finalize(whisper):
    first_part, second_part = piper("Please open the window."), piper("And play some music.")
    tok = whisper.create()
    for f in frames(first_part):
        tok.push(f)
    running = asyncio.create_task(tok.finalize())
    await asyncio.sleep(0)  # the job has its snapshot; now the user goes on speaking
    for f in frames(np.concatenate([silence(0.2), second_part])):
        tok.push(f)
    first = await asyncio.wait_for(running, WAIT_S)
    assert "music" not in first.text.lower() and wer("Please open the window.", first.text) <= 0.2
    whole = await asyncio.wait_for(tok.finalize(), WAIT_S)
    assert wer("Please open the window. And play some music.", whole.text) <= 0.2, whole.text
    runs = tok.transcriptions
    assert await tok.finalize() is whole and tok.transcriptions == runs == 2


@pytest.mark.integration
def test_unknown_language_is_a_config_error(model_cache):
    with pytest.raises(ConfigError, match="tokenizer.language.*'xx'"):
        build_stage("tokenizer", "whisper", {"language": "xx"}, BuildEnv(model_cache))


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="beam_size"):
        build_stage("tokenizer", "whisper", {"beam_size": 5}, BuildEnv(tmp_path))
    with pytest.raises(ConfigError, match="neither an embedded model"):
        build_stage("tokenizer", "whisper", {"model": str(tmp_path)}, BuildEnv(tmp_path))
