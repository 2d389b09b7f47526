"""A deterministic stand-in for speech, for tests and benches that need more than a tone.

Syllables of 120-250 ms: a harmonic pulse train with a gliding pitch plus breath noise, shaped
by a falling spectral tilt and one formant-like band, under a syllable envelope. Broadband like
speech, which is the point: an echo canceller cannot find the delay of a pure tone (AEC3 takes a
narrowband reference for what it is and does not adapt), and a VAD hears it as talk.
"""
from __future__ import annotations

import zlib

import numpy as np


def speech_like(seconds: float, rate: int = 16_000, seed: int | str = 0, level_dbfs: float = -18.0,
                pitch_hz: tuple[float, float] = (100.0, 170.0)) -> np.ndarray:
    """int16 mono at `rate`, RMS `level_dbfs`; the same seed gives the same samples."""
    if isinstance(seed, str):
        seed = zlib.crc32(seed.encode("utf-8"))
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n)
    i = 0
    while i < n:
        syllable = int(rng.uniform(0.12, 0.25) * rate)
        m = min(syllable, n - i)
        t = np.arange(m) / rate
        glide = 1 + 0.15 * rng.choice([-1.0, 1.0]) * t / max(t[-1], 1e-3)
        f0 = rng.uniform(*pitch_hz) * glide
        phase = 2 * np.pi * np.cumsum(f0) / rate
        x = sum(np.sin(k * phase) / k for k in range(1, max(2, int(0.42 * rate / f0.max()))))
        x = x + rng.normal(0, 0.3, m)
        spectrum = np.fft.rfft(x)
        f = np.fft.rfftfreq(m, 1 / rate)
        formant = rng.uniform(400, min(2500, 0.4 * rate))
        spectrum *= 1 / (1 + f / 800) + 1.5 * np.exp(-(((f - formant) / 300) ** 2))
        out[i:i + m] = np.fft.irfft(spectrum, m) * np.sin(np.pi * np.arange(m) / m) ** 0.7
        i += syllable + int(rng.uniform(0.0, 0.06) * rate)  # a short gap now and then
    rms = float(np.sqrt(np.mean(out ** 2))) if n else 0.0
    if rms > 0:
        out *= 10 ** (level_dbfs / 20) * 32768 / rms
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)
