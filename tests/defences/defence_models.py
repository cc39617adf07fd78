"""A tiny, seeded image classification problem and models for the defence tests (CPU, fast)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def make_problem(n_per_class: int = 40, n_classes: int = 3, size: int = 16, seed: int = 0,
                 noise: float = 0.08, spread: float = 0.25) -> tuple[Tensor, Tensor]:
    """Images on the 8-bit grid: a per-class smooth colour pattern plus per-image noise."""
    g = torch.Generator().manual_seed(seed)
    protos = F.interpolate(torch.rand(n_classes, 3, 4, 4, generator=g), size=size,
                           mode="bilinear", align_corners=False)
    protos = 0.5 + spread * (protos - 0.5)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = protos[labels] + noise * torch.randn(labels.numel(), 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round() / 255, labels


class SmallNet(nn.Module):
    """Conv -> ReLU -> pool -> linear; logits (N, n_classes)."""

    def __init__(self, n_classes: int = 3, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.fc = nn.Linear(width * 4 * 4, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x - 0.5))
        h = F.relu(self.conv2(h))
        return self.fc(F.adaptive_avg_pool2d(h, 4).flatten(1))


def train_small(x: Tensor, y: Tensor, *, steps: int = 150, seed: int = 0,
                n_classes: int = 3) -> SmallNet:
    """Standard (non-robust) training with Adam; a few hundred steps reach ~100% accuracy."""
    model = SmallNet(n_classes, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (32,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_dict(tiny_lfw: Path, out: Path, **over) -> dict:
    """A TrainConfig mapping for a seconds-long run on the tiny generated LFW."""
    d = {
        "data": {"data_dir": str(tiny_lfw), "cache_dir": str(tiny_lfw / "cache"),
                 "min_images": 5, "val_fraction": 0.25},
        "model": {"widths": [8, 16], "blocks": [1, 1], "internal_size": 16,
                  "embedding_dim": 16},
        "loss": {"kind": "softmax"},
        "augment": {"enabled": False},
        "epochs": 6, "batch_size": 8, "lr": 0.05, "sampling": "natural",
        "threads": 1, "time_budget_minutes": None, "out_dir": str(out),
    }
    d.update(over)
    return d
