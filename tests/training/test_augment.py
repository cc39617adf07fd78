"""Augmentation keeps shape and range, is seeded, and each transform does what it says."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from advface.training.augment import AugmentConfig, augment, gaussian_blur

OFF = dict(flip=False, scale=(1.0, 1.0), translate=0.0, rotate_degrees=0.0, brightness=0.0,
           contrast=0.0, saturation=0.0, grayscale_p=0.0, blur_p=0.0, erase_p=0.0)


def batch(n: int = 6, size: int = 24) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_shape_range_and_seeding() -> None:
    x = batch()
    cfg = AugmentConfig(erase_p=0.5, blur_p=0.5)
    y1 = augment(x, cfg, torch.Generator().manual_seed(3))
    y2 = augment(x, cfg, torch.Generator().manual_seed(3))
    y3 = augment(x, cfg, torch.Generator().manual_seed(4))
    assert y1.shape == x.shape and y1.min() >= 0 and y1.max() <= 1
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    assert not torch.equal(y1, x)


def test_all_transforms_off_is_identity_and_disabled_returns_input() -> None:
    x = batch()
    assert torch.allclose(augment(x, AugmentConfig(**OFF), torch.Generator()), x, atol=1e-5)
    assert augment(x, AugmentConfig(enabled=False), None) is x


def test_flip_only_mirrors_some_images() -> None:
    x = batch(16)
    y = augment(x, AugmentConfig(**{**OFF, "flip": True}), torch.Generator().manual_seed(0))
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(16)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(16)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert any(flipped) and any(same)


def test_blur_smooths_and_preserves_constant_images() -> None:
    const = torch.full((2, 3, 16, 16), 0.4)
    assert torch.allclose(gaussian_blur(const, torch.tensor([0.5, 1.0])), const, atol=1e-6)
    noise = batch(2, 16)
    blurred = gaussian_blur(noise, torch.tensor([1.0, 1.0]))
    assert blurred.std() < noise.std() * 0.7


def test_invalid_ranges_are_rejected() -> None:
    with pytest.raises(ValidationError):
        AugmentConfig(scale=(0.9, 0.8))
    with pytest.raises(ValidationError):
        AugmentConfig(unknown_key=1)
