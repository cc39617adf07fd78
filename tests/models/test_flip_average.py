"""FlipAverage: the mean of both views, differentiable, cached apart from the wrapped model."""

from __future__ import annotations

import torch
from embed_models import LinearEmbed

from advface.identify.embeddings import model_fingerprint
from advface.models.flip_average import FlipAverage
from advface.models.registry import available_models


def test_flip_average_is_the_mean_of_both_views() -> None:
    base = LinearEmbed(8)
    model = FlipAverage(base)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = 0.5 * (base(x) + base(x.flip(-1)))
    assert torch.allclose(model(x), expected, atol=1e-6)
    # mirror-invariant by construction, while the wrapped model is not
    assert torch.allclose(model(x.flip(-1)), model(x), atol=1e-6)
    assert not torch.allclose(base(x.flip(-1)), base(x), atol=1e-3)
    assert (model.input_size, model.embedding_dim, model.metric, model.threshold) == (
        8, 4, "euclidean", 0.6)


def test_flip_average_gradient_and_fingerprint() -> None:
    base = LinearEmbed(8)
    model = FlipAverage(base)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # same weights, different function: the embedding cache must not mix them up
    assert model_fingerprint(model) != model_fingerprint(base)
    assert "dlib-flip" in available_models()
