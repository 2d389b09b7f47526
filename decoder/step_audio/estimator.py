"""The flow-matching vector-field estimator: CosyVoice's 1-D U-Net with transformer blocks.

Attribute names mirror cosyvoice.flow.decoder.ConditionalDecoder (and the Matcha-TTS / diffusers
blocks it is built from) so flow.pt's `decoder.estimator.*` keys load unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from decoder.step_audio.hparams import EstimatorHP


def timestep_features(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    arg = scale * t.reshape(-1).unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((arg.sin(), arg.cos()), dim=-1)


class TimestepMLP(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class ConvNormMish(nn.Module):  # "Block1D"
    def __init__(self, dim: int, dim_out: int, groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = ConvNormMish(dim, dim_out)
        self.block2 = ConvNormMish(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(temb).unsqueeze(-1)
        return self.block2(h, mask) + self.res_conv(x * mask)


class _Attention(nn.Module):
    """diffusers' Attention with default settings: q/k/v without bias, to_out = [Linear, Dropout]."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        return self.to_out[0](out)


class _GELUProj(nn.Module):
    def __init__(self, dim: int, inner: int, approximate: str) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class TransformerBlock(nn.Module):  # diffusers-style BasicTransformerBlock, self-attention only
    def __init__(self, dim: int, heads: int, head_dim: int, act_fn: str) -> None:
        super().__init__()
        if act_fn not in ("gelu", "gelu-approximate"):
            raise ValueError(f"estimator act_fn {act_fn!r} is not supported (gelu only)")
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = _Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        approx = "tanh" if act_fn == "gelu-approximate" else "none"
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([_GELUProj(dim, dim * 4, approx), nn.Dropout(0.0), nn.Linear(dim * 4, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        h = self.norm3(x)
        for layer in self.ff.net:
            h = layer(h)
        return x + h


class _Down(nn.Module):  # Downsample1D
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Up(nn.Module):  # Upsample1D with a transposed convolution
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    x = x.transpose(1, 2)
    for block in blocks:
        x = block(x)
    return x.transpose(1, 2)


class Estimator(nn.Module):
    def __init__(self, hp: EstimatorHP) -> None:
        super().__init__()
        ch = tuple(hp.channels)
        tdim = ch[0] * 4
        self.in_channels = hp.in_channels

        def blocks(dim: int) -> nn.ModuleList:
            return nn.ModuleList(
                [TransformerBlock(dim, hp.num_heads, hp.attention_head_dim, hp.act_fn) for _ in range(hp.n_blocks)])

        self.time_mlp = TimestepMLP(hp.in_channels, tdim)
        self.down_blocks = nn.ModuleList()
        out = hp.in_channels
        for i, c in enumerate(ch):
            inp, out = out, c
            last = i == len(ch) - 1
            down = nn.Conv1d(out, out, 3, padding=1) if last else _Down(out)
            self.down_blocks.append(nn.ModuleList([ResnetBlock(inp, out, tdim), blocks(out), down]))
        self.mid_blocks = nn.ModuleList(
            [nn.ModuleList([ResnetBlock(ch[-1], out, tdim), blocks(out)]) for _ in range(hp.num_mid_blocks)])
        up_ch = ch[::-1] + (ch[0],)
        self.up_blocks = nn.ModuleList()
        for i in range(len(up_ch) - 1):
            out = up_ch[i + 1]
            last = i == len(up_ch) - 2
            up = nn.Conv1d(out, out, 3, padding=1) if last else _Up(out)
            self.up_blocks.append(nn.ModuleList([ResnetBlock(up_ch[i] * 2, out, tdim), blocks(out), up]))
        self.final_block = ConvNormMish(up_ch[-1], up_ch[-1])
        self.final_proj = nn.Conv1d(up_ch[-1], hp.out_channels, 1)

    def forward(self, x, mask, mu, t, spks, cond) -> torch.Tensor:
        """x, mu, cond: (B, 80, T); mask (B, 1, T); t (B,); spks (B, 80) -> velocity (B, 80, T)."""
        temb = self.time_mlp(timestep_features(t, self.in_channels).to(t.dtype))
        x = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]), cond], dim=1)
        skips, masks = [], [mask]
        for resnet, tblocks, down in self.down_blocks:
            m = masks[-1]
            x = _run_blocks(tblocks, resnet(x, m, temb))
            skips.append(x)
            x = down(x * m)
            masks.append(m[:, :, ::2])
        masks.pop()
        m = masks[-1]
        for resnet, tblocks in self.mid_blocks:
            x = _run_blocks(tblocks, resnet(x, m, temb))
        for resnet, tblocks, up in self.up_blocks:
            m, skip = masks.pop(), skips.pop()
            x = torch.cat([x[:, :, : skip.shape[-1]], skip], dim=1)
            x = up(_run_blocks(tblocks, resnet(x, m, temb)) * m)
        x = self.final_block(x, m)
        return self.final_proj(x * m) * mask
