"""Voice-cloning inputs for the flow: prompt log-mel (22.05 kHz) and CAM++ speaker embedding (16 kHz).

prompt_mel() reproduces CosyVoice's feat_extractor (Matcha-TTS mel_spectrogram: reflect padding,
no centering, magnitude STFT, Slaney-normalised mel filters as librosa builds them, natural log).
kaldi_fbank() reproduces torchaudio.compliance.kaldi.fbank with CosyVoice's arguments (80 bins,
no dither), the CAM++ model's input. Prompt *codes* (the TTS LLM's audio tokens for the prompt)
come from the Step-Audio speech tokenizer, which is a separate component; pass them in.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, lin)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), (200.0 / 3) * m)


@lru_cache(maxsize=8)
def slaney_mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular filters, area-normalised ("slaney"), as librosa.filters.mel."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]
    return weights.astype(np.float32)


def prompt_mel(wav: torch.Tensor, n_fft: int = 1024, num_mels: int = 80, sampling_rate: int = 22050,
               hop_size: int = 256, win_size: int = 1024, fmin: float = 0, fmax: float = 8000) -> torch.Tensor:
    """wav (n,) float in [-1, 1] at sampling_rate -> log-mel (1, frames, num_mels)."""
    y = wav.float().reshape(1, 1, -1)
    pad = (n_fft - hop_size) // 2
    y = torch.nn.functional.pad(y, (pad, pad), mode="reflect").reshape(1, -1)
    spec = torch.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=torch.hann_window(win_size),
                      center=False, normalized=False, onesided=True, return_complex=True)
    mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    mel = torch.from_numpy(slaney_mel_filters(sampling_rate, n_fft, num_mels, float(fmin), float(fmax))) @ mag
    return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2)


def _kaldi_mel_banks(n_bins: int, padded: int, sr: float, low: float = 20.0, high: float = 0.0) -> torch.Tensor:
    def mel(f):
        return 1127.0 * torch.log(1.0 + f / 700.0)

    high = sr / 2 + high if high <= 0 else high
    n_fft_bins = padded // 2
    lo, hi = mel(torch.tensor(low)), mel(torch.tensor(high))
    delta = (hi - lo) / (n_bins + 1)
    b = torch.arange(n_bins).unsqueeze(1)
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    m = mel((sr / padded) * torch.arange(n_fft_bins)).unsqueeze(0)
    banks = torch.clamp(torch.minimum((m - left) / (center - left), (right - m) / (right - center)), min=0)
    return torch.nn.functional.pad(banks, (0, 1))  # no weight on the Nyquist bin


def kaldi_fbank(wav: torch.Tensor, num_mel_bins: int = 80, sample_frequency: float = 16000.0) -> torch.Tensor:
    """wav (n,) float at 16 kHz -> (frames, 80) log mel filterbank energies (25 ms / 10 ms, povey)."""
    x = wav.float().reshape(-1)
    size, shift = int(sample_frequency * 0.025), int(sample_frequency * 0.010)
    if x.numel() < size:
        return torch.zeros(0, num_mel_bins)
    frames = x.unfold(0, size, shift)  # snip_edges: whole frames only
    frames = frames - frames.mean(dim=1, keepdim=True)
    prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - 0.97 * prev
    frames = frames * torch.hann_window(size, periodic=False).pow(0.85)
    padded = 1 << math.ceil(math.log2(size))
    power = torch.fft.rfft(frames, n=padded).abs().pow(2)
    energies = power @ _kaldi_mel_banks(num_mel_bins, padded, sample_frequency).T
    return torch.log(torch.clamp(energies, min=torch.finfo(torch.float32).eps))


class CampPlus:
    """CAM++ speaker embedding (campplus.onnx, CPU), 192-d."""

    def __init__(self, onnx_path: Path | str) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(onnx_path), sess_options=opts,
                                                    providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def embed(self, wav_16k: torch.Tensor) -> torch.Tensor:
        feat = kaldi_fbank(wav_16k)
        feat = feat - feat.mean(dim=0, keepdim=True)
        out = self.session.run(None, {self.input_name: feat.unsqueeze(0).numpy()})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(1, -1))
