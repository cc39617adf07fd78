"""Fixtures for the defence tests: one thread, a tiny trained classifier, a tiny LFW."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from defence_models import SmallNet, make_problem, train_dict, train_small
from torch import Tensor

from advface.config import parse_config
from advface.data.synthetic import make_tiny_lfw
from advface.training.train import TrainConfig, train


@pytest.fixture(autouse=True)
def _one_thread():
    """Many tiny ops: one thread avoids contention on shared CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def problem() -> tuple[Tensor, Tensor]:
    """Three close classes of 16x16 images: a standard model is fooled at eps 8/255."""
    return make_problem(n_per_class=30, spread=0.12, noise=0.05)


@pytest.fixture(scope="session")
def small_model(problem) -> SmallNet:
    torch.set_num_threads(1)
    x, y = problem
    return train_small(x, y, steps=100)


@pytest.fixture(scope="session")
def tiny_lfw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lfw")
    return make_tiny_lfw(root, n_people=3, images_per_person=(10, 12), size=160, seed=0)


@pytest.fixture(scope="session")
def standard_run(tiny_lfw: Path, tmp_path_factory) -> Path:
    """A standard (non-robust) ad-hoc model trained on the tiny LFW: a run folder."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("std") / "run"
    train(parse_config(train_dict(tiny_lfw, out), TrainConfig), progress=False, evaluate=False)
    return out
