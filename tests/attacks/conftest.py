"""Fixtures shared by the attack tests."""

from __future__ import annotations

import pytest
import torch
from attack_models import TinyNet, grid_images
from torch import Tensor


@pytest.fixture(autouse=True)
def _one_thread():
    """Attack tests run many tiny ops: one thread avoids contention on shared CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_net() -> TinyNet:
    return TinyNet().eval()


@pytest.fixture(scope="session")
def images() -> Tensor:
    return grid_images(16)


@pytest.fixture(scope="session")
def labels(tiny_net: TinyNet, images: Tensor) -> Tensor:
    """Use the model's own clean decisions as true labels so every image starts correct."""
    with torch.no_grad():
        return tiny_net(images).argmax(1)
