"""Audio files for the offline commands (`step-realtime chat` / `tts`): read anything, write WAV.

Reading converts what it can, so a person can hand in whatever their recorder made: plain PCM WAV
(8/16/24/32-bit, any rate, any number of channels) is read with the stdlib `wave` module; anything
else (float WAV, FLAC, MP3, Ogg, M4A, ...) is decoded by PyAV (ffmpeg, already installed for
WebRTC). Channels are averaged to mono and the rate is changed with soxr. What could not be read
is an AudioFileError with one line that names the file and says why.
"""
from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr


class AudioFileError(ValueError):
    """A file that is missing or not audio we can decode; the message is one line."""


@dataclass(frozen=True)
class AudioFile:
    pcm: np.ndarray  # int16 mono at `rate`
    rate: int
    source_rate: int  # what the file had, for the "converted" note
    source_channels: int
    source_format: str  # "PCM 16-bit WAV", "flac", ...

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.rate

    def conversion(self) -> str:
        """What was changed to get 16-bit mono at `rate` ("" if nothing), for a note on stderr."""
        changes = []
        if self.source_format != "PCM 16-bit WAV":
            changes.append(f"decoded {self.source_format}")
        if self.source_channels != 1:
            changes.append(f"mixed {self.source_channels} channels to mono")
        if self.source_rate != self.rate:
            changes.append(f"resampled {self.source_rate} Hz to {self.rate} Hz")
        return ", ".join(changes)


def read_audio(path: str | Path, rate: int | None) -> AudioFile:
    """The file's audio as int16 mono at `rate` (None: at the file's own rate)."""
    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if not path.is_file():
        raise AudioFileError(f"{path}: not a file")
    try:
        audio, source_rate, channels, fmt = _read_pcm_wav(path)
    except (wave.Error, EOFError, _NotPlainPcm):
        audio, source_rate, channels, fmt = _read_with_av(path)
    if audio.size == 0:
        raise AudioFileError(f"{path}: the file holds no audio")
    rate = rate or source_rate
    if source_rate != rate:
        audio = soxr.resample(audio, source_rate, rate)
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    return AudioFile(pcm, rate, source_rate, channels, fmt)


def write_wav(path: str | Path, pcm: np.ndarray, rate: int) -> None:
    """16-bit mono PCM WAV (what every player and Step-Audio's own scripts read)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())


class _NotPlainPcm(Exception):
    pass


def _read_pcm_wav(path: Path) -> tuple[np.ndarray, int, int, str]:
    """float32 mono in [-1, 1], rate, channels, format name. wave.Error for anything but PCM WAV."""
    with wave.open(str(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width not in (1, 2, 3, 4) or channels < 1 or rate <= 0:
        raise _NotPlainPcm
    if width == 3:  # 24-bit: widen each little-endian sample to 32 bits
        b = np.frombuffer(raw[: len(raw) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
        ints = (b[:, 0].astype(np.int32) << 8 | b[:, 1].astype(np.int32) << 16 | b[:, 2].astype(np.int32) << 24)
        samples = ints.astype(np.float32) / 2**31
    elif width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128) / 128
    else:
        dtype = "<i2" if width == 2 else "<i4"
        samples = np.frombuffer(raw[: len(raw) // width * width], dtype=dtype).astype(np.float32) / 2 ** (8 * width - 1)
    samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    return samples.astype(np.float32), rate, channels, f"PCM {8 * width}-bit WAV"


def _read_with_av(path: Path) -> tuple[np.ndarray, int, int, str]:
    import av  # ffmpeg's decoders; only for files the stdlib cannot read

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path}: no audio stream in the file")
            stream = container.streams.audio[0]
            channels = stream.codec_context.channels or 1
            rate = stream.codec_context.sample_rate
            fmt = stream.codec_context.name
            # Planar float keeps every channel apart; we average them ourselves.
            resampler = av.AudioResampler(format="fltp")
            parts = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray())
    except AudioFileError:
        raise
    except Exception as exc:  # PyAV raises its own error per ffmpeg failure: all mean "cannot read"
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise AudioFileError(f"{path}: not an audio file we can read ({reason})") from None
    if not parts or not rate:
        raise AudioFileError(f"{path}: the file holds no audio")
    audio = np.concatenate(parts, axis=1).mean(axis=0).astype(np.float32)
    return audio, rate, channels, fmt
