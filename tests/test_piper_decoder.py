"""Piper decoder (decoder.piper_tts) with the real en_US-joe-medium voice and espeak-ng fallback."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.config import ConfigError
from core.stages import BuildEnv, build_stage
from tests.aio_util import cancel_after_first

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install -y espeak-ng"),
]
WAIT_S = 120  # a bound so a broken pipeline fails instead of hanging; never reached when it works


def _voice_file() -> Path:
    from core import assets

    try:  # the installed package's file directly: no copy into a cache for tests
        return assets.package_file(assets.ASSETS["piper-joe"].files[0].parts[0])
    except assets.AssetError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def decoder():
    dec = build_stage("decoder", "piper", {"voice": str(_voice_file()), "chunk_ms": 200},
                      BuildEnv(Path("/nonexistent-cache")))
    yield dec
    dec.pool.shutdown(wait=True)


class Text:
    """LLM-like text: records what was read and whether it was closed; may wait on a gate."""

    def __init__(self, pieces: list[str], gate_after: int | None = None, forever: bool = False) -> None:
        self.pieces, self.gate_after, self.forever = pieces, gate_after, forever
        self.gate = asyncio.Event()
        self.read = 0
        self.exhausted = False
        self.closed = False

    async def gen(self):
        try:
            while True:
                for i, piece in enumerate(self.pieces):
                    if i == self.gate_after:
                        await self.gate.wait()
                    await asyncio.sleep(0)
                    self.read += 1
                    yield piece
                if not self.forever:
                    break
            self.exhausted = True
        finally:
            self.closed = True


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


async def test_first_audio_leaves_before_the_text_is_complete(decoder):
    # The text stops after the first sentence until the first audio has arrived: a decoder that
    # waited for the whole text would never produce it (and the wait_for below would fail).
    text = Text(["Hello there,", " my good friend.", " This second sentence", " comes later."], gate_after=2)
    chunks = []

    async def consume():
        async for chunk in decoder.synthesize(text.gen()):
            if not chunks:
                assert not text.exhausted and text.read == 2
                text.gate.set()
            chunks.append(chunk)

    await asyncio.wait_for(consume(), WAIT_S)
    assert text.exhausted and text.closed
    assert chunks[0].text == "Hello there,"
    assert [c.text for c in chunks if c.text] == ["Hello there,", "my good friend.", "This second sentence comes later."]
    assert {c.sample_rate for c in chunks} == {22050} and decoder.sample_rate == 22050
    assert all(c.pcm.dtype == np.int16 for c in chunks)
    assert max(len(c.pcm) for c in chunks) <= int(0.2 * 22050)
    pcm = np.concatenate([c.pcm for c in chunks])
    assert len(pcm) > 2.0 * 22050 and _rms(pcm) > 300  # real speech: seconds of it, not silence


async def test_mandarin_goes_to_espeak_at_the_piper_rate(decoder):
    before = decoder.fallback.processes_started
    text = Text(["你好，今天天气很好。", " And now English again."])
    chunks = await asyncio.wait_for(_collect(decoder, text), WAIT_S)
    assert decoder.fallback.processes_started == before + 1  # one CJK run, one espeak-ng process
    assert {c.sample_rate for c in chunks} == {22050}
    labels = [i for i, c in enumerate(chunks) if c.text]
    assert [chunks[i].text for i in labels] == ["你好，今天天气很好。", "And now English again."]
    mandarin = np.concatenate([c.pcm for c in chunks[labels[0]:labels[1]]])
    assert len(mandarin) > 0.5 * 22050 and _rms(mandarin) > 300


async def test_mixed_clause_is_split_by_script(decoder):
    before = decoder.fallback.processes_started
    chunks = await asyncio.wait_for(_collect(decoder, Text(["Sure. ", "I am fine. 我很好。"])), WAIT_S)
    assert decoder.fallback.processes_started == before + 1
    assert [c.text for c in chunks if c.text] == ["Sure.", "I am fine. 我很好。"]  # one label per clause
    assert _rms(np.concatenate([c.pcm for c in chunks])) > 300


async def test_aclose_closes_text_and_stops(decoder):
    text = Text(["This reply goes on and on, ", "and it never seems to end. "], forever=True)
    synth = decoder.synthesize(text.gen())
    first = await asyncio.wait_for(synth.__anext__(), WAIT_S)
    assert first.text
    await synth.aclose()
    assert text.closed and not text.exhausted
    read = text.read
    await asyncio.sleep(0.05)
    assert text.read == read  # nothing reads the text any more


async def test_task_cancel_closes_text(decoder):
    text = Text(["Cancel me, please. ", "I keep talking. "], forever=True)
    await cancel_after_first(decoder.synthesize(text.gen()), WAIT_S)
    assert text.closed and not text.exhausted
    assert decoder.fallback.live_processes == 0


async def test_llm_error_fails_the_reply(decoder):
    async def failing():
        yield "A fine first sentence. "
        raise RuntimeError("llm went away")

    with pytest.raises(RuntimeError, match="llm went away"):
        await asyncio.wait_for(_collect(decoder, None, failing()), WAIT_S)


def test_options_are_validated():
    env = BuildEnv(Path("/nonexistent-cache"))
    with pytest.raises(ConfigError, match="length_scale or speed"):
        build_stage("decoder", "piper", {"voice": str(_voice_file()), "speed": 1.2, "length_scale": 0.8}, env)
    with pytest.raises(ConfigError, match="speaker"):
        build_stage("decoder", "piper", {"voice": str(_voice_file()), "speaker": "nobody"}, env)
    with pytest.raises(ConfigError, match="fallback"):
        build_stage("decoder", "piper", {"voice": str(_voice_file()), "fallback": "festival"}, env)


async def test_speed_option_shortens_audio(decoder):
    fast = build_stage("decoder", "piper", {"voice": str(_voice_file()), "speed": 2.0, "fallback": None},
                       BuildEnv(Path("/nonexistent-cache")))
    try:
        sentence = "The quick brown fox jumps over the lazy dog."
        normal = sum(len(c.pcm) for c in await _collect(decoder, Text([sentence])))
        quick = sum(len(c.pcm) for c in await _collect(fast, Text([sentence])))
        assert quick < 0.75 * normal
    finally:
        await fast.close()


async def _collect(decoder, text: Text | None, gen=None):
    return [c async for c in decoder.synthesize(gen if gen is not None else text.gen())]


class _ToneFallback:
    """A fallback at another rate (16 kHz): its audio must come out at the piper rate."""

    sample_rate = 16_000
    processes_started = 0
    live_processes = 0

    async def pcm(self, text: str):
        t = np.arange(8000) / self.sample_rate  # 0.5 s in two pieces
        tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        yield tone[:4000]
        yield tone[4000:]


async def test_fallback_audio_is_resampled_to_the_voice_rate(decoder):
    real = decoder.fallback
    decoder.fallback = _ToneFallback()
    try:
        chunks = await asyncio.wait_for(_collect(decoder, Text(["你好。"])), WAIT_S)
    finally:
        decoder.fallback = real
    assert {c.sample_rate for c in chunks} == {22050}
    total = sum(len(c.pcm) for c in chunks)
    assert abs(total - 0.5 * 22050) < 100  # 0.5 s stays 0.5 s at the new rate
    spectrum = np.abs(np.fft.rfft(np.concatenate([c.pcm for c in chunks]).astype(np.float64)))
    assert abs(np.argmax(spectrum) * 22050 / (2 * (len(spectrum) - 1)) - 440) < 10  # the pitch survived


async def test_two_sessions_share_the_voice(decoder):
    a, b = Text(["First session speaking now."]), Text(["Second session, also speaking."])
    got_a, got_b = await asyncio.wait_for(asyncio.gather(_collect(decoder, a), _collect(decoder, b)), WAIT_S)
    assert [c.text for c in got_a if c.text] == ["First session speaking now."]
    assert [c.text for c in got_b if c.text] == ["Second session,", "also speaking."]
    assert a.closed and b.closed


def _leading_silence_ms(pcm: np.ndarray, rate: int) -> float:
    win = rate // 200  # 5 ms windows, the bench's voiced rule (RMS > -50 dBFS)
    rms = [_rms(pcm[i:i + win]) / 32768 for i in range(0, len(pcm) - win, win)]
    return 5.0 * next(i for i, r in enumerate(rms) if r > 10 ** (-50 / 20))


async def test_the_reply_starts_with_the_first_word_not_the_voices_lead_in(decoder):
    async def one(text: str) -> np.ndarray:
        async def gen():
            yield text
        return np.concatenate([c.pcm async for c in decoder.synthesize(gen())])

    sentence = "The moon is about four hundred thousand kilometers away. It is far."
    first = "The moon is about four hundred thousand kilometers away."
    raws = [np.concatenate([s async for s in decoder.span_audio(first)]) for _ in range(3)]
    raw = raws[0]
    reply = await one(sentence)
    # piper's own lead-in (20-55 ms for this sentence: VITS samples its durations)
    assert max(_leading_silence_ms(r, 22050) for r in raws) >= 20
    assert _leading_silence_ms(reply, 22050) <= 5
    # Only the reply's start is cut: the second sentence keeps its own lead-in and pause.
    assert len(reply) > len(raw)


def _trailing_silence_ms(pcm: np.ndarray, rate: int) -> float:
    win = rate // 200
    loud = [_rms(pcm[i:i + win]) / 32768 > 10 ** (-50 / 20) for i in range(0, len(pcm) - win + 1, win)]
    return 5.0 * loud[::-1].index(True)


async def test_a_first_clause_cut_mid_sentence_runs_on_without_a_sentence_pause():
    dec = build_stage("decoder", "piper", {"voice": str(_voice_file()), "first_clause_words": 3},
                      BuildEnv(Path("/nonexistent-cache")))
    try:
        async def gen():
            for word in "Sure thing I can help you with that today. ".split(" "):
                yield word + " "

        chunks = [c async for c in dec.synthesize(gen())]
        assert [c.text for c in chunks if c.text] == ["Sure thing I", "can help you with that today."]
        second = next(i for i, c in enumerate(chunks) if c.text.startswith("can"))
        first_clause = np.concatenate([c.pcm for c in chunks[:second]])
        raw = np.concatenate([s async for s in dec.span_audio("Sure thing I")])
        assert _trailing_silence_ms(raw, 22050) >= 60  # piper ends it with a pause (75-125 ms seen)...
        assert _trailing_silence_ms(first_clause, 22050) <= 45  # ...which the reply cuts to 40 ms
    finally:
        dec.pool.shutdown(wait=True)


async def test_a_long_sentence_leaves_no_memory_arena_behind(decoder):
    """onnxruntime's arena kept the high-water mark of the longest sentence (+320 MiB after one of
    80 words, for good); the voice's session gives it back after each run (ShrinkingSession)."""
    import psutil

    def rss() -> int:
        return psutil.Process().memory_info().rss

    def say(text: str) -> int:
        return sum(len(c.audio_int16_array) for c in decoder.voice.synthesize(text, decoder.syn_config))

    await decoder._run(say, "Ready.")
    before = rss()
    samples = await decoder._run(say, " ".join(["hello there my friend"] * 20) + ".")
    assert samples > 10 * decoder.sample_rate  # it did speak all 80 words
    assert rss() - before < 150 * 2**20, f"grew {(rss() - before) / 2**20:.0f} MiB"


def test_malloc_arenas_are_bounded_and_trim_works():
    from core import memory

    assert memory.bound_malloc_arenas() is True  # glibc (Debian): mallopt accepted
    blocks = [bytearray(1 << 20) for _ in range(64)]
    del blocks
    assert memory.trim() in (True, False)  # returns whether memory went back; must not raise
