"""Fixtures for the data layer: tiny generated LFW look-alikes (fast, deterministic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from advface.data.synthetic import make_tiny_lfw


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean tiny LFW data dir shared by tests that only read it."""
    return make_tiny_lfw(tmp_path_factory.mktemp("tiny-lfw"))


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A fresh tiny LFW data dir a test may modify."""
    return make_tiny_lfw(tmp_path / "data")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"
