"""A tiny embedding model for the test-time-averaging wrappers (FlipAverage, JitterAverage)."""

from __future__ import annotations

import torch
from torch import nn


class LinearEmbed(nn.Module):
    """Linear map of the flattened image: not mirror- or shift-invariant, with dlib's interface."""

    embedding_dim = 4
    metric = "euclidean"
    threshold = 0.6

    def __init__(self, size: int) -> None:
        super().__init__()
        self.input_size = size
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * size * size, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))
