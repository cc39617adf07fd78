"""Flip test-time augmentation: the mean of a face model's embeddings of an image and its mirror.

Why: a face descriptor is not exactly mirror-symmetric, and averaging the two views is the
cheapest of the test-time tricks (dlib's own `num_jitters` averages random crops and flips) that
makes verification and identification more accurate. It is a plain differentiable module, so
every attack runs through both views at once (the adversary must fool the average, not one
view), at twice the cost of the wrapped model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def adopt_interface(wrapper: nn.Module, model: nn.Module) -> None:
    """Give a test-time-averaging wrapper the face-model interface of the model it wraps
    (``input_size``, ``embedding_dim``, ``metric``, ``threshold`` when present)."""
    wrapper.input_size = getattr(model, "input_size", None)
    wrapper.embedding_dim = getattr(model, "embedding_dim", None)
    wrapper.metric = getattr(model, "metric", "cosine")
    if hasattr(model, "threshold"):
        wrapper.threshold = model.threshold


class FlipAverage(nn.Module):
    """``(f(x) + f(flip_horizontal(x))) / 2`` for any embedding model ``f``.

    Keeps ``f``'s interface (``input_size``, ``embedding_dim``, ``metric``, ``threshold`` when
    present) so it goes wherever ``f`` goes; the embedding cache keys it apart from ``f``
    because its class name is part of the model fingerprint.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        adopt_interface(self, model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = self.model(torch.cat([x, x.flip(-1)]))
        return 0.5 * (both[: x.shape[0]] + both[x.shape[0]:])


def load_dlib_flip(**kwargs: Any) -> FlipAverage:
    """dlib's ResNet descriptor averaged over the chip and its mirror image."""
    from advface.models.dlib_resnet import load_dlib_resnet

    return FlipAverage(load_dlib_resnet(**kwargs))
