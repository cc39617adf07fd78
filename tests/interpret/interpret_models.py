"""Tiny smooth score modules and images for the interpretation tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SmoothNet(nn.Module):
    """Conv -> tanh -> pool -> linear: smooth and non-linear, 4 identities."""

    def __init__(self, n_ids: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, n_ids)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv(x - 0.5) * 2.0)
        return self.fc(F.adaptive_avg_pool2d(h, 4).flatten(1))


class LinearNet(nn.Module):
    """Scores linear in the pixels: gradients are the weights, IG is exact at any step count."""

    def __init__(self, n_ids: int = 3, size: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(n_ids, 3 * size * size, generator=g))
        self.b = nn.Parameter(torch.randn(n_ids, generator=g))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.w.T + self.b


def images(n: int = 4, size: int = 16, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).round() / 255
