"""Test speech for the input stages: known sentences synthesized offline, and a WER to score ASR."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

SR = 16_000
FRAME = 320
_WORDS = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance / reference words (case and punctuation ignored)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[:], i
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return row[-1] / max(1, len(ref))


def to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    out = soxr.resample(audio.astype(np.float32) / 32768.0, rate, SR)
    return np.clip(out * 32768.0, -32768, 32767).astype(np.int16)


def espeak(text: str, voice: str = "en-us", wpm: int = 160) -> np.ndarray:
    """16 kHz int16 speech from espeak-ng; skips the test if espeak-ng is not installed."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text],
                         capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return to_16k(pcm, w.getframerate())


def piper_voice_file() -> Path:
    """The installed joe voice (no copy into a cache); skips if its package is missing."""
    from core import assets

    try:
        return assets.package_file(assets.ASSETS["piper-joe"].files[0].parts[0])
    except assets.AssetError as exc:
        pytest.skip(str(exc))


_voices: dict[Path, object] = {}


def piper(text: str) -> np.ndarray:
    """16 kHz int16 speech from piper's en_US-joe-medium, deterministic (no sampling noise)."""
    from piper import PiperVoice, SynthesisConfig

    path = piper_voice_file()
    if path not in _voices:
        _voices[path] = PiperVoice.load(path)
    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_voices[path].synthesize(text, syn_config=cfg))
    pcm = np.concatenate([c.audio_int16_array for c in chunks])
    return to_16k(pcm, chunks[0].sample_rate)


def frames(audio: np.ndarray) -> list[np.ndarray]:
    """20 ms frames; the last partial frame is zero-padded."""
    pad = (-len(audio)) % FRAME
    audio = np.concatenate([audio, np.zeros(pad, dtype=np.int16)])
    return [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.int16)


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    """White noise at an RMS level in dBFS."""
    rms = 10 ** (dbfs / 20) * 32768
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, rms, int(seconds * SR)), -32768, 32767).astype(np.int16)


async def transcribe(audio: np.ndarray, rate: int, language: str, cache_path: Path) -> str:
    """What the embedded Whisper (base) hears in `audio` (int16 at `rate`): to check that reply audio
    says its text."""
    from core.stages import BuildEnv, build_stage

    factory = build_stage("tokenizer", "whisper", {"language": language}, BuildEnv(cache_path))
    try:
        tok = factory.create()
        for f in frames(to_16k(audio, rate).astype(np.int16)):
            tok.push(f)
        return (await tok.finalize()).text
    finally:
        await factory.close()
