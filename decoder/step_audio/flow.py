"""CosyVoice's MaskedDiffWithXvec for inference: audio tokens -> 80-bin mel (22.05 kHz, hop 256).

token embedding -> Conformer encoder -> projection -> interpolating length regulator (prompt and
target regions stretched separately) -> conditional flow matching (Euler, cosine schedule,
classifier-free guidance) conditioned on the projected speaker x-vector and the prompt mel.
Submodule names are those of flow.pt: input_embedding, spk_embed_affine_layer, encoder,
encoder_proj, length_regulator.model.N, decoder.estimator.*.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from decoder.step_audio.encoder import ConformerEncoder
from decoder.step_audio.estimator import Estimator
from decoder.step_audio.hparams import FlowHP


class LengthRegulator(nn.Module):
    def __init__(self, channels: int, sampling_ratios: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in sampling_ratios:
            layers += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(1, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, prompt_h: torch.Tensor, h: torch.Tensor, prompt_frames: int, frames: int) -> torch.Tensor:
        """(1, T, C) encodings of prompt and target tokens -> (1, prompt_frames + frames, C)."""
        x = F.interpolate(h.transpose(1, 2).contiguous(), size=frames, mode="linear")
        if prompt_h.shape[1] != 0:
            xp = F.interpolate(prompt_h.transpose(1, 2).contiguous(), size=prompt_frames, mode="linear")
            x = torch.cat([xp, x], dim=2)
        return self.model(x).transpose(1, 2).contiguous()


class ConditionalCFM(nn.Module):
    """Holds the estimator (key prefix `decoder.estimator`) and the Euler ODE solver."""

    def __init__(self, hp: FlowHP) -> None:
        super().__init__()
        self.estimator = Estimator(hp.estimator)
        self.t_scheduler = hp.t_scheduler
        self.cfg_rate = hp.inference_cfg_rate

    def time_grid(self, steps: int, device, dtype) -> torch.Tensor:
        t = torch.linspace(0, 1, steps + 1, device=device, dtype=dtype)
        return 1 - torch.cos(t * 0.5 * torch.pi) if self.t_scheduler == "cosine" else t

    def forward(self, z, mu, mask, spks, cond, steps: int) -> torch.Tensor:
        """Integrate dx/dt = v(x, t | mu, spks, cond) from noise z at t=0 to a mel at t=1."""
        t_span = self.time_grid(steps, mu.device, mu.dtype)
        x, t, dt = z, t_span[0:1], t_span[1] - t_span[0]
        if self.cfg_rate > 0:  # conditional and unconditional passes as one batch of 2
            mask2 = torch.cat([mask, mask])
            mu2 = torch.cat([mu, torch.zeros_like(mu)])
            spks2 = torch.cat([spks, torch.zeros_like(spks)])
            cond2 = torch.cat([cond, torch.zeros_like(cond)])
        for step in range(1, len(t_span)):
            if self.cfg_rate > 0:
                v2 = self.estimator(torch.cat([x, x]), mask2, mu2, torch.cat([t, t]), spks2, cond2)
                v, v_uncond = v2.chunk(2, dim=0)
                v = (1.0 + self.cfg_rate) * v - self.cfg_rate * v_uncond
            else:
                v = self.estimator(x, mask, mu, t, spks, cond)
            x = x + dt * v
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        return x


class MaskedDiffWithXvec(nn.Module):
    def __init__(self, hp: FlowHP) -> None:
        super().__init__()
        self.hp = hp
        self.input_embedding = nn.Embedding(hp.vocab_size, hp.input_size)
        self.spk_embed_affine_layer = nn.Linear(hp.spk_embed_dim, hp.output_size)
        self.encoder = ConformerEncoder(hp.encoder)
        self.encoder_proj = nn.Linear(hp.encoder.output_size, hp.output_size)
        self.length_regulator = LengthRegulator(hp.regulator_channels, hp.sampling_ratios)
        self.decoder = ConditionalCFM(hp)

    def mel_frames(self, n_tokens: int) -> int:
        """Mel frames for n tokens, rounded down exactly as the reference does."""
        return int(n_tokens / self.hp.input_frame_rate * self.hp.sampling_rate / self.hp.hop_size)

    @torch.inference_mode()
    def inference(self, token, prompt_token, prompt_feat, embedding, noise=None, steps: int = 10,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """token (1, N), prompt_token (1, P), prompt_feat (1, F, 80), embedding (1, 192) -> mel (1, 80, M).

        noise: (1, 80, F + M) initial ODE state; drawn from `generator` when not given. Passing it
        explicitly is what lets a streamed reply reuse the one-shot reply's noise frame by frame.
        """
        dtype, device = self.input_embedding.weight.dtype, self.input_embedding.weight.device
        token, prompt_token = token.to(device), prompt_token.to(device)
        prompt_feat, embedding = prompt_feat.to(device), embedding.to(device)
        spks = self.spk_embed_affine_layer(F.normalize(embedding.to(dtype), dim=1))
        n_prompt = prompt_token.shape[1]
        tokens = torch.cat([prompt_token, token], dim=1).long()
        h = self.encoder_proj(self.encoder(self.input_embedding(torch.clamp(tokens, min=0))))
        f_prompt, f_new = prompt_feat.shape[1], self.mel_frames(token.shape[1])
        mu = self.length_regulator(h[:, :n_prompt], h[:, n_prompt:], f_prompt, f_new).transpose(1, 2)
        total = f_prompt + f_new
        cond = torch.zeros(1, total, self.hp.output_size, device=mu.device, dtype=dtype)
        cond[:, :f_prompt] = prompt_feat.to(dtype)
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, dtype=torch.float32).to(mu.device, dtype)
        if noise.shape != mu.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != {tuple(mu.shape)}")
        mask = torch.ones(1, 1, total, device=mu.device, dtype=dtype)
        mel = self.decoder(noise.to(mu.device, dtype), mu, mask, spks, cond.transpose(1, 2), steps)
        return mel[:, :, f_prompt:]
