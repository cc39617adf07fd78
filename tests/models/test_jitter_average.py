"""JitterAverage: the mean over fixed views, exact for pixel shifts, differentiable, cache-keyed."""

from __future__ import annotations

import pytest
import torch
from embed_models import LinearEmbed

from advface.identify.embeddings import model_fingerprint
from advface.models.flip_average import FlipAverage
from advface.models.jitter_average import DEFAULT_VIEWS, JitterAverage
from advface.models.registry import available_models


def test_identity_and_mirror_views_equal_flip_average() -> None:
    base = LinearEmbed(10)
    x = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    jitter = JitterAverage(base, views=[(False, 0.0, 0.0, 1.0), (True, 0.0, 0.0, 1.0)])
    assert torch.allclose(jitter(x), FlipAverage(base)(x), atol=1e-6)
    assert (jitter.input_size, jitter.embedding_dim, jitter.metric, jitter.threshold) == (
        10, 4, "euclidean", 0.6)


def test_a_whole_pixel_shift_moves_the_image_by_one_pixel() -> None:
    # 0.1 of a 10 px side is one pixel: the view must be the image shifted by exactly one
    # column (border replicated), so the sampling convention is pinned down.
    base = LinearEmbed(10)
    x = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    jitter = JitterAverage(base, views=[(False, 0.1, 0.0, 1.0)])
    shifted = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
    assert torch.allclose(jitter._view(x, 0), shifted, atol=1e-5)
    assert torch.allclose(jitter(x), base(shifted), atol=1e-5)


def test_mean_over_views_gradient_and_fingerprint() -> None:
    base = LinearEmbed(10)
    model = JitterAverage(base)
    assert len(model.views) == len(DEFAULT_VIEWS) == 10
    x = torch.rand(2, 3, 10, 10, requires_grad=True)
    expected = torch.stack([base(model._view(x, k)) for k in range(10)]).mean(0)
    assert torch.allclose(model(x), expected, atol=1e-6)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    other = JitterAverage(base, views=DEFAULT_VIEWS[:4])
    fingerprints = {model_fingerprint(base), model_fingerprint(model), model_fingerprint(other)}
    assert len(fingerprints) == 3
    assert "dlib-jitter" in available_models()


def test_bad_views_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one view"):
        JitterAverage(LinearEmbed(10), views=[])
    with pytest.raises(ValueError, match="zoom"):
        JitterAverage(LinearEmbed(10), views=[(False, 0.0, 0.0, 0.0)])
