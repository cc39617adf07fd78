"""Fixtures for identification tests: a tiny deterministic face model and tiny chip sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from advface.align.chips import ChipIndex, build_chips
from advface.data.lfw import LFW, open_lfw
from advface.data.synthetic import make_tiny_lfw


class TinyFace(nn.Module):
    """Follows the face-model convention (input_size/embedding_dim/metric) at toy scale."""

    def __init__(self, seed: int = 0, input_size: int = 32, metric: str = "euclidean"):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.input_size = input_size
        self.embedding_dim = 8
        self.metric = metric
        self.conv = nn.Conv2d(3, 6, 5, stride=2)
        self.bn = nn.BatchNorm2d(6)  # behaves differently in train mode: eval() matters
        self.fc = nn.Linear(6 * 4, 8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.input_size, "images must be resized before the model"
        self.calls += x.shape[0]
        h = torch.relu(self.bn(self.conv(x)))
        h = nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.fc(h)


@pytest.fixture
def tiny_face() -> type[TinyFace]:
    """The class, for tests that need several models (e.g. other seeds)."""
    return TinyFace


@pytest.fixture
def tiny_model() -> TinyFace:
    return TinyFace().eval()


@pytest.fixture(scope="session")
def tiny_lfw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lfw(tmp_path_factory.mktemp("tiny-lfw"), n_people=6,
                         images_per_person=(1, 4), size=96)


@pytest.fixture(scope="session")
def tiny_lfw(tiny_lfw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LFW:
    return open_lfw(tiny_lfw_dir, tmp_path_factory.mktemp("lfw-cache"))


@pytest.fixture(scope="session")
def tiny_chips(tiny_lfw: LFW, tmp_path_factory: pytest.TempPathFactory) -> ChipIndex:
    """Chips of the tiny data set (fallback crops: the drawn faces are not HOG faces)."""
    return build_chips(tiny_lfw.records, tmp_path_factory.mktemp("chips"), upsample=0,
                       workers=1, progress=False)
