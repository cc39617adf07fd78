"""Jitter test-time augmentation: the mean embedding over a fixed set of shifted, scaled and
mirrored views of the input.

Why: dlib's own ``num_jitters`` averages a descriptor over random crops and flips of the chip,
and makes verification "slightly more accurate" (dlib's documentation). Random views would make
the model stochastic, which breaks caching and hands attacks a moving target; this wrapper uses
a *fixed*, deterministic set of small affine views instead, so it is a plain differentiable
function (attacks go through every view at once) at ``len(views)`` times the wrapped model's
cost. The views are a registered buffer, so the embedding cache keys each view set apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advface.models.flip_average import adopt_interface

View = tuple[bool, float, float, float]
"""``(mirror, shift_x, shift_y, zoom)``: shifts in fractions of the image side, zoom > 1
magnifies (a tighter crop)."""

DEFAULT_VIEWS: tuple[View, ...] = tuple(
    (mirror, dx, dy, 1.0)
    for mirror in (False, True)
    for dx, dy in ((0.0, 0.0), (0.02, 0.0), (-0.02, 0.0), (0.0, 0.02), (0.0, -0.02))
)
"""Ten views: the chip and its mirror, each unshifted and shifted by 2% (3 px of a 150 px chip)
left, right, up and down -- the size of dlib's own jitter translations."""


def _thetas(views: Sequence[View]) -> torch.Tensor:
    rows = []
    for mirror, dx, dy, zoom in views:
        if zoom <= 0:
            raise ValueError(f"zoom must be > 0, got {zoom}")
        sx = (-1.0 if mirror else 1.0) / zoom
        # affine_grid works in [-1, 1] coordinates: a shift of f of the side is 2f there
        rows.append([[sx, 0.0, 2.0 * dx], [0.0, 1.0 / zoom, 2.0 * dy]])
    return torch.tensor(rows, dtype=torch.float32)


class JitterAverage(nn.Module):
    """``mean_v f(view_v(x))`` over fixed affine views, for any embedding model ``f``.

    Keeps ``f``'s interface (``input_size``, ``embedding_dim``, ``metric``, ``threshold``) so
    it goes wherever ``f`` goes. Views sample the input bilinearly with border replication (no
    black edges); the identity view is exact.
    """

    def __init__(self, model: nn.Module, views: Sequence[View] = DEFAULT_VIEWS) -> None:
        super().__init__()
        if not views:
            raise ValueError("JitterAverage needs at least one view")
        self.model = model
        self.register_buffer("thetas", _thetas(views))
        self.views = tuple(views)
        adopt_interface(self, model)

    def _view(self, x: torch.Tensor, k: int) -> torch.Tensor:
        mirror, dx, dy, zoom = self.views[k]
        if (dx, dy, zoom) == (0.0, 0.0, 1.0):
            return x.flip(-1) if mirror else x
        theta = self.thetas[k].to(x.dtype).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], len(self.views)
        views = torch.cat([self._view(x, i) for i in range(k)])
        out = self.model(views)
        return out.reshape(k, n, *out.shape[1:]).mean(0)


def load_dlib_jitter(**kwargs: Any) -> JitterAverage:
    """dlib's ResNet descriptor averaged over ten fixed views (mirror x 2% shifts)."""
    from advface.models.dlib_resnet import load_dlib_resnet

    return JitterAverage(load_dlib_resnet(**kwargs))
