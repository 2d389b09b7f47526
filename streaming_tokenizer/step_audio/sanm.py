"""Paraformer-online's encoder (FunASR SANMEncoderChunkOpt), streaming forward only.

Module and parameter names follow FunASR's, so the published model.pt's `encoder.*` keys load
as they are: encoders0.0 (input 560 → 512) and encoders.0..N-2, each with
self_attn.{linear_q_k_v, fsmn_block, linear_out}, feed_forward.{w_1, w_2}, norm1, norm2; then
after_norm. Written from the paper and FunASR's documented behaviour, not copied.

Streaming (per chunk of LFR frames, chunk_size [0, 4, 5], look-back 4 chunks):
  x = x * sqrt(d_model) + sinusoid(position), positions counted over the whole stream;
  the last 5 input frames of the previous chunk are prepended (zeros before the first);
  every layer attends to its cached keys/values (the last look_back * 4 frames) plus the
  chunk, and its FSMN memory (depthwise conv, kernel 11) sees only the chunk;
  the output for the chunk is the last len(chunk) frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def sinusoid(start: int, length: int, depth: int) -> torch.Tensor:
    """FunASR's position encoding: positions from 1, sin half then cos half, (length, depth)."""
    positions = torch.arange(start + 1, start + length + 1, dtype=torch.float32)
    increment = torch.log(torch.tensor(10000.0)) / (depth / 2 - 1)
    inv = torch.exp(torch.arange(depth // 2, dtype=torch.float32) * -increment)
    scaled = positions[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class SanmAttention(nn.Module):
    def __init__(self, n_head: int, in_feat: int, n_feat: int, kernel_size: int, sanm_shift: int = 0) -> None:
        super().__init__()
        self.h, self.d_k = n_head, n_feat // n_head
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_q_k_v = nn.Linear(in_feat, n_feat * 3)
        self.fsmn_block = nn.Conv1d(n_feat, n_feat, kernel_size, groups=n_feat, bias=False)
        left = (kernel_size - 1) // 2 + sanm_shift
        self.pad = (left, kernel_size - 1 - left)

    def forward_chunk(self, x: torch.Tensor, cache: dict | None, chunk_size: tuple[int, int, int],
                      look_back: int) -> tuple[torch.Tensor, dict | None]:
        b, t, _ = x.shape
        q, k, v = torch.split(self.linear_q_k_v(x), self.h * self.d_k, dim=-1)
        heads = lambda y: y.reshape(b, t, self.h, self.d_k).transpose(1, 2)  # noqa: E731
        q_h, k_h, v_h = heads(q), heads(k), heads(v)
        if look_back > 0 or look_back == -1:
            # Keys/values of all but the last chunk_size[2] frames (they come again next chunk).
            k_keep, v_keep = k_h[:, :, : -chunk_size[2]], v_h[:, :, : -chunk_size[2]]
            if cache is not None:
                k_h = torch.cat([cache["k"], k_h], dim=2)
                v_h = torch.cat([cache["v"], v_h], dim=2)
                k_keep = torch.cat([cache["k"], k_keep], dim=2)
                v_keep = torch.cat([cache["v"], v_keep], dim=2)
                if look_back != -1:
                    k_keep = k_keep[:, :, -(look_back * chunk_size[1]):]
                    v_keep = v_keep[:, :, -(look_back * chunk_size[1]):]
            cache = {"k": k_keep, "v": v_keep}
        memory = nn.functional.conv1d(nn.functional.pad(v.transpose(1, 2), self.pad), self.fsmn_block.weight,
                                      groups=self.fsmn_block.groups).transpose(1, 2) + v
        scores = torch.matmul(q_h * self.d_k ** -0.5, k_h.transpose(-2, -1))
        att = torch.matmul(torch.softmax(scores, dim=-1), v_h).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(att) + memory, cache


class FeedForward(nn.Module):
    def __init__(self, d: int, units: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d, units)
        self.w_2 = nn.Linear(units, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class SanmLayer(nn.Module):
    def __init__(self, in_size: int, size: int, heads: int, units: int, kernel_size: int, sanm_shift: int) -> None:
        super().__init__()
        self.in_size, self.size = in_size, size
        self.self_attn = SanmAttention(heads, in_size, size, kernel_size, sanm_shift)
        self.feed_forward = FeedForward(size, units)
        self.norm1 = nn.LayerNorm(in_size, eps=1e-12)
        self.norm2 = nn.LayerNorm(size, eps=1e-12)

    def forward_chunk(self, x, cache, chunk_size, look_back):
        att, cache = self.self_attn.forward_chunk(self.norm1(x), cache, chunk_size, look_back)
        x = x + att if self.in_size == self.size else att  # the first layer changes width: no residual
        return x + self.feed_forward(self.norm2(x)), cache


@dataclass
class EncoderCache:
    """One session's encoder state; copy() is cheap (tensors are replaced, never changed in place)."""

    overlap: torch.Tensor  # the last chunk_size[0] + chunk_size[2] embedded input frames
    start_idx: int = 0  # frames seen: the next chunk's first position
    layers: list[dict | None] = field(default_factory=list)

    def copy(self) -> "EncoderCache":
        return EncoderCache(self.overlap, self.start_idx, list(self.layers))


class SanmChunkEncoder(nn.Module):
    def __init__(self, input_size: int, output_size: int = 512, attention_heads: int = 4, linear_units: int = 2048,
                 num_blocks: int = 50, kernel_size: int = 11, sanm_shfit: int = 0,
                 chunk_size: tuple[int, int, int] = (0, 4, 5), look_back: int = 4) -> None:
        super().__init__()
        self.input_size, self.d_model = input_size, output_size
        self.chunk_size, self.look_back = tuple(chunk_size), look_back
        self.encoders0 = nn.ModuleList([SanmLayer(input_size, output_size, attention_heads, linear_units,
                                                  kernel_size, sanm_shfit)])
        self.encoders = nn.ModuleList([SanmLayer(output_size, output_size, attention_heads, linear_units,
                                                 kernel_size, sanm_shfit) for _ in range(num_blocks - 1)])
        self.after_norm = nn.LayerNorm(output_size, eps=1e-12)

    def new_cache(self, device: torch.device | str = "cpu") -> EncoderCache:
        n = self.chunk_size[0] + self.chunk_size[2]
        return EncoderCache(torch.zeros(1, n, self.input_size, device=device),
                            layers=[None] * (len(self.encoders0) + len(self.encoders)))

    @torch.inference_mode()
    def forward_chunk(self, feats: torch.Tensor, cache: EncoderCache) -> torch.Tensor:
        """feats (1, n, input_size) → encoder output (1, n, output_size); advances `cache`."""
        n = feats.shape[1]
        x = feats * self.d_model ** 0.5 + sinusoid(cache.start_idx, n, self.input_size).to(feats)
        cache.start_idx += n
        x = torch.cat([cache.overlap, x], dim=1)
        cache.overlap = x[:, -(self.chunk_size[0] + self.chunk_size[2]):]
        for i, layer in enumerate([*self.encoders0, *self.encoders]):
            x, cache.layers[i] = layer.forward_chunk(x, cache.layers[i], self.chunk_size, self.look_back)
        return self.after_norm(x)[:, -n:]
