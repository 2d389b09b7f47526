"""Whisper's 128-bin log-mel spectrogram, the CosyVoice speech tokenizer's input, in numpy.

faster-whisper's FeatureExtractor computes exactly whisper.log_mel_spectrogram (n_fft 400,
hop 160, Slaney mel filters, log10 clamped at 1e-10, floor at max - 8, then (x + 4) / 4) when
called without its trailing padding, so we reuse it rather than pull in openai-whisper/torch.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

N_MELS = 128
HOP = 160


@lru_cache(maxsize=1)
def _extractor():
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=N_MELS)


def log_mel(samples: np.ndarray) -> np.ndarray:
    """16 kHz float samples → (128, len // 160) float32, as whisper.log_mel_spectrogram(x, n_mels=128)."""
    return _extractor()(samples.astype(np.float32), padding=0).astype(np.float32)
