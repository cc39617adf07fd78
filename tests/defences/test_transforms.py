"""Input transforms: what they compute, and that BPDA/EOT give usable gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from advface.defences.transforms import (
    EOT,
    JPEG,
    BitDepth,
    Defended,
    MedianFilter,
    RandomResizePad,
    build_transform,
)
from advface.errors import AdvfaceError


def _grad(model: torch.nn.Module, x: Tensor, label: int = 0) -> Tensor:
    x = x.clone().requires_grad_(True)
    scores = model(x)
    (g,) = torch.autograd.grad(scores[:, label].sum(), x)
    return g


def test_bit_depth_values_and_exact_gradient_is_zero(problem, small_model) -> None:
    x = problem[0][:4]
    y = BitDepth(2)(x)
    assert set(torch.unique(y * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert (y - x).abs().max() <= 1 / 6 + 1e-6
    g = _grad(Defended(small_model, BitDepth(4), gradient="exact"), x)
    assert torch.count_nonzero(g) == 0  # gradient masking: the naive attacker sees nothing


@pytest.mark.parametrize("transform", [BitDepth(4), JPEG(75)])
def test_bpda_gradient_is_finite_nonzero_and_the_model_gradient_at_t_of_x(
        problem, small_model, transform) -> None:
    x = problem[0][:4]
    defended = Defended(small_model, transform, gradient="bpda")
    g = _grad(defended, x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # Straight-through: d f(T(x)) / dx is taken as f'(T(x)).
    expected = _grad(small_model, transform(x))
    torch.testing.assert_close(g, expected)
    # The forward pass is the real defence.
    torch.testing.assert_close(defended(x), small_model(transform(x)))


def test_jpeg_exact_gradient_is_zero_not_an_error(problem, small_model) -> None:
    x = problem[0][:2]
    g = _grad(Defended(small_model, JPEG(50)), x)
    assert torch.count_nonzero(g) == 0


def test_jpeg_changes_noise_but_keeps_the_image() -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    noisy = ((x + 0.06 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
             .clamp(0, 1) * 255).round() / 255
    y = JPEG(30)(noisy)
    assert y.shape == noisy.shape
    assert (y - x).abs().mean() < (noisy - x).abs().mean()
    assert torch.allclose(y * 255, (y * 255).round(), atol=1e-4)


def test_median_filter_removes_isolated_pixels_and_keeps_constants() -> None:
    x = torch.full((1, 3, 9, 9), 0.25)
    x[0, :, 4, 4] = 1.0
    torch.testing.assert_close(MedianFilter(3)(x), torch.full_like(x, 0.25))
    assert MedianFilter(2)(x).shape == x.shape


def test_random_resize_pad_is_seeded_and_its_eot_gradient_is_finite(problem, small_model
                                                                    ) -> None:
    x = problem[0][:6]
    a, b = RandomResizePad(0.7, seed=3), RandomResizePad(0.7, seed=3)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    assert ya.shape == x.shape and not torch.equal(ya, x)
    assert not torch.equal(a(x), ya)  # the stream moves on
    a.reseed(3)
    torch.testing.assert_close(a(x), ya)
    # Zero padding appears where the shrunk image does not reach.
    assert (ya == 0).any()
    eot = EOT(Defended(small_model, RandomResizePad(0.7, seed=1)), samples=8)
    g = _grad(eot, x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_resize_pad_at_full_scale_is_the_identity(problem) -> None:
    x = problem[0][:2]
    torch.testing.assert_close(RandomResizePad(1.0)(x), x, atol=1e-5, rtol=0)


def test_eot_of_a_deterministic_module_is_the_module(problem, small_model) -> None:
    x = problem[0][:3]
    torch.testing.assert_close(EOT(small_model, 4)(x), small_model(x), atol=1e-5, rtol=1e-5)


def test_build_transform_and_errors() -> None:
    assert isinstance(build_transform("bit_depth", bits=3), BitDepth)
    assert build_transform("jpeg", quality=40).quality == 40
    with pytest.raises(AdvfaceError, match="unknown input transform"):
        build_transform("blur")
    with pytest.raises(AdvfaceError, match="bad parameters"):
        build_transform("jpeg", bits=3)
    with pytest.raises(AdvfaceError):
        BitDepth(0)
