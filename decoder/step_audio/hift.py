"""HiFT vocoder (CosyVoice HiFTGenerator): neural source filter + upsampling convs + iSTFT.

mel (1, 80, T) -> F0 (predicted) -> harmonic source at 22.05 kHz -> its STFT is injected at every
upsampling stage -> magnitude/phase -> iSTFT -> waveform of T * 256 samples (hop 8*8*4).
Submodule names follow hift.pt: m_source.l_linear, conv_pre, ups.N, source_downs.N,
source_resblocks.N, resblocks.N.{convs1,convs2}.M, activations{1,2}.M.alpha, conv_post, f0_predictor.
The random parts (sine phases, additive noise) are explicit inputs or come from a generator, in
the same draw order as the reference so seeded runs agree.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from decoder.step_audio.f0 import F0Predictor
from decoder.step_audio.hparams import HiFTHP


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, per channel (linear-scale alpha)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha.unsqueeze(0).unsqueeze(-1)
        return x + (1.0 / (a + 1e-9)) * torch.sin(x * a).pow(2)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            [nn.Conv1d(channels, channels, kernel, 1, dilation=d, padding=_padding(kernel, d)) for d in dilations])
        self.convs2 = nn.ModuleList(
            [nn.Conv1d(channels, channels, kernel, 1, padding=_padding(kernel)) for _ in dilations])
        self.activations1 = nn.ModuleList([Snake(channels) for _ in dilations])
        self.activations2 = nn.ModuleList([Snake(channels) for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = x + c2(a2(c1(a1(x))))
        return x


class SourceModule(nn.Module):
    """Harmonic-plus-noise source: sines at F0 * (1..H+1) merged by a linear layer and tanh."""

    def __init__(self, hp: HiFTHP) -> None:
        super().__init__()
        self.hp = hp
        self.l_linear = nn.Linear(hp.nb_harmonics + 1, 1)

    def random_inputs(self, n_samples: int, generator: torch.Generator | None = None):
        """Initial harmonic phases (1, H+1, 1) and unit noise (1, H+1, n), as the reference draws them."""
        h = self.hp.nb_harmonics + 1
        phase = torch.rand(1, h, 1, generator=generator) * (2 * math.pi) - math.pi
        noise = torch.randn(1, h, n_samples, generator=generator)
        return phase, noise

    def forward(self, f0: torch.Tensor, phase: torch.Tensor, noise: torch.Tensor,
                cycles_offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """f0 (1, 1, n) per-sample Hz -> source (1, 1, n), and the phase (in cycles) at the end.

        cycles_offset (1, H+1, 1) continues each harmonic's phase from a previous chunk.
        """
        hp = self.hp
        harmonics = torch.arange(1, hp.nb_harmonics + 2, device=f0.device, dtype=f0.dtype).view(1, -1, 1)
        cycles = torch.cumsum(f0 * harmonics / hp.sampling_rate, dim=-1)
        if cycles_offset is not None:
            cycles = cycles + cycles_offset
        phase = phase.clone()
        phase[:, 0, :] = 0  # the fundamental starts at phase 0
        sines = hp.nsf_alpha * torch.sin(2 * np.pi * (cycles % 1) + phase)
        uv = (f0 > hp.nsf_voiced_threshold).to(f0.dtype)
        noise_amp = uv * hp.nsf_sigma + (1 - uv) * hp.nsf_alpha / 3
        sines = sines * uv + noise_amp * noise
        merged = torch.tanh(self.l_linear(sines.transpose(1, 2))).transpose(1, 2)
        return merged, cycles[:, :, -1:] % 1


class HiFTGenerator(nn.Module):
    def __init__(self, hp: HiFTHP) -> None:
        super().__init__()
        self.hp = hp
        base = hp.base_channels
        self.upsample = int(np.prod(hp.upsample_rates) * hp.hop_len)  # samples per mel frame
        self.m_source = SourceModule(hp)
        self.conv_pre = nn.Conv1d(hp.in_channels, base, 7, 1, padding=3)
        self.ups = nn.ModuleList([
            nn.ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(hp.upsample_rates, hp.upsample_kernel_sizes))])
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        down_rates = np.cumprod([1] + list(hp.upsample_rates[::-1][:-1]))[::-1]
        for i, (u, k, d) in enumerate(zip(down_rates, hp.source_resblock_kernel_sizes,
                                          hp.source_resblock_dilation_sizes)):
            ch, u = base // 2 ** (i + 1), int(u)
            self.source_downs.append(nn.Conv1d(hp.n_fft + 2, ch, 1, 1) if u == 1
                                     else nn.Conv1d(hp.n_fft + 2, ch, u * 2, u, padding=u // 2))
            self.source_resblocks.append(ResBlock(ch, k, tuple(d)))
        self.resblocks = nn.ModuleList([
            ResBlock(base // 2 ** (i + 1), k, tuple(d))
            for i in range(len(self.ups))
            for k, d in zip(hp.resblock_kernel_sizes, hp.resblock_dilation_sizes)])
        self.conv_post = nn.Conv1d(base // 2 ** len(self.ups), hp.n_fft + 2, 7, 1, padding=3)
        self.f0_predictor = F0Predictor(hp.f0_in_channels, hp.f0_cond_channels, hp.f0_num_class)
        # scipy's periodic ("fftbins") Hann window equals torch's default periodic Hann window.
        self.register_buffer("stft_window", torch.hann_window(hp.n_fft), persistent=False)

    def source(self, mel: torch.Tensor, phase, noise, cycles_offset=None):
        f0 = self.f0_predictor(mel)  # (1, T)
        f0 = f0[:, None].repeat_interleave(self.upsample, dim=-1)  # nearest upsampling to samples
        return self.m_source(f0, phase, noise, cycles_offset)

    def decode(self, mel: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """mel (1, 80, T) and source (1, 1, T*256) -> waveform (1, T*256)."""
        hp = self.hp
        spec = torch.stft(src.squeeze(1), hp.n_fft, hp.hop_len, hp.n_fft, window=self.stft_window,
                          return_complex=True)
        s = torch.cat([spec.real, spec.imag], dim=1)
        x = self.conv_pre(mel)
        n_res = len(hp.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, hp.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s))
            x = sum(self.resblocks[i * n_res + j](x) for j in range(n_res)) / n_res
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01, as in the reference
        half = hp.n_fft // 2 + 1
        magnitude = torch.clip(torch.exp(x[:, :half]), max=1e2)
        phase = torch.sin(x[:, half:])
        wav = torch.istft(torch.polar(magnitude, phase), hp.n_fft, hp.hop_len, hp.n_fft, window=self.stft_window)
        return torch.clamp(wav, -hp.audio_limit, hp.audio_limit)

    @torch.inference_mode()
    def inference(self, mel: torch.Tensor, phase=None, noise=None, generator: torch.Generator | None = None):
        """One-shot vocoding. Returns (waveform (1, T*256), source (1, 1, T*256))."""
        device = self.conv_pre.weight.device
        mel = mel.to(device, torch.float32)
        if phase is None or noise is None:
            phase, noise = self.m_source.random_inputs(mel.shape[-1] * self.upsample, generator)
        src, _ = self.source(mel, phase.to(device), noise.to(device))
        return self.decode(mel, src), src
