"""decoder.audio_chunks: chunking and trimming of TTS audio."""
from __future__ import annotations

import numpy as np

from decoder.audio_chunks import chunked, trim_leading_silence

RATE = 22050


def _tone(seconds: float, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def test_leading_silence_is_cut_to_a_few_ms_before_the_sound():
    lead = np.zeros(int(0.040 * RATE), np.int16)
    lead[: int(0.01 * RATE)] = 20  # noise floor well under -50 dBFS
    pcm = np.concatenate([lead, _tone(0.3)])
    out = trim_leading_silence(pcm, RATE, keep_ms=5)
    cut = len(pcm) - len(out)
    assert int(0.030 * RATE) <= cut <= int(0.040 * RATE)  # the 40 ms lead-in minus ~5-10 ms
    assert np.array_equal(out[-len(_tone(0.3)):], _tone(0.3))  # the sound itself is untouched


def test_audio_that_starts_loud_or_is_all_silent_is_unchanged():
    tone = _tone(0.1)
    assert trim_leading_silence(tone, RATE) is tone or np.array_equal(trim_leading_silence(tone, RATE), tone)
    silent = np.zeros(RATE // 10, np.int16)
    assert len(trim_leading_silence(silent, RATE)) == len(silent)
    assert len(trim_leading_silence(np.zeros(3, np.int16), RATE)) == 3


def test_chunked_puts_the_text_on_the_first_chunk_only():
    chunks = list(chunked(_tone(0.5), RATE, 0.2, "hello"))
    assert [c.text for c in chunks] == ["hello", "", ""]
    assert sum(len(c.pcm) for c in chunks) == len(_tone(0.5))
