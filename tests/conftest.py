"""Shared test fixtures."""

from __future__ import annotations

import torch


def pytest_configure(config) -> None:
    # Two cores on CI: keep torch from oversubscribing when pytest runs.
    torch.set_num_threads(2)
