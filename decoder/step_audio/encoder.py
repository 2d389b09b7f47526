"""The flow model's token encoder: a Conformer with ESPnet relative positions (no conv module).

Module names mirror CosyVoice's ConformerEncoder so that flow.pt's `encoder.*` keys load as-is:
embed.out.{0,1}, encoders.N.{self_attn,feed_forward,feed_forward_macaron,norm_mha,norm_ff,...},
after_norm. Inference only, batch 1, full (non-chunked) attention as in the reference.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from decoder.step_audio.hparams import EncoderHP

_ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def rel_positions(length: int, d_model: int, device, dtype) -> torch.Tensor:
    """(1, 2*length-1, d_model): encodings of relative offsets length-1 ... -(length-1)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    inv = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    pos_pe = torch.zeros(length, d_model)
    neg_pe = torch.zeros(length, d_model)
    pos_pe[:, 0::2], pos_pe[:, 1::2] = torch.sin(pos * inv), torch.cos(pos * inv)
    neg_pe[:, 0::2], neg_pe[:, 1::2] = torch.sin(-pos * inv), torch.cos(-pos * inv)
    pe = torch.cat([torch.flip(pos_pe, [0]), neg_pe[1:]], dim=0).unsqueeze(0)
    return pe.to(device=device, dtype=dtype)


class _Embed(nn.Module):
    def __init__(self, idim: int, odim: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))


class RelPositionAttention(nn.Module):
    def __init__(self, heads: int, dim: int, key_bias: bool) -> None:
        super().__init__()
        self.h, self.d_k = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim, bias=key_bias)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))

    @staticmethod
    def _shift(x: torch.Tensor) -> torch.Tensor:
        """Turn scores against 2T-1 relative offsets into scores against T key positions."""
        b, h, t1, n = x.shape
        padded = torch.cat([x.new_zeros(b, h, t1, 1), x], dim=-1).view(b, h, n + 1, t1)
        return padded[:, :, 1:].reshape(b, h, t1, n)[:, :, :, : n // 2 + 1]

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos).view(pos.size(0), -1, self.h, self.d_k).transpose(1, 2)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = self._shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
        attn = torch.softmax((ac + bd) / math.sqrt(self.d_k), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: nn.Module) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.activation = activation
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class ConformerLayer(nn.Module):
    def __init__(self, hp: EncoderHP) -> None:
        super().__init__()
        d = hp.output_size
        act = _ACTIVATIONS[hp.activation_type]()
        self.self_attn = RelPositionAttention(hp.attention_heads, d, hp.key_bias)
        self.feed_forward = FeedForward(d, hp.linear_units, act)
        self.feed_forward_macaron = FeedForward(d, hp.linear_units, act) if hp.macaron_style else None
        self.norm_ff = nn.LayerNorm(d, eps=1e-5)
        self.norm_mha = nn.LayerNorm(d, eps=1e-5)
        if hp.macaron_style:
            self.norm_ff_macaron = nn.LayerNorm(d, eps=1e-5)
        self.ff_scale = 0.5 if hp.macaron_style else 1.0
        self.pre_norm = hp.normalize_before

    def _sub(self, x, norm, fn, scale=1.0):
        y = fn(norm(x) if self.pre_norm else x)
        x = x + scale * y
        return x if self.pre_norm else norm(x)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.feed_forward_macaron is not None:
            x = self._sub(x, self.norm_ff_macaron, self.feed_forward_macaron, self.ff_scale)
        x = self._sub(x, self.norm_mha, lambda y: self.self_attn(y, pos))
        return self._sub(x, self.norm_ff, self.feed_forward, self.ff_scale)


class ConformerEncoder(nn.Module):
    def __init__(self, hp: EncoderHP) -> None:
        super().__init__()
        self.hp = hp
        self.embed = _Embed(hp.input_size, hp.output_size)
        self.encoders = nn.ModuleList([ConformerLayer(hp) for _ in range(hp.num_blocks)])
        self.after_norm = nn.LayerNorm(hp.output_size, eps=1e-5)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """xs (1, T, input_size) -> (1, T, output_size)."""
        x = self.embed.out(xs) * math.sqrt(self.hp.output_size)
        pos = rel_positions(x.size(1), self.hp.output_size, x.device, x.dtype)
        for layer in self.encoders:
            x = layer(x, pos)
        return self.after_norm(x) if self.hp.normalize_before else x
