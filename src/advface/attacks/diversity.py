"""Transfer-oriented gradient tricks, usable as options of the iterative attacks.

* Input diversity (DI, Xie et al. 2019): at each step the gradient is taken on a randomly
  resized-and-padded copy of the image, so the perturbation does not overfit one exact pixel
  alignment of the surrogate. Face models take a fixed input size (e.g. 150x150), so the copy is
  shrunk to a random size in ``[scale * H, H]`` and padded back to ``H`` at a random offset.
* Translation invariance (TI, Dong et al. 2019): the gradient is smoothed by a Gaussian kernel,
  i.e. the attack optimises for an ensemble of translated images at the cost of one gradient.

Both improve black-box transfer and usually lower white-box success a little; they are off by
default in PGD/BIM/MI-FGSM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from advface.errors import AdvfaceError


class InputDiversity:
    """Random shrink + pad to the original size, applied with probability ``prob`` per batch."""

    def __init__(self, prob: float = 0.5, scale: float = 0.9) -> None:
        if not 0.0 <= prob <= 1.0 or not 0.0 < scale <= 1.0:
            raise AdvfaceError(
                f"input diversity needs 0<=prob<=1 and 0<scale<=1, got {prob}, {scale}",
                fix="e.g. prob=0.5, scale=0.9",
            )
        self.prob = prob
        self.scale = scale

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Differentiable transform of a batch ``(N, C, H, W)``; same size out as in."""
        h, w = x.shape[-2:]
        draw = torch.rand(4, generator=gen, device=gen.device).tolist()
        if draw[0] >= self.prob:
            return x
        lo = max(1, math.ceil(self.scale * min(h, w)))
        side = lo + int(draw[1] * (min(h, w) - lo + 1))
        side = min(side, min(h, w))
        if side == min(h, w) and h == w:
            return x
        small = F.interpolate(x, size=(side, side), mode="nearest")
        free_h, free_w = h - side, w - side
        top = int(draw[2] * (free_h + 1)) if free_h else 0
        left = int(draw[3] * (free_w + 1)) if free_w else 0
        top, left = min(top, free_h), min(left, free_w)
        return F.pad(small, (left, free_w - left, top, free_h - top), value=0.0)


class TranslationInvariance:
    """Depth-wise Gaussian smoothing of gradients (kernel ``size`` x ``size``)."""

    def __init__(self, size: int = 7, sigma: float | None = None) -> None:
        if size < 1 or size % 2 == 0:
            raise AdvfaceError(
                f"TI kernel size must be a positive odd integer, got {size}",
                fix="use 5, 7 or 15 (15 was used for 299x299 images)",
            )
        self.size = size
        # Three standard deviations to each side of the centre, as in the TI paper.
        self.sigma = sigma if sigma is not None else max(size / 6.0, 1e-3)
        ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        k1 = torch.exp(-(ax**2) / (2 * self.sigma**2))
        k2 = torch.outer(k1, k1)
        self.kernel = (k2 / k2.sum()).float()

    def __call__(self, grad: Tensor) -> Tensor:
        c = grad.shape[1]
        k = self.kernel.to(grad.device, grad.dtype).expand(c, 1, self.size, self.size)
        pad = self.size // 2
        return F.conv2d(grad, k, padding=pad, groups=c)
