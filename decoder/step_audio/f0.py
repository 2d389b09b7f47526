"""HiFT's F0 predictor (CosyVoice ConvRNNF0Predictor): five conv+ELU layers and a linear head.

Keys in hift.pt: f0_predictor.condnet.{0,2,4,6,8}.{weight_g,weight_v,bias} (weight-normed convs,
folded at load time) and f0_predictor.classifier.{weight,bias}.
"""
from __future__ import annotations

import torch
from torch import nn


class F0Predictor(nn.Module):
    def __init__(self, in_channels: int = 80, cond_channels: int = 512, num_class: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T) -> F0 in Hz (B, T), non-negative."""
        h = self.condnet(mel).transpose(1, 2)
        return torch.abs(self.classifier(h).squeeze(-1))
