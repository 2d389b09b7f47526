"""espeak-ng decoder (decoder.espeak): needs the Debian package espeak-ng, no model files."""
from __future__ import annotations

import asyncio
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from decoder import espeak
from core.config import ConfigError
from core.stages import BuildEnv, build_stage

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install -y espeak-ng")


class Text:
    """A text stream that records how far it was read and whether it was closed."""

    def __init__(self, pieces: list[str], forever: bool = False) -> None:
        self.pieces, self.forever = pieces, forever
        self.read = 0
        self.closed = False

    async def gen(self):
        try:
            while True:
                for piece in self.pieces:
                    await asyncio.sleep(0)
                    self.read += 1
                    yield piece
                if not self.forever:
                    return
        finally:
            self.closed = True


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def test_wav_header_parse():
    fmt = struct.pack("<HHIIHH", 1, 1, 22050, 44100, 2, 16)
    header = b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt \
        + b"data" + struct.pack("<I", 0x7FFFFFFF)
    assert espeak._parse_wav_header(header) == (22050, 44)
    with pytest.raises(espeak.EspeakError):
        espeak._parse_wav_header(b"garbage" * 7)


def test_missing_executable_is_a_clear_error():
    with pytest.raises(espeak.EspeakError, match="apt-get install"):
        espeak.EspeakDecoder(espeak.Options(executable="no-such-espeak-binary"))


def test_bad_option_names_itself(tmp_path: Path):
    with pytest.raises(ConfigError, match="speed_wpm"):
        build_stage("decoder", "espeak", {"speed_wpm": 5}, BuildEnv(tmp_path))


@needs_espeak
def test_voice_per_language():
    dec = espeak.EspeakDecoder()
    assert dec.voice_for("Hello there.") == "en-us"
    assert dec.voice_for("你好，世界。") == "cmn-latn-pinyin"
    assert dec.voice_for("こんにちは。") == "ja"


@needs_espeak
async def test_mandarin_pcm_is_speech():
    dec = espeak.EspeakDecoder()
    pcm = np.concatenate([p async for p in dec.pcm("你好，今天天气很好。")])
    assert pcm.dtype == np.int16
    assert len(pcm) > 0.5 * dec.sample_rate  # several syllables, well over half a second
    assert _rms(pcm) > 300  # not silence
    assert dec.live_processes == 0


@needs_espeak
async def test_synthesize_labels_clauses(tmp_path: Path):
    dec = build_stage("decoder", "espeak", {"chunk_ms": 100}, BuildEnv(tmp_path))
    text = Text(["Hello there, my good friend.", " How are you today?"])
    chunks = [c async for c in dec.synthesize(text.gen())]
    assert {c.sample_rate for c in chunks} == {espeak.ESPEAK_RATE}
    assert [c.text for c in chunks if c.text] == ["Hello there,", "my good friend.", "How are you today?"]
    assert chunks[0].text and max(len(c.pcm) for c in chunks) <= int(0.1 * espeak.ESPEAK_RATE)
    assert text.closed


@needs_espeak
async def test_cancel_kills_espeak_and_closes_text():
    dec = espeak.EspeakDecoder(espeak.Options(chunk_ms=20))
    text = Text(["This sentence is long enough to take a few seconds to say out loud. "], forever=True)
    synth = dec.synthesize(text.gen())
    first = await synth.__anext__()
    assert first.text
    await synth.aclose()
    assert text.closed
    assert dec.live_processes == 0
    assert dec.processes_started == 1


@needs_espeak
async def test_task_cancel_closes_text():
    dec = espeak.EspeakDecoder(espeak.Options(chunk_ms=20))
    text = Text(["Again a sentence that goes on for a while, and on. "], forever=True)
    got_one = asyncio.Event()

    async def consume():
        async for _ in dec.synthesize(text.gen()):
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert text.closed
    assert dec.live_processes == 0
