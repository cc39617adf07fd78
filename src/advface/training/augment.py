"""Batched data augmentation in plain torch (torchvision is not allowed in this project).

Why it matters here: the people with >= 20 LFW images have a median of ~30 training images, far
too few for a CNN trained from scratch; without augmentation it memorises the gallery in a few
epochs. Every transform is mild because the images are aligned faces: a large crop or rotation
would teach the network to ignore the alignment it can rely on at test time.

All random draws come from one ``torch.Generator`` in a fixed order, so a batch is augmented
identically for identical input and generator state (needed for exact resume).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator


class AugmentConfig(BaseModel):
    """Which augmentations to apply and how strongly (``enabled: false`` turns all off)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    flip: bool = Field(True, description="horizontal flip with probability 1/2")
    scale: tuple[float, float] = Field(
        (0.85, 1.0), description="side of the random crop as a fraction of the image side"
    )
    translate: float = Field(
        0.05, ge=0.0, le=0.3, description="extra shift of the crop, fraction of the side"
    )
    rotate_degrees: float = Field(5.0, ge=0.0, le=45.0)
    brightness: float = Field(0.2, ge=0.0, lt=1.0, description="factor in [1-b, 1+b]")
    contrast: float = Field(0.2, ge=0.0, lt=1.0, description="factor in [1-c, 1+c]")
    saturation: float = Field(0.2, ge=0.0, le=1.0, description="factor in [1-s, 1+s]")
    grayscale_p: float = Field(0.05, ge=0.0, le=1.0)
    blur_p: float = Field(0.1, ge=0.0, le=1.0, description="probability of a Gaussian blur")
    blur_sigma: tuple[float, float] = Field((0.3, 1.2), description="sigma range in pixels")
    erase_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of random erasing")
    erase_area: tuple[float, float] = Field((0.02, 0.15))

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for name in ("scale", "blur_sigma", "erase_area"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name} must be an increasing pair of positive numbers")
        if self.scale[1] > 1.0 or self.erase_area[1] > 1.0:
            raise ValueError("scale and erase_area must not exceed 1")
        return self


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def geometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None) -> torch.Tensor:
    """Random flip, crop (zoom in), shift and small rotation in one resampling pass.

    Each output pixel reads from ``theta @ (u, v, 1)`` in normalised coordinates, so a crop of
    side fraction ``s`` is ``theta = s * R``; the crop may move by ``(1 - s)`` (staying inside)
    plus ``translate`` (then the border pixels are repeated).
    """
    n = x.shape[0]
    s = _uniform(n, *cfg.scale, g)
    angle = _uniform(n, -cfg.rotate_degrees, cfg.rotate_degrees, g) * (math.pi / 180.0)
    room = (1.0 - s) + 2.0 * cfg.translate  # normalised coordinates span 2 per side
    tx = (torch.rand(n, generator=g) * 2.0 - 1.0) * room
    ty = (torch.rand(n, generator=g) * 2.0 - 1.0) * room
    flip = torch.ones(n)
    if cfg.flip:
        flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def photometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast and saturation jitter, and occasional grayscale; clamped to [0, 1]."""
    n = x.shape[0]
    shape = (n, 1, 1, 1)
    b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, g).view(shape)
    c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g).view(shape)
    sat = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, g).view(shape)
    gray_mask = (torch.rand(n, generator=g) < cfg.grayscale_p).view(shape)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    x = x * b
    mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - mean) * c + mean
    gray = (x * weights).sum(1, keepdim=True)
    x = gray + (x - gray) * sat
    x = torch.where(gray_mask, gray.expand_as(x), x)
    return x.clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one ``sigma`` (pixels) per image; reflect padding."""
    n, ch, h, w = x.shape
    radius = max(1, math.ceil(3.0 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (n*ch, 2r+1)
    y = x.reshape(1, n * ch, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :],
                 groups=n * ch)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None],
                 groups=n * ch)
    return y.reshape(n, ch, h, w)


def random_erase(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None) -> torch.Tensor:
    """Replace a random rectangle (area fraction in ``erase_area``) with uniform noise."""
    n, _, h, w = x.shape
    apply = torch.rand(n, generator=g) < cfg.erase_p
    area = _uniform(n, *cfg.erase_area, g)
    aspect = torch.exp(_uniform(n, math.log(0.5), math.log(2.0), g))
    eh = (torch.sqrt(area * aspect) * h).clamp(1, h).long()
    ew = (torch.sqrt(area / aspect) * w).clamp(1, w).long()
    top = (torch.rand(n, generator=g) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=g) * (w - ew + 1)).long()
    noise = torch.rand(x.shape, generator=g, dtype=x.dtype)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    mask = ((rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1))
            & apply.view(n, 1, 1))
    return torch.where(mask[:, None], noise, x)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Augment a float batch ``(N, 3, H, W)`` in [0, 1]; returns a new tensor, same shape."""
    if not cfg.enabled:
        return x
    x = geometric(x, cfg, generator)
    x = photometric(x, cfg, generator)
    n = x.shape[0]
    blur = torch.rand(n, generator=generator) < cfg.blur_p
    sigma = _uniform(n, *cfg.blur_sigma, generator)
    if bool(blur.any()):
        x = x.clone()
        x[blur] = gaussian_blur(x[blur], sigma[blur])
    if cfg.erase_p > 0:
        x = random_erase(x, cfg, generator)
    return x
