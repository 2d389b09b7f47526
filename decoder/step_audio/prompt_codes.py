"""Prompt codes of a speaker's prompt wav, computed by the Step-Audio speech tokenizer at start-up.

This is the reference's wav2token as its TTS uses it for speaker prompts: resample to 16 kHz, peak
normalise to 0.999 (energy_norm), trim silence (librosa.effects.trim at top_db 20, frame 512,
hop 128, then keep 50 ms before the speech and pad/cut to the speech length rounded up to 15 ms
hops + 270 ms), tokenize with both codebooks (semantic segments of up to 30 s, as the reference's
offline call), interleave 2:3, and return LLM ids 65536 + n. The tokenizer itself is
streaming_tokenizer.step_audio (whole-utterance `tokenize`).
"""
from __future__ import annotations

import math

import numpy as np
import soxr

RATE = 16_000
TOP_DB = 20.0
TRIM_FRAME, TRIM_HOP = 512, 128
KEEP_LEFT_S, KEEP_RIGHT_S, OUT_HOP = 0.05, 0.22, 240
OFFLINE_SEGMENT_S = 30.0  # the reference tokenizes up to 30 s of audio per semantic call


def energy_norm(audio: np.ndarray) -> np.ndarray:
    return audio / max(float(np.max(np.abs(audio))) if audio.size else 0.0, 0.01) * 0.999


def speech_bounds(audio: np.ndarray) -> tuple[int, int]:
    """[start, end) samples of the non-silent part, as librosa.effects.trim(top_db=20, 512, 128):
    centred frames (zero padded), RMS in dB relative to the loudest frame, > -top_db is speech."""
    padded = np.pad(audio.astype(np.float64), TRIM_FRAME // 2)
    n_frames = 1 + len(audio) // TRIM_HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, TRIM_FRAME)[::TRIM_HOP][:n_frames]
    power = np.maximum(np.mean(frames ** 2, axis=1), 1e-10)  # librosa's amin 1e-5, squared
    db = 10 * np.log10(power) - 10 * np.log10(max(power.max(), 1e-10))
    loud = np.flatnonzero(db > -TOP_DB)
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * TRIM_HOP), min(len(audio), int((loud[-1] + 1) * TRIM_HOP))


def trim_silence(audio: np.ndarray, rate: int = RATE) -> np.ndarray:
    start, end = speech_bounds(audio)
    hops = math.ceil((end - start) / OUT_HOP)
    begin = start - int(KEEP_LEFT_S * rate)
    out = audio[begin:] if begin > 0 else np.pad(audio, (-begin, 0))
    out_len = int(hops * OUT_HOP + (KEEP_LEFT_S + KEEP_RIGHT_S) * rate)
    return out[:out_len] if out_len < len(out) else np.pad(out, (0, out_len - len(out)))


def preprocess(audio: np.ndarray, rate: int) -> np.ndarray:
    """Mono float audio at any rate -> what the reference tokenizes (16 kHz, normalised, trimmed)."""
    x = audio.astype(np.float32)
    if rate != RATE:
        x = soxr.resample(x, rate, RATE)
    return trim_silence(energy_norm(x)).astype(np.float32)


class SpeechTokenizerCodes:
    """Loads the Step-Audio-Tokenizer models once; call with (audio, rate) -> LLM ids 65536 + n."""

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        from streaming_tokenizer.step_audio import Options, load_models

        dev = "cuda" if device.startswith("cuda") else "cpu"
        self.models = load_models(Options(model_dir=model_dir, device=dev, transcript="none",
                                          semantic_segment_s=OFFLINE_SEGMENT_S))

    def __call__(self, audio: np.ndarray, rate: int) -> list[int]:
        from streaming_tokenizer.step_audio.interleave import interleave, token_ids

        linguistic, semantic = self.models.tokenize(preprocess(audio, rate))
        return token_ids(interleave(linguistic, semantic))
