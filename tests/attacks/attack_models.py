"""Tiny random models and image helpers for the attack tests (all CPU, all fast)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _init(module: nn.Module, g: torch.Generator) -> None:
    """He-style random weights, zero biases: decisions then vary across random images."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)


class TinyNet(nn.Module):
    """A small conv net with random weights and an ``n_ids``-way linear head (logits)."""

    def __init__(self, n_ids: int = 10, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width * 4 * 4, n_ids)
        _init(self, g)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv1(x - 0.5))
        h = torch.tanh(self.conv2(h))
        h = nn.functional.adaptive_avg_pool2d(h, 4)
        return self.head(3.0 * h.flatten(1))


class BumpyNet(nn.Module):
    """Strongly non-linear tiny classifier: sines of 4x4-pooled pixels, 10 identities.

    Within a small budget the scores are far from linear, so one FGSM step overshoots and
    iterating pays off, which the strength comparisons need to be meaningful.
    """

    def __init__(self, k: float = 150.0, hidden: int = 32, size: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = 3 * (size // 4) ** 2
        self.w1 = nn.Parameter(torch.randn(d, hidden, generator=g) / d**0.5)
        self.w2 = nn.Parameter(torch.randn(hidden, 10, generator=g) / hidden**0.5)
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.avg_pool2d(x - 0.5, 4).flatten(1)
        return torch.sin(self.k * h @ self.w1) @ self.w2


class TinyEmbed(nn.Module):
    """A small embedding net images -> (N, D) with a ``metric`` attribute."""

    def __init__(self, dim: int = 16, metric: str = "cosine", seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.metric = metric
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, dim)
        _init(self, g)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv(x - 0.5))
        h = nn.functional.adaptive_avg_pool2d(h, 4)
        return self.fc(h.flatten(1))


class LocalGalleryScores(nn.Module):
    """Per-identity best similarity of an embedding against a fixed gallery (test-local)."""

    def __init__(self, embed: TinyEmbed, gallery: Tensor, labels: Tensor, n_ids: int) -> None:
        super().__init__()
        self.embed = embed
        with torch.no_grad():
            self.register_buffer("g", embed(gallery))
        self.register_buffer("labels", labels)
        self.n_ids = n_ids

    def forward(self, x: Tensor) -> Tensor:
        e = self.embed(x)
        if self.embed.metric == "cosine":
            sim = nn.functional.normalize(e, dim=1) @ nn.functional.normalize(self.g, dim=1).T
        else:
            sim = -torch.cdist(e, self.g)
        out = sim.new_full((x.shape[0], self.n_ids), -1e9)
        return out.scatter_reduce(
            1, self.labels.expand(x.shape[0], -1), sim, reduce="amax", include_self=True
        )


def grid_images(n: int, size: int = 16, seed: int = 0) -> Tensor:
    """Random 8-bit images (multiples of 1/255)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def own_labels(model: nn.Module, x: Tensor) -> Tensor:
    """The model's own decisions on ``x``: dodging labels that hold before any attack."""
    with torch.no_grad():
        return model(x).argmax(1)
