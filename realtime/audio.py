"""Input audio: whatever the client sends → 16 kHz mono int16 in 20 ms frames for the controller.

Three sources: base64 PCM16 from Realtime `input_audio_buffer.append` (24 kHz by default), base64
G.711 μ-law/A-law at 8 kHz (Realtime `audio/pcmu`/`audio/pcma`, telephony), and av.AudioFrame from a WebRTC track (Opus decoded by aiortc: 48 kHz, often stereo). Both are
resampled with a streaming resampler (state kept across chunks, so no clicks at chunk edges) and
cut into exact 320-sample frames; a partial frame waits for the next chunk. A session's echo
canceller (realtime/echo.py), when on, runs at 8 kHz on telephone-band input before it is
resampled, else on the 16 kHz frames.
"""
from __future__ import annotations

import base64
import binascii

import av
import numpy as np
import soxr

from realtime import g711
from realtime.echo import EchoCanceller
from vad.base import FRAME_SAMPLES, SAMPLE_RATE

# PCM input rates we resample from. OpenAI's GA API only names 24000; the rest are for
# clients that capture at a device rate and would rather not resample themselves.
SUPPORTED_PCM_RATES = (8000, 16000, 24000, 44100, 48000)


class AudioFormatError(ValueError):
    """Audio the session cannot take (bad base64, odd byte count, unsupported rate)."""


class Framer:
    """Collects 16 kHz int16 samples and hands out whole 20 ms frames."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        buf = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        whole = len(buf) // FRAME_SAMPLES * FRAME_SAMPLES
        frames = [buf[i:i + FRAME_SAMPLES].copy() for i in range(0, whole, FRAME_SAMPLES)]
        self._pending = buf[whole:].copy()
        return frames

    def clear(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)


def cancel_echo(echo: EchoCanceller | None, frames: list[np.ndarray]) -> list[np.ndarray]:
    """16 kHz frames through the echo canceller (if on), as one arrival."""
    if echo is None or not echo.enabled or echo.rate != SAMPLE_RATE or not frames:
        return frames
    clean = echo.cancel(np.concatenate(frames))
    return [clean[i:i + FRAME_SAMPLES] for i in range(0, len(clean), FRAME_SAMPLES)]


class PcmInput:
    """Base64 PCM16 little-endian mono at `rate` → 16 kHz frames."""

    echo: EchoCanceller | None = None  # set by the session

    def __init__(self, rate: int = 24_000, quality: str = "HQ") -> None:
        if rate not in SUPPORTED_PCM_RATES:
            raise AudioFormatError(f"unsupported input rate {rate} (supported: {', '.join(map(str, SUPPORTED_PCM_RATES))})")
        self.rate = rate
        self._framer = Framer()
        self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="int16", quality=quality) if rate != SAMPLE_RATE else None

    def decode(self, audio_b64: str) -> np.ndarray:
        """Validate and decode one append's payload (raises AudioFormatError)."""
        raw = _b64decode(audio_b64)
        if len(raw) % 2:
            raise AudioFormatError("audio has an odd number of bytes; expected 16-bit PCM samples")
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)

    def frames(self, samples: np.ndarray) -> list[np.ndarray]:
        at_input_rate = self.echo is not None and self.echo.enabled and self.echo.rate == self.rate
        if at_input_rate:  # telephone band: cancel where the audio is, before upsampling
            samples = self.echo.cancel(samples)
        if self._resampler is not None and len(samples):
            samples = self._resampler.resample_chunk(samples)
        frames = self._framer.push(samples)
        return frames if at_input_rate else cancel_echo(self.echo, frames)

    def append(self, audio_b64: str) -> list[np.ndarray]:
        return self.frames(self.decode(audio_b64))

    def clear(self) -> None:
        self._framer.clear()
        if self._resampler is not None:
            self._resampler.clear()


class G711Input(PcmInput):
    """Base64 G.711 (`law`: g711.MULAW or g711.ALAW), 8 kHz mono → 16 kHz frames."""

    def __init__(self, law: str) -> None:
        # Medium quality: telephone audio has nothing above 3.4 kHz, and soxr's HQ filter would
        # hold back ~65 ms of 8 kHz input (MQ: ~25 ms) before the VAD hears it.
        super().__init__(g711.RATE, quality="MQ")
        self.law = law

    def decode(self, audio_b64: str) -> np.ndarray:
        return g711.decode(_b64decode(audio_b64), self.law)


def input_for(format_type: str, rate: int) -> PcmInput:
    """The input decoder for a Realtime audio format type (audio/pcm at `rate`, audio/pcmu, audio/pcma)."""
    if format_type in (g711.MULAW, g711.ALAW):
        return G711Input(format_type)
    return PcmInput(rate)


def _b64decode(audio_b64: str) -> bytes:
    try:
        return base64.b64decode(audio_b64, validate=True)
    except (binascii.Error, ValueError):
        raise AudioFormatError("audio is not valid base64") from None


class WebRtcInput:
    """av.AudioFrame (any rate/layout/format aiortc hands us) → 16 kHz mono frames."""

    def __init__(self, echo: EchoCanceller | None = None) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._framer = Framer()
        self.echo = echo

    def frames(self, frame: av.AudioFrame) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for converted in self._resampler.resample(frame):
            out.extend(self._framer.push(converted.to_ndarray().reshape(-1).astype(np.int16)))
        return cancel_echo(self.echo, out)


def encode_pcm16(samples: np.ndarray) -> str:
    """int16 mono → base64 little-endian PCM16 (Realtime `delta` payloads)."""
    return base64.b64encode(samples.astype("<i2").tobytes()).decode("ascii")


def encode_delta(samples: np.ndarray, fmt: str) -> str:
    """int16 mono at the format's rate → a base64 `delta` payload in `fmt` (audio/pcm, pcmu, pcma)."""
    if fmt in (g711.MULAW, g711.ALAW):
        return base64.b64encode(g711.encode(samples, fmt)).decode("ascii")
    return encode_pcm16(samples)
