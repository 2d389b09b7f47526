"""Streaming token -> mel -> audio for one reply, with per-reply flow and HiFT caches.

Flow: each step re-runs the flow over the reply's tokens so far (up to `max_context_tokens` of
left context), with the prompt as conditioning and position-indexed noise (NoiseBank). Frames of
the last `lookahead_tokens` tokens are held back until more tokens arrive, since the encoder and
the length regulator look right. The first `fade_frames` newly emitted frames are cross-faded
(in the mel domain) with the previous step's provisional values for them, hiding the seam.

HiFT: a fully convolutional vocoder, so each step vocodes the new mel with `vocoder_context`
frames of left context and holds back `vocoder_holdback` frames on the right; the harmonic source
of the context is the cached source of the previous step and the sine phase continues from the
cached cycle count. Streamed audio therefore equals one-shot vocoding of the same mel (up to
float32 rounding of the phase accumulation), without any audio-domain fade.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from decoder.step_audio.flow import MaskedDiffWithXvec
from decoder.step_audio.hift import HiFTGenerator
from decoder.step_audio.noise import NoiseBank


@dataclass
class Prompt:
    """Voice-cloning conditioning for the flow (all may be empty: no prompt)."""

    token: torch.Tensor  # (1, P) flow tokens, i.e. LLM audio codes - 65536
    mel: torch.Tensor  # (1, F, 80) log-mel of the prompt audio at 22.05 kHz
    embedding: torch.Tensor  # (1, 192) CAM++ speaker embedding

    @staticmethod
    def empty(spk_dim: int = 192, mel_bins: int = 80) -> "Prompt":
        return Prompt(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, mel_bins), torch.zeros(1, spk_dim))


@dataclass
class StreamConfig:
    first_chunk_tokens: int = 10  # 0.4 s of audio tokens before the first flow step
    chunk_tokens: int = 25  # later steps; doubled each step up to max_chunk_tokens
    max_chunk_tokens: int = 100
    lookahead_tokens: int = 3
    max_context_tokens: int | None = 300  # None: always the whole reply so far
    fade_frames: int = 8
    vocoder_context: int = 24  # mel frames
    vocoder_holdback: int = 12  # mel frames
    steps: int = 10  # Euler steps (the reference hard-codes 10)
    speed: float = 1.0  # >1 faster: mel is resampled in time, pitch is kept (HiFT predicts F0 from mel)


def _fade_in(n: int) -> torch.Tensor:
    return 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(n, dtype=torch.float32) + 1) / (n + 1))


class FlowStream:
    def __init__(self, flow: MaskedDiffWithXvec, prompt: Prompt, noise: NoiseBank, cfg: StreamConfig) -> None:
        self.flow, self.prompt, self.noise, self.cfg = flow, prompt, noise, cfg
        self.tokens: list[int] = []
        self.done_tokens = 0  # tokens covered by the last step
        self.emitted = 0  # reply mel frames emitted
        self.provisional: torch.Tensor | None = None
        self.chunk = cfg.first_chunk_tokens
        self.frames_per_token = flow.hp.sampling_rate / flow.hp.hop_size / flow.hp.input_frame_rate

    def push(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)

    def ready(self) -> bool:
        return len(self.tokens) - self.done_tokens >= self.chunk

    def step(self, final: bool = False) -> torch.Tensor:
        """New mel frames (1, 80, k) for the tokens pushed so far; k may be 0."""
        cfg, n = self.cfg, len(self.tokens)
        end = self.flow.mel_frames(n)
        upto = end if final else max(self.emitted, self.flow.mel_frames(max(0, n - cfg.lookahead_tokens)))
        if n == 0 or upto <= self.emitted:
            self.done_tokens = n
            return torch.zeros(1, self.flow.hp.output_size, 0)
        start_tok = 0
        if cfg.max_context_tokens is not None:  # sliding window, but never past unemitted frames
            start_tok = max(0, min(n - cfg.max_context_tokens, int(self.emitted / self.frames_per_token) - 1))
        wstart = end - self.flow.mel_frames(n - start_tok)  # window aligned on the reply's end
        p = self.prompt
        noise = self.noise.flow(p.mel.shape[1], wstart, end)
        token = torch.tensor([self.tokens[start_tok:n]], dtype=torch.long)
        mel = self.flow.inference(token, p.token, p.mel, p.embedding, noise=noise, steps=cfg.steps).float()
        new = mel[:, :, self.emitted - wstart:upto - wstart].clone()
        if self.provisional is not None and cfg.fade_frames > 0:
            k = min(cfg.fade_frames, self.provisional.shape[2], new.shape[2])
            w = _fade_in(k)
            new[:, :, :k] = w * new[:, :, :k] + (1 - w) * self.provisional[:, :, :k]
        self.provisional = mel[:, :, upto - wstart:]
        self.emitted, self.done_tokens = upto, n
        self.chunk = min(cfg.max_chunk_tokens, max(self.chunk * 2, cfg.chunk_tokens))
        self.noise.forget_before("flow", wstart)
        return new


class VocoderStream:
    def __init__(self, hift: HiFTGenerator, noise: NoiseBank, cfg: StreamConfig) -> None:
        self.hift, self.noise, self.cfg = hift, noise, cfg
        self.spf = hift.upsample
        self.device = hift.conv_pre.weight.device
        self.mel = torch.zeros(1, hift.hp.in_channels, 0, device=self.device)  # frames from mel_start on
        self.mel_start = 0
        self.emitted = 0  # frames vocoded and returned
        self.src_cache = torch.zeros(1, 1, 0, device=self.device)  # exact source for [emitted - context, emitted)
        self.cycles = torch.zeros(1, hift.hp.nb_harmonics + 1, 1, device=self.device)  # phases (cycles) at `emitted`

    def push(self, mel: torch.Tensor) -> None:
        self.mel = torch.cat([self.mel, mel.to(self.device, torch.float32)], dim=2)

    @torch.inference_mode()
    def step(self, final: bool = False) -> torch.Tensor:
        """Audio (n,) float32 for the frames that are now final."""
        total = self.mel_start + self.mel.shape[2]
        upto = total if final else total - self.cfg.vocoder_holdback
        if upto <= self.emitted:
            return torch.zeros(0)
        s = max(self.mel_start, self.emitted - self.cfg.vocoder_context)
        mel = self.mel[:, :, s - self.mel_start:]
        # Source: cached (exact) for the context frames, freshly generated from `emitted` on.
        f0 = self.hift.f0_predictor(mel)[:, None, self.emitted - s:]
        f0 = f0.repeat_interleave(self.spf, dim=-1)
        hn = self.noise.hift(self.emitted * self.spf, total * self.spf).to(self.device)
        fresh, _ = self.hift.m_source(f0, self.noise.phase.to(self.device), hn, self.cycles)
        ctx = self.src_cache[:, :, self.src_cache.shape[2] - (self.emitted - s) * self.spf:]
        src = torch.cat([ctx, fresh], dim=2)
        wav = self.hift.decode(mel, src)[0, (self.emitted - s) * self.spf:(upto - s) * self.spf]
        # Advance the caches to `upto`.
        harmonics = torch.arange(1, self.cycles.shape[1] + 1, dtype=f0.dtype, device=self.device).view(1, -1, 1)
        adv = (f0[:, :, :(upto - self.emitted) * self.spf] * harmonics / self.hift.hp.sampling_rate).sum(-1, keepdim=True)
        self.cycles = (self.cycles + adv) % 1
        keep = self.cfg.vocoder_context * self.spf
        self.src_cache = src[:, :, : (upto - s) * self.spf][:, :, -keep:]
        self.emitted = upto
        drop = max(0, self.emitted - self.cfg.vocoder_context - self.mel_start)
        self.mel, self.mel_start = self.mel[:, :, drop:], self.mel_start + drop
        self.noise.forget_before("hift", self.emitted * self.spf)
        return wav.float().cpu()


class ReplySynth:
    """Audio tokens in (any chunking), waveform chunks out; one per reply, not thread-safe."""

    def __init__(self, flow: MaskedDiffWithXvec, hift: HiFTGenerator, prompt: Prompt,
                 cfg: StreamConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg or StreamConfig()
        self.noise = NoiseBank(seed, samples_per_frame=hift.upsample, harmonics=hift.hp.nb_harmonics + 1)
        self.flow = FlowStream(flow, prompt, self.noise, self.cfg)
        self.vocoder = VocoderStream(hift, self.noise, self.cfg)

    def push(self, tokens: list[int]) -> None:
        self.flow.push(tokens)

    def ready(self) -> bool:
        return self.flow.ready()

    def step(self, final: bool = False) -> torch.Tensor:
        mel = self.flow.step(final)
        if self.cfg.speed != 1.0 and mel.shape[2] > 0:
            size = max(1, int(math.floor(mel.shape[2] / self.cfg.speed + 0.5)))
            mel = F.interpolate(mel, size=size, mode="linear")
        self.vocoder.push(mel)
        return self.vocoder.step(final)


def synthesize_offline(flow: MaskedDiffWithXvec, hift: HiFTGenerator, tokens: list[int], prompt: Prompt,
                       seed: int = 0, steps: int = 10) -> torch.Tensor:
    """One-shot reply with the same position-indexed noise as ReplySynth (for comparison)."""
    noise = NoiseBank(seed, samples_per_frame=hift.upsample, harmonics=hift.hp.nb_harmonics + 1)
    n = len(tokens)
    m = flow.mel_frames(n)
    mel = flow.inference(torch.tensor([tokens]), prompt.token, prompt.mel, prompt.embedding,
                         noise=noise.flow(prompt.mel.shape[1], 0, m), steps=steps).float()
    device = hift.conv_pre.weight.device
    wav, _ = hift.inference(mel.to(device), noise.phase.to(device), noise.hift(0, m * hift.upsample).to(device))
    return wav[0].cpu()
