"""Per-reply random inputs indexed by absolute position, so a streamed reply and a one-shot reply
draw identical noise for the same mel frame / audio sample however the reply is chunked."""
from __future__ import annotations

import torch

_BLOCK = 256  # frames (flow) or mel frames' worth of samples (HiFT) per generated block


class NoiseBank:
    def __init__(self, seed: int, mel_bins: int = 80, harmonics: int = 9, samples_per_frame: int = 256) -> None:
        self.seed = seed
        self.mel_bins = mel_bins
        self.harmonics = harmonics
        self.spf = samples_per_frame
        self._blocks: dict[tuple[str, int], torch.Tensor] = {}
        g = torch.Generator().manual_seed(seed)
        self.phase = torch.rand(1, harmonics, 1, generator=g) * (2 * torch.pi) - torch.pi

    def _block(self, kind: str, index: int) -> torch.Tensor:
        key = (kind, index)
        if key not in self._blocks:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 4 + {"prompt": 1, "flow": 2, "hift": 3}[kind])
            rows = self.mel_bins if kind != "hift" else self.harmonics
            cols = _BLOCK if kind != "hift" else _BLOCK * self.spf
            self._blocks[key] = torch.randn(1, rows, cols, generator=g)
        return self._blocks[key]

    def _range(self, kind: str, start: int, stop: int, per_block: int) -> torch.Tensor:
        parts = []
        pos = start
        while pos < stop:
            b, off = divmod(pos, per_block)
            take = min(stop - pos, per_block - off)
            parts.append(self._block(kind, b)[:, :, off:off + take])
            pos += take
        rows = self.harmonics if kind == "hift" else self.mel_bins
        return torch.cat(parts, dim=2) if parts else torch.zeros(1, rows, 0)

    def flow(self, prompt_frames: int, start: int, stop: int) -> torch.Tensor:
        """ODE start noise for the prompt frames followed by reply frames [start, stop)."""
        return torch.cat([self._range("prompt", 0, prompt_frames, _BLOCK), self._range("flow", start, stop, _BLOCK)], 2)

    def hift(self, start: int, stop: int) -> torch.Tensor:
        """Sine-source noise for reply samples [start, stop): (1, harmonics, stop - start)."""
        return self._range("hift", start, stop, _BLOCK * self.spf)

    def forget_before(self, kind: str, position: int) -> None:
        """Drop blocks wholly before position (frames for flow, samples for hift) to bound memory."""
        per = _BLOCK * self.spf if kind == "hift" else _BLOCK
        for key in [k for k in self._blocks if k[0] == kind and (k[1] + 1) * per <= position]:
            del self._blocks[key]
